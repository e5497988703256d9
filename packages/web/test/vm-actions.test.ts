import { describe, expect, test } from 'vitest';
import { vmActionAllowed } from '../src/vm-actions';

describe('VM actions offered by state', () => {
  test('force stop is offered while a graceful shutdown runs, and in every live state', () => {
    for (const s of [
      'creating',
      'starting',
      'running',
      'pausing',
      'paused',
      'stopping',
      'unknown',
      'failed',
    ] as const)
      expect(vmActionAllowed('force-stop', s), s).toBe(true);
    expect(vmActionAllowed('force-stop', 'stopped')).toBe(false);
    expect(vmActionAllowed('force-stop', 'deleting')).toBe(false);
  });

  test('a graceful shutdown is not asked twice', () => {
    expect(vmActionAllowed('stop', 'stopping')).toBe(false);
    expect(vmActionAllowed('stop', 'running')).toBe(true);
  });
});
