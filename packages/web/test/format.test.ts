import { afterEach, describe, expect, test } from 'vitest';
import { formatTime } from '../src/format';
import { joinTokenState } from '../src/join-token-state';

const tz = process.env.TZ;
afterEach(() => {
  process.env.TZ = tz;
});

describe('formatTime (one absolute format, whatever the locale)', () => {
  test('ISO-like local time with its offset from UTC', () => {
    process.env.TZ = 'UTC';
    expect(formatTime('2026-12-07T06:05:09.123Z')).toBe('2026-12-07 06:05:09 UTC');
    process.env.TZ = 'Europe/Paris';
    expect(formatTime('2026-12-07T06:05:09Z')).toBe('2026-12-07 07:05:09 UTC+01:00');
    process.env.TZ = 'America/St_Johns';
    expect(formatTime('2026-12-07T06:05:09Z')).toBe('2026-12-07 02:35:09 UTC-03:30');
  });

  test('missing and malformed times', () => {
    expect(formatTime(null)).toBe('—');
    expect(formatTime('not a time')).toBe('not a time');
  });
});

describe('joinTokenState', () => {
  const now = Date.parse('2026-12-07T06:00:00Z');
  const later = '2026-12-07T07:00:00Z';
  const earlier = '2026-12-07T05:00:00Z';

  test('a token an agent joined with says used, expired or not', () => {
    expect(
      joinTokenState({ revoked_at: null, expires_at: earlier, last_used_at: earlier }, now),
    ).toMatchObject({
      label: 'used',
      usable: false,
    });
    expect(joinTokenState({ revoked_at: null, expires_at: later, last_used_at: earlier }, now)).toMatchObject(
      {
        label: 'used',
        usable: true,
      },
    );
  });

  test('unused tokens: valid, expired; revoked wins', () => {
    expect(joinTokenState({ revoked_at: null, expires_at: later, last_used_at: null }, now).label).toBe(
      'valid',
    );
    expect(joinTokenState({ revoked_at: null, expires_at: earlier, last_used_at: null }, now).label).toBe(
      'expired',
    );
    expect(
      joinTokenState({ revoked_at: earlier, expires_at: later, last_used_at: earlier }, now),
    ).toMatchObject({
      label: 'revoked',
      usable: false,
    });
  });
});
