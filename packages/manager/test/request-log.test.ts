/**
 * What the manager logs of a request: method and path, never its query string (an exec's
 * command travels there for the WebSocket routes) or its credentials.
 */
import { Writable } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, startManager, type TestManager } from './harness';

describe('request logging', () => {
  let t: TestManager;
  const lines: string[] = [];
  beforeAll(async () => {
    const logStream = new Writable({
      write(chunk, _enc, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    t = await startManager('sqlite', { NQVM_LOG_LEVEL: 'info' }, { logStream });
  });
  afterAll(async () => t?.close());

  it('logs the path of a request and leaves its query string and token out', async () => {
    const api = client(t.url, t.adminToken);
    const r = await api.get('/api/v1/vms?name=secret-command-7f2e&limit=5');
    expect(r.status, r.text).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const mine = lines.filter((l) => l.includes('/api/v1/vms?'));
    expect(mine.length, lines.join('\n')).toBeGreaterThan(0);
    expect(JSON.parse(mine[0]!).req).toMatchObject({ method: 'GET', url: '/api/v1/vms?(query not logged)' });
    const all = lines.join('\n');
    expect(all).not.toContain('secret-command-7f2e');
    expect(all).not.toContain(t.adminToken);
  });
});
