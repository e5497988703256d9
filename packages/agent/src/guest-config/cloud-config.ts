/**
 * The cloud-init NoCloud documents of a guest: meta-data, user-data (nqvm's #cloud-config with
 * the user's own merged in, or a MIME multipart when the user's is not a cloud-config) and
 * network-config (v1 from the manager's v2, see guest-network.ts). Pure functions: the same input
 * gives the same bytes.
 */
import { createHash } from 'node:crypto';
import type { AgentGuestConfig } from '@nqvm/api';
import { isMap, parseDocument, stringify } from 'yaml';
import { guestNics, networkConfigV1 } from './guest-network';
import { authorizedKeys, GuestConfigError, guestAccount } from './guest-values';

export interface CloudInitData {
  metaData: string;
  userData: string;
  /** null when the config has no network settings. */
  networkConfig: string | null;
}

type CloudConfig = Record<string, unknown>;

const CLOUD_CONFIG_HEADER = '#cloud-config';
const YAML_OPTIONS = { lineWidth: 0 } as const;

/** Content types of the user-data formats cloud-init recognises by their first line. */
const PART_TYPES: ReadonlyArray<[prefix: string, type: string]> = [
  ['#!', 'text/x-shellscript'],
  ['#include-once', 'text/x-include-once-url'],
  ['#include', 'text/x-include-url'],
  ['#cloud-boothook', 'text/cloud-boothook'],
  ['#part-handler', 'text/part-handler'],
  ['## template: jinja', 'text/jinja2'],
];

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Deep-merges `extra` into `base`: maps merge key by key, lists concatenate (base first, so
 * `users` and `runcmd` keep both sides' entries), and any other value from `extra` wins.
 *
 * @example
 * mergeCloudConfig({ users: [{ name: 'a' }], hostname: 'x' }, { users: [{ name: 'b' }], hostname: 'y' });
 * // { users: [{ name: 'a' }, { name: 'b' }], hostname: 'y' }
 */
export function mergeCloudConfig(base: CloudConfig, extra: CloudConfig): CloudConfig {
  const out: CloudConfig = { ...base };
  for (const [key, value] of Object.entries(extra)) {
    const mine = out[key];
    if (Array.isArray(mine) && Array.isArray(value)) out[key] = [...mine, ...value];
    else if (isPlainObject(mine) && isPlainObject(value)) out[key] = mergeCloudConfig(mine, value);
    else out[key] = value;
  }
  return out;
}

/** nqvm's own cloud-config: host name, and the account with its hash and keys. */
export function baseCloudConfig(cfg: AgentGuestConfig): CloudConfig {
  const doc: CloudConfig = { hostname: cfg.hostname, preserve_hostname: false };
  const account = guestAccount(cfg);
  if (!account) return doc;
  const keys = authorizedKeys(cfg);
  const user: Record<string, unknown> = { name: account };
  if (cfg.password_hash) {
    user.passwd = cfg.password_hash;
    user.lock_passwd = false;
  }
  if (keys.length) user.ssh_authorized_keys = keys;
  if (account === 'root') {
    // cloud-init otherwise turns root's keys into a "log in as the default user" message.
    doc.disable_root = false;
  } else {
    user.sudo = cfg.password_hash ? 'ALL=(ALL) ALL' : 'ALL=(ALL) NOPASSWD:ALL';
  }
  doc.users = [user];
  if (cfg.password_hash) doc.ssh_pwauth = true;
  return doc;
}

function parseUserCloudConfig(text: string): CloudConfig {
  const doc = parseDocument(text);
  if (doc.errors.length) {
    throw new GuestConfigError(`user_data is not valid YAML: ${doc.errors[0]!.message}`);
  }
  if (doc.contents === null) return {};
  if (!isMap(doc.contents)) throw new GuestConfigError('user_data #cloud-config must be a YAML map');
  return doc.toJS() as CloudConfig;
}

function renderCloudConfig(doc: CloudConfig): string {
  return `${CLOUD_CONFIG_HEADER}\n${stringify(doc, YAML_OPTIONS)}`;
}

/** The MIME type cloud-init gives user-data starting like `text`; null for a MIME document. */
function partTypeOf(text: string): string | null {
  if (/^content-type:/i.test(text)) return null;
  for (const [prefix, type] of PART_TYPES) if (text.startsWith(prefix)) return type;
  return 'text/plain';
}

/**
 * Our cloud-config and the user's part in one multipart/mixed document, as cloud-init's
 * `make-mime` writes it. A user document that is MIME already is nested as it is.
 */
function multipart(ours: string, theirs: string): string {
  const boundary = `nqvm-${createHash('sha256').update(ours).update(theirs).digest('hex').slice(0, 24)}`;
  const type = partTypeOf(theirs);
  const theirPart =
    type === null
      ? theirs.replace(/\r\n/g, '\n')
      : `Content-Type: ${type}; charset="utf-8"\nMIME-Version: 1.0\n\n${theirs}`;
  return [
    `Content-Type: multipart/mixed; boundary="${boundary}"`,
    'MIME-Version: 1.0',
    '',
    `--${boundary}`,
    'Content-Type: text/cloud-config; charset="utf-8"',
    'MIME-Version: 1.0',
    '',
    ours.trimEnd(),
    `--${boundary}`,
    theirPart.trimEnd(),
    `--${boundary}--`,
    '',
  ].join('\n');
}

/**
 * The user-data document: ours alone, ours merged with the user's #cloud-config, or both as MIME.
 * `extra` is merged into ours (the guest agent's install step).
 */
export function userData(cfg: AgentGuestConfig, extra: CloudConfig = {}): string {
  const ours = mergeCloudConfig(baseCloudConfig(cfg), extra);
  const theirs = cfg.user_data?.replace(/^\uFEFF/, '') ?? '';
  if (theirs.trim() === '') return renderCloudConfig(ours);
  const firstLine = theirs.split('\n', 1)[0]!.trim();
  if (firstLine === CLOUD_CONFIG_HEADER) {
    return renderCloudConfig(mergeCloudConfig(ours, parseUserCloudConfig(theirs)));
  }
  return multipart(renderCloudConfig(ours), theirs);
}

/** NoCloud meta-data: the instance id (a new one makes cloud-init run its per-instance modules). */
export function metaData(cfg: AgentGuestConfig): string {
  return stringify({ 'instance-id': cfg.instance_id, 'local-hostname': cfg.hostname }, YAML_OPTIONS);
}

/**
 * NoCloud network-config: v1 made from the manager's v2, which renders right with every
 * cloud-init renderer; a v2 document this agent does not understand goes as it is.
 */
export function networkConfigDocument(doc: Record<string, unknown>): string {
  let out: Record<string, unknown> = doc;
  try {
    out = networkConfigV1(guestNics(doc));
  } catch (err) {
    if (!(err instanceof GuestConfigError)) throw err;
  }
  return stringify(out, YAML_OPTIONS);
}

/**
 * All three NoCloud documents.
 *
 * @example
 * const { metaData, userData, networkConfig } = cloudInitData(spec.guest_config);
 */
export function cloudInitData(cfg: AgentGuestConfig, extra: CloudConfig = {}): CloudInitData {
  return {
    metaData: metaData(cfg),
    userData: userData(cfg, extra),
    networkConfig: cfg.network_config ? networkConfigDocument(cfg.network_config) : null,
  };
}
