import { readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ErrorObject, ValidateFunction } from 'ajv-draft-04';
import Ajv from 'ajv-draft-04';

/** The Firecracker versions whose official API specs ship with the simulator. */
export const FIRECRACKER_SIM_VERSIONS = ['1.1.0', '1.13.1', '1.16.1'] as const;
export type FirecrackerSimVersion = (typeof FIRECRACKER_SIM_VERSIONS)[number];

export type HttpMethod = 'GET' | 'PUT' | 'PATCH';

export type JsonSchema = Record<string, unknown>;

/** One operation of the spec: a method on a path template, with its body schema if any. */
export interface SpecOperation {
  method: HttpMethod;
  /** e.g. "/drives/{drive_id}" */
  template: string;
  /** Definition name of the body, e.g. "Drive"; undefined when the operation takes no body. */
  bodyDefinition?: string;
  bodyRequired: boolean;
}

export interface FirecrackerSpec {
  version: FirecrackerSimVersion;
  operations: SpecOperation[];
  definitions: Record<string, JsonSchema>;
}

const specDir = join(dirname(fileURLToPath(import.meta.url)), 'specs');

export function isSimVersion(v: string): v is FirecrackerSimVersion {
  return (FIRECRACKER_SIM_VERSIONS as readonly string[]).includes(v);
}

/** Absolute path of the official Swagger 2.0 spec of a Firecracker version. */
export function firecrackerSpecPath(version: FirecrackerSimVersion): string {
  return join(specDir, `firecracker-v${version}.yaml`);
}

interface RawParameter {
  in?: string;
  required?: boolean;
  schema?: { $ref?: string };
}

interface RawSpec {
  paths: Record<string, Record<string, { parameters?: RawParameter[] }>>;
  definitions: Record<string, JsonSchema>;
}

/**
 * Parsing the YAML costs about 200 ms, most of a simulator's start: the parsed spec is kept as
 * JSON in the temp dir, keyed by the YAML's size and mtime.
 */
function readSpec(version: FirecrackerSimVersion): RawSpec {
  const file = firecrackerSpecPath(version);
  const st = statSync(file);
  const cache = join(tmpdir(), `nqvm-fc-spec-${version}-${st.size}-${Math.floor(st.mtimeMs)}.json`);
  try {
    return JSON.parse(readFileSync(cache, 'utf8')) as RawSpec;
  } catch {
    const { parse } = createRequire(import.meta.url)('yaml') as typeof import('yaml');
    const raw = parse(readFileSync(file, 'utf8')) as RawSpec;
    const tmp = `${cache}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify(raw));
    renameSync(tmp, cache);
    return raw;
  }
}

/** Reads a version's spec into its operations and definitions. */
export function loadFirecrackerSpec(version: FirecrackerSimVersion): FirecrackerSpec {
  const raw = readSpec(version);
  const operations: SpecOperation[] = [];
  for (const [template, methods] of Object.entries(raw.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const body = op.parameters?.find((p) => p.in === 'body');
      const ref = body?.schema?.$ref;
      operations.push({
        method: method.toUpperCase() as HttpMethod,
        template,
        bodyDefinition: ref ? ref.replace('#/definitions/', '') : undefined,
        bodyRequired: body !== undefined && body.required !== false,
      });
    }
  }
  return { version, operations, definitions: raw.definitions };
}

/**
 * Firecracker deserializes bodies with serde's `deny_unknown_fields`: an object schema that
 * lists its properties and says nothing about others rejects unknown fields.
 */
export function strictSchema(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(strictSchema);
  if (schema === null || typeof schema !== 'object') return schema;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(schema)) {
    // `properties` maps names to schemas; its keys are not keywords.
    out[k] =
      k === 'properties' && v && typeof v === 'object'
        ? Object.fromEntries(Object.entries(v).map(([name, s]) => [name, strictSchema(s)]))
        : strictSchema(v);
  }
  if (out.properties !== undefined && out.additionalProperties === undefined)
    out.additionalProperties = false;
  return out;
}

export type BodyValidator = (definition: string, body: unknown) => string | null;

/**
 * A Draft-4 validator over the spec's definitions with serde-like error texts.
 * Returns null when the body is valid, otherwise the message Firecracker would put in
 * `fault_message`.
 *
 * @example
 * const check = createBodyValidator(loadFirecrackerSpec('1.13.1'));
 * check('Drive', { drive_id: 'root' }); // "... missing field `is_root_device` ..."
 */
export function createBodyValidator(
  spec: FirecrackerSpec,
  options: { partial?: string[] } = {},
): BodyValidator {
  const ajv = new Ajv({ strict: false, allErrors: false, validateFormats: true });
  ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) });
  ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
  // MmdsConfig.ipv4_address carries a regex in `format`; Firecracker checks the whole string.
  for (const def of Object.values(spec.definitions)) {
    const props = (def.properties ?? {}) as Record<string, { format?: string }>;
    for (const p of Object.values(props)) {
      if (p.format && !['int32', 'int64'].includes(p.format) && !ajv.formats[p.format]) {
        // The spec's dots are literal separators.
        const re = new RegExp(`^${p.format.replaceAll('.', '\\.')}$`);
        ajv.addFormat(p.format, { type: 'string', validate: (s: string) => re.test(s) });
      }
    }
  }
  const definitions = strictSchema(spec.definitions) as Record<string, JsonSchema>;
  for (const name of options.partial ?? []) {
    const def = definitions[name];
    if (!def) continue;
    const { required: _required, ...partial } = def;
    definitions[`${name}Partial`] = partial;
  }
  ajv.addSchema({ id: 'fc.json', definitions }, 'fc.json');
  const cache = new Map<string, ValidateFunction>();
  return (definition, body) => {
    let validate = cache.get(definition);
    if (!validate) {
      validate = ajv.compile({ $ref: `fc.json#/definitions/${definition}` });
      cache.set(definition, validate);
    }
    if (validate(body)) return null;
    return serdeMessage(validate.errors?.[0], body);
  };
}

function valueAt(body: unknown, pointer: string): unknown {
  let cur = body;
  for (const seg of pointer.split('/').slice(1)) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string, unknown>)[seg.replaceAll('~1', '/').replaceAll('~0', '~')];
  }
  return cur;
}

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return `string ${JSON.stringify(v)}`;
  if (typeof v === 'boolean') return `boolean \`${v}\``;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer \`${v}\`` : `floating point \`${v}\``;
  if (Array.isArray(v)) return 'sequence';
  return 'map';
}

function serdeMessage(err: ErrorObject | undefined, body: unknown): string {
  const prefix = 'An error occurred when deserializing the json body of a request: ';
  if (!err) return `${prefix}invalid body.`;
  const at = err.instancePath ? ` (at ${err.instancePath})` : '';
  const params = err.params as Record<string, unknown>;
  switch (err.keyword) {
    case 'additionalProperties':
      return `${prefix}unknown field \`${String(params.additionalProperty)}\`${at}.`;
    case 'required':
      return `${prefix}missing field \`${String(params.missingProperty)}\`${at}.`;
    case 'type':
      return `${prefix}invalid type: ${describeValue(valueAt(body, err.instancePath))}, expected ${String(params.type)}${at}.`;
    case 'enum':
      return `${prefix}unknown variant ${JSON.stringify(valueAt(body, err.instancePath))}, expected one of ${(
        params.allowedValues as unknown[]
      )
        .map((v) => `\`${String(v)}\``)
        .join(', ')}${at}.`;
    default:
      return `${prefix}invalid value${at}: ${err.message ?? err.keyword}.`;
  }
}

/** Finds the operation for a method and concrete path, with the path parameters. */
export function matchOperation(
  spec: FirecrackerSpec,
  method: string,
  path: string,
): { op: SpecOperation; params: Record<string, string> } | null {
  const parts = path.split('/');
  for (const op of spec.operations) {
    if (op.method !== method) continue;
    const tpl = op.template.split('/');
    if (tpl.length !== parts.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    for (let i = 0; i < tpl.length; i++) {
      const t = tpl[i]!;
      const p = parts[i]!;
      if (t.startsWith('{') && t.endsWith('}')) {
        // Firecracker takes the segment as it came, never percent-decoded.
        if (p === '') ok = false;
        else params[t.slice(1, -1)] = p;
      } else if (t !== p) ok = false;
      if (!ok) break;
    }
    if (ok) return { op, params };
  }
  return null;
}
