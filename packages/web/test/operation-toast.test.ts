import { describe, expect, test } from 'vitest';
import { operationOutcome } from '../src/operation-toast';
import type { Operation } from '../src/types';

const op = (status: Operation['status'], error: Operation['error'] = null): Operation => ({
  id: '00000000-0000-4000-8000-000000000001',
  kind: 'vm.create',
  target: { type: 'vm', id: '00000000-0000-4000-8000-000000000002' },
  status,
  progress: { percent: 100, message: '' },
  error,
  created_by: null,
  created_at: '2026-12-07T06:00:00Z',
  updated_at: '2026-12-07T06:00:01Z',
  steps: [],
});
const texts = {
  running: 'Creating VM web-1',
  succeeded: 'VM web-1 is running',
  failed: 'Create VM web-1 failed',
};

describe('operationOutcome (what the toast of an action ends with)', () => {
  test("success, the operation's own error message, cancellation", () => {
    expect(operationOutcome(op('succeeded'), texts)).toEqual({ tone: 'ok', text: 'VM web-1 is running' });
    expect(
      operationOutcome(op('failed', { code: 'NO_CAPACITY', message: 'no host has room for 1 vCPU' }), texts),
    ).toEqual({ tone: 'err', text: 'Create VM web-1 failed: no host has room for 1 vCPU' });
    const superseded = { ...op('cancelled'), progress: { percent: 0, message: 'superseded by stop' } };
    expect(operationOutcome(superseded, texts)).toEqual({
      tone: 'info',
      text: 'Creating VM web-1: cancelled (superseded by stop)',
    });
  });
});
