/**
 * Shared pieces of the CLI's unit tests: the program run in-process with its output captured,
 * and a stand-in API that records each request and answers what the test says.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { vi } from 'vitest';
import { buildProgram } from '../program';

export interface Recorded {
  method: string;
  path: string;
  query: URLSearchParams;
  body: unknown;
}

export interface Answer {
  status?: number;
  body?: unknown;
  /** A text/plain body instead of JSON. */
  text?: string;
}

export interface FakeApi {
  url: string;
  requests: Recorded[];
  close(): Promise<void>;
}

/** Answers every request with `answer(request)` (404 when it returns undefined). */
export async function startFakeApi(answer: (r: Recorded) => Answer | undefined): Promise<FakeApi> {
  const requests: Recorded[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const url = new URL(req.url ?? '/', 'http://x');
      const text = Buffer.concat(chunks).toString('utf8');
      const r: Recorded = {
        method: req.method ?? 'GET',
        path: url.pathname,
        query: url.searchParams,
        body: text ? JSON.parse(text) : undefined,
      };
      requests.push(r);
      const a = answer(r) ?? { status: 404, body: { error: { code: 'NOT_FOUND', message: 'no route' } } };
      if (a.text !== undefined) {
        res.writeHead(a.status ?? 200, { 'content-type': 'text/plain' });
        res.end(a.text);
        return;
      }
      res.writeHead(a.status ?? 200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(a.body ?? null));
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise((r) => server.close(() => r())),
  };
}

/** Runs one CLI command against `url` in-process; answers its exit code, stdout and stderr. */
export async function runCli(url: string, args: string[]) {
  let out = '';
  let err = '';
  const o = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
    out += String(s);
    return true;
  });
  const e = vi.spyOn(process.stderr, 'write').mockImplementation((s) => {
    err += String(s);
    return true;
  });
  process.exitCode = 0;
  try {
    await buildProgram()
      .exitOverride()
      .parseAsync(['--server', url, '--token', 'test-token', ...args], { from: 'user' });
  } finally {
    o.mockRestore();
    e.mockRestore();
  }
  const code = Number(process.exitCode ?? 0);
  process.exitCode = 0;
  return { code, out, err };
}
