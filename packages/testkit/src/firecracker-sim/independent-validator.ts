/**
 * A check of request bodies against a Firecracker version's official spec that shares no code
 * with the simulator's own validation: its own reading of the YAML, Draft-4, unknown fields
 * refused (serde deny_unknown_fields). Tests use it on the simulator's journal.
 */
import { readFileSync } from 'node:fs';
import Ajv from 'ajv-draft-04';
import { parse } from 'yaml';
import type { JournalRequest } from './journal';
import { type FirecrackerSimVersion, firecrackerSpecPath } from './spec';

export function independentSpecValidator(version: FirecrackerSimVersion) {
  const doc = parse(readFileSync(firecrackerSpecPath(version), 'utf8')) as {
    paths: Record<string, Record<string, { parameters?: { in: string; schema?: { $ref?: string } }[] }>>;
    definitions: Record<string, Record<string, unknown>>;
  };
  const close = (s: unknown): unknown => {
    if (Array.isArray(s)) return s.map(close);
    if (!s || typeof s !== 'object') return s;
    const o: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(s)) {
      o[k] =
        k === 'properties'
          ? Object.fromEntries(Object.entries(v as object).map(([n, p]) => [n, close(p)]))
          : close(v);
    }
    if (o.properties && o.additionalProperties === undefined) o.additionalProperties = false;
    return o;
  };
  const ajv = new Ajv({ strict: false });
  ajv.addFormat('int64', true);
  ajv.addFormat('int32', true);
  ajv.addFormat(
    (doc.definitions.MmdsConfig!.properties as { ipv4_address: { format: string } }).ipv4_address.format,
    /^169\.254\.\d{1,3}\.\d{1,3}$/,
  );
  ajv.addSchema({ id: 'spec.json', definitions: close(doc.definitions) }, 'spec.json');
  return (req: JournalRequest): string | null => {
    for (const [tpl, ops] of Object.entries(doc.paths)) {
      const re = new RegExp(`^${tpl.replace(/\{[^}]+\}/g, '[^/]+')}$`);
      const op = ops[req.method.toLowerCase()];
      if (!re.test(req.path) || !op) continue;
      const ref = op.parameters?.find((p) => p.in === 'body')?.schema?.$ref;
      if (!ref) return req.body === null ? null : `${req.method} ${req.path} takes no body`;
      const validate = ajv.getSchema(`spec.json${ref}`)!;
      return validate(req.body) ? null : `${req.method} ${req.path}: ${ajv.errorsText(validate.errors)}`;
    }
    return `${req.method} ${req.path} is not in the ${version} spec`;
  };
}
