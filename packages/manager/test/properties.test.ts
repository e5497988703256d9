/**
 * Property tests over every registered route, as an admin, on both datastores: arbitrary
 * malformed bodies, queries and ids never cause a 5xx, every 4xx carries the uniform error
 * body, and the stored state (everything but the append-only audit and event logs) never
 * changes. Generators are derived from the router's own OpenAPI description of each route.
 */
import http from 'node:http';
import fc from 'fast-check';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { client, DATASTORES, startManager, type TestManager } from './harness';
import { registerHost, snapshot, uniformErrorProblem } from './helpers';

const NUM_RUNS = Number(process.env.NQVM_PROPERTY_RUNS ?? 30);
const MUTATING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

interface JsonSchema {
  type?: string | string[];
  properties?: Record<string, JsonSchema>;
  maxLength?: number;
  pattern?: string;
}
interface RouteInfo {
  method: string;
  url: string;
  queryKeys: string[];
  body: JsonSchema | null;
  bodyRequired: boolean;
}

// ---- generators ----------------------------------------------------------------------------

const nasty = fc.constantFrom(
  '../',
  '../../../../etc/passwd',
  '..\\..\\windows',
  "' OR '1'='1",
  '1; DROP TABLE vms; --',
  "'; select pg_sleep(10); --",
  '" OR ""="',
  '\u0000',
  'a\u0000b',
  '<script>alert(1)</script>',
  ['$', '{jndi:ldap://x/a}'].join(''),
  '%s%n%x',
  '\\',
  '/',
  '%',
  '?&=#',
  ' ',
  '\u202e\ufeff',
  '😀🏳️‍🌈',
  'NaN',
  '-1',
  '1e309',
  '0x10',
  'null',
  'true',
  '{}',
  '[]',
  '9'.repeat(400),
  'ä'.repeat(70),
);
const wellFormed = (s: string) => (s as string & { toWellFormed(): string }).toWellFormed();
const anyString = fc
  .oneof(
    { weight: 3, arbitrary: fc.string({ unit: 'binary', maxLength: 40 }) },
    { weight: 2, arbitrary: fc.string({ unit: 'grapheme', maxLength: 40 }) },
    { weight: 2, arbitrary: fc.string({ maxLength: 40 }) },
    { weight: 3, arbitrary: nasty },
    { weight: 1, arbitrary: fc.string({ unit: 'binary', minLength: 200, maxLength: 1500 }) },
  )
  .map(wellFormed);
const anyJson = fc.jsonValue({ maxDepth: 3 });
const jsonType = (v: unknown) =>
  v === null ? 'null' : Array.isArray(v) ? 'array' : Number.isInteger(v) ? 'integer' : typeof v;
const isWrongFor = (type: string, v: unknown) => {
  const t = jsonType(v);
  if (type === 'number') return t !== 'integer' && t !== 'number';
  return t !== type;
};
const HUGE = 'x'.repeat(70_000);
const TOO_LARGE = JSON.stringify({ pad: 'x'.repeat(1024 * 1024 + 10) });

/** Bodies that no route schema accepts: non-objects, unknown fields, wrong types, huge or broken text. */
function bodyArb(schema: JsonSchema | null): fc.Arbitrary<string> {
  const props = Object.entries(schema?.properties ?? {});
  const names = props.map(([k]) => k);
  const unknownKey = fc.string({ minLength: 1, maxLength: 20 }).map((k) => `zz_${wellFormed(k)}`);
  const typed = props.filter(([, s]) => typeof s.type === 'string') as Array<
    [string, JsonSchema & { type: string }]
  >;
  const bounded = props
    .filter(([, s]) => s.type === 'string' && (s.maxLength !== undefined || s.pattern !== undefined))
    .map(([k]) => k);
  const variants: Array<fc.WeightedArbitrary<string>> = [
    // not an object at all
    { weight: 4, arbitrary: anyJson.filter((v) => jsonType(v) !== 'object').map((v) => JSON.stringify(v)) },
    // unknown fields next to known ones with arbitrary values
    {
      weight: 4,
      arbitrary: fc
        .tuple(
          fc.dictionary(
            names.length ? fc.oneof(fc.constantFrom(...names), unknownKey) : unknownKey,
            anyJson,
            { maxKeys: 4 },
          ),
          unknownKey,
          anyJson,
        )
        .map(([d, k, v]) => JSON.stringify({ ...d, [k]: v })),
    },
    { weight: 1, arbitrary: unknownKey.map((k) => JSON.stringify({ [k]: HUGE })) },
    // broken JSON text
    {
      weight: 2,
      arbitrary: fc.constantFrom(
        '{',
        '{"a":',
        "{'a':1}",
        '[1,,2]',
        '{"a":1}}',
        'nul',
        '\u0000',
        '{"__proto__":{"x":1}}',
        '{"constructor":{"prototype":{"x":1}}}',
      ),
    },
    // expensive ones, rarely: over the body limit, and deeply nested
    { weight: 1, arbitrary: fc.constantFrom(TOO_LARGE, `${'['.repeat(50_000)}${']'.repeat(50_000)}`) },
  ];
  if (typed.length) {
    // at least one known field with a value of the wrong type
    variants.push({
      weight: 4,
      arbitrary: fc
        .subarray(typed, { minLength: 1 })
        .chain((chosen) =>
          fc.tuple(
            ...chosen.map(([k, sc]) =>
              anyJson.filter((v) => isWrongFor(sc.type, v)).map((v) => [k, v] as const),
            ),
          ),
        )
        .map((pairs) => JSON.stringify(Object.fromEntries(pairs))),
    });
  }
  if (bounded.length)
    variants.push({
      weight: 1,
      arbitrary: fc.constantFrom(...bounded).map((k) => JSON.stringify({ [k]: HUGE })),
    });
  return fc.oneof(...variants);
}

function queryArb(keys: string[]): fc.Arbitrary<string> {
  const key = keys.length ? fc.oneof(fc.constantFrom(...keys), anyString) : anyString;
  const pairs = fc.array(fc.tuple(key, anyString), { maxLength: 4 });
  const broken = fc.constantFrom('', '', '', '&&', '%', '%E0%A4%A', '=x', 'a=%ZZ', 'limit=1&limit=2');
  return fc.tuple(pairs, broken).map(([ps, extra]) => {
    const q = ps.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
    if (extra) q.push(extra);
    return q.length ? `?${q.join('&')}` : '';
  });
}

function idArb(existing: string[]): fc.Arbitrary<string> {
  const variants: fc.Arbitrary<string>[] = [
    anyString.filter((s) => s.length > 0).map(encodeURIComponent),
    fc.uuid().map((u) => u.toUpperCase()),
    fc.uuid({ version: [1, 2, 3, 4, 5, 6, 7, 8] }),
    fc.constantFrom(
      '..',
      '.',
      '..%2f..%2fetc%2fpasswd',
      '%2e%2e',
      '%ZZ',
      '%E0%A4%A',
      '%00',
      '00000000-0000-0000-0000-000000000000x',
      'a'.repeat(150),
    ),
  ];
  if (existing.length) variants.push(fc.constantFrom(...existing));
  return fc.oneof(...variants);
}

// ---- requests --------------------------------------------------------------------------------

interface Answer {
  status: number;
  text: string;
  headers: Headers;
}

/**
 * A raw HTTP request on a fresh connection: paths go out exactly as given (no URL
 * normalisation), and the body always with its Content-Length (Node sends DELETE bodies
 * without one otherwise).
 */
function send(
  base: URL,
  method: string,
  path: string,
  headers: Record<string, string>,
  body?: string,
): Promise<Answer> {
  const h = {
    ...headers,
    ...(body !== undefined ? { 'content-length': String(Buffer.byteLength(body)) } : {}),
  };
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: base.hostname, port: base.port, method, path, headers: h, agent: false, timeout: 15_000 },
      (res) => {
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') h.set(k, v);
        if ((res.headers['content-type'] ?? '').startsWith('text/event-stream')) {
          res.destroy();
          resolve({ status: res.statusCode ?? 0, text: '', headers: h });
          return;
        }
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8'), headers: h }),
        );
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer within 15 s: ${method} ${path}`)));
    req.on('error', reject);
    req.end(body);
  });
}

function problemOf(a: Answer): string | null {
  // A relay to a host whose agent does not answer (the test's hosts have none) is the agent's
  // absence, told in the uniform body, not a fault of the manager.
  if (a.status === 503 && a.text.includes('"HOST_UNAVAILABLE"')) return uniformErrorProblem(a);
  if (a.status >= 500) return `server error ${a.status}: ${a.text.slice(0, 300)}`;
  if (a.status >= 400) return uniformErrorProblem(a);
  return null;
}

// ---- the suite -------------------------------------------------------------------------------

// The datastores run side by side (a 2-core machine runs test files one at a time); every test
// within one datastore runs in order.
describe.concurrent.each(DATASTORES)('malformed input on every route (%s)', (kind) => {
  let t: TestManager;
  let routes: RouteInfo[];
  const existing: Record<string, string[]> = {};

  beforeAll(async () => {
    // A long heartbeat interval: the health sweep must not change the stored state meanwhile.
    t = await startManager(kind, { NQVM_HEARTBEAT_INTERVAL_S: '3600' });
    const api = client(t.url, t.adminToken);
    const vms: string[] = [];
    const ops: string[] = [];
    for (const [i, labels] of [{ env: 'prod' }, { env: 'dev' }, {}].entries()) {
      const r = await api.post('/api/v1/vms', {
        name: `prop-${i}`,
        labels,
        start: false,
        guest_config: { password: 'guest-pw' },
      });
      vms.push(r.body.vm.id);
      ops.push(r.body.operation.id);
    }
    const user = await api.post('/api/v1/users', {
      username: 'prop-user',
      password: 'prop-user-pw',
      role: 'operator',
    });
    const { hostId, joinTokenId } = await registerHost(t.url, t.adminToken, 'prop-host');
    const tokens = await t.manager.services.store.db.selectFrom('api_tokens').select('id').execute();
    existing.vms = vms;
    existing.operations = ops;
    existing.users = [user.body.id];
    existing.hosts = [hostId];
    existing['join-tokens'] = [joinTokenId];
    existing.tokens = tokens.map((x) => x.id);

    const doc = t.manager.app.swagger() as unknown as {
      paths: Record<
        string,
        Record<
          string,
          {
            parameters?: Array<{ in: string; name: string }>;
            requestBody?: { required?: boolean; content?: Record<string, { schema: JsonSchema }> };
          }
        >
      >;
    };
    routes = t.manager.routes.map((r) => {
      const op = doc.paths[r.url.replace(/:(\w+)/g, '{$1}')]?.[r.method.toLowerCase()];
      return {
        method: r.method,
        url: r.url,
        queryKeys: (op?.parameters ?? []).filter((p) => p.in === 'query').map((p) => p.name),
        body: op?.requestBody?.content?.['application/json']?.schema ?? null,
        bodyRequired: op?.requestBody?.required === true,
      };
    });
  });
  afterAll(async () => {
    await t?.close();
  });

  it('never a 5xx, always the uniform error body, never a change to the stored state', {
    timeout: 240_000,
  }, async () => {
    const base = new URL(t.url);
    const auth = { authorization: `Bearer ${t.adminToken}` };
    const failures: string[] = [];
    expect(routes.length).toBe(t.manager.routes.length);
    for (const r of routes) {
      const collection = /^\/api\/v1\/([a-z-]+)\/:id/.exec(r.url)?.[1];
      // Real ids only where the request can never be valid (an invalid body is required) or cannot change anything (GET).
      const safeReal =
        r.method === 'GET' || (r.bodyRequired && Object.keys(r.body?.properties ?? {}).length > 0);
      const ids = idArb(safeReal && collection ? (existing[collection] ?? []) : []);
      const path = fc
        .tuple(ids, fc.string({ unit: 'grapheme', maxLength: 30 }).map(wellFormed))
        .map(([id, wild]) => r.url.replace(/:\w+/g, id).replace('*', encodeURIComponent(wild)));
      const body = MUTATING.has(r.method)
        ? fc.option(bodyArb(r.body), { nil: undefined, freq: 8 })
        : fc.constant(undefined);
      const arb = fc.record({ path, query: queryArb(r.queryKeys), body });

      const before = await snapshot(t.manager.services.store);
      const result = await fc.check(
        fc.asyncProperty(arb, async ({ path: p, query, body: b }) => {
          const headers: Record<string, string> = {
            ...auth,
            ...(b !== undefined ? { 'content-type': 'application/json' } : {}),
          };
          const a = await send(base, r.method, `${p}${query}`, headers, b);
          const problem = problemOf(a);
          if (problem) throw new Error(problem);
          if (
            MUTATING.has(r.method) &&
            b !== undefined &&
            a.status < 400 &&
            r.url !== '/api/v1/auth/logout'
          ) {
            throw new Error(`a malformed body was accepted: ${a.status} ${a.text.slice(0, 200)}`);
          }
        }),
        { numRuns: NUM_RUNS, endOnFailure: true },
      );
      if (result.failed) {
        const ex = result.counterexample?.[0] as { path: string; query: string; body?: string } | undefined;
        failures.push(
          `${r.method} ${r.url}: ${String((result as { errorInstance?: Error }).errorInstance?.message ?? 'failed').slice(0, 400)}\n    request: ${r.method} ${ex?.path}${ex?.query} body=${ex?.body?.slice(0, 200)}`,
        );
      }
      const after = await snapshot(t.manager.services.store);
      for (const table of Object.keys(before)) {
        if (JSON.stringify(before[table]) !== JSON.stringify(after[table]))
          failures.push(`${r.method} ${r.url} changed the ${table} table`);
      }
    }
    expect(failures).toEqual([]);
  });
});
