/**
 * What a VM and a template have in common (size, images, network, VMM, guest configuration,
 * restart policy, labels): one form model, its checks, its request body and its field groups,
 * shared by the create wizard and the template form.
 */
import type { ReactNode } from 'react';
import { formatMib } from './format';
import { useImages, useNetworks } from './queries';
import type { ImageSummary, Network, TemplateSpecInput } from './types';
import { ValidatedField } from './ui';

export const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
export const NAME_RULE = 'letters, digits, "-", "_" or "." (1-63), starting alphanumeric';
const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const HOST_RE = /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;
const LABEL_KEY_RE = /^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The shared form state; numbers stay strings while they are typed. */
export interface VmShape {
  vmm: 'auto' | 'firecracker' | 'qemu';
  restart_policy: 'never' | 'on-failure' | 'always';
  labels: string;
  vcpu: string;
  mem_mib: string;
  disk_size_mib: string;
  kernel_image_id: string;
  rootfs_image_id: string;
  initrd_image_id: string;
  /** '' = the default network (the field is omitted), 'none' = no NIC, else a network id. */
  network: string;
  username: string;
  password: string;
  ssh_keys: string;
  hostname: string;
}

export const INITIAL_SHAPE: VmShape = {
  vmm: 'auto',
  restart_policy: 'never',
  labels: '',
  vcpu: '1',
  mem_mib: '256',
  disk_size_mib: '',
  kernel_image_id: '',
  rootfs_image_id: '',
  initrd_image_id: '',
  network: '',
  username: '',
  password: '',
  ssh_keys: '',
  hostname: '',
};

export type ShapeErrors = Partial<Record<keyof VmShape, string>>;
export type SetShape = <K extends keyof VmShape>(k: K, v: VmShape[K]) => void;

/** "env=dev, team=core" (or one per line) as a label map, or the first bad entry. */
export function parseLabels(text: string): { labels: Record<string, string>; error?: string } {
  const labels: Record<string, string> = {};
  for (const part of text.split(/[,\n]/).map((s) => s.trim())) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const k = eq < 0 ? part : part.slice(0, eq).trim();
    const v = eq < 0 ? '' : part.slice(eq + 1).trim();
    if (!LABEL_KEY_RE.test(k))
      return { labels, error: `label key "${k}": lowercase letters, digits, . _ / -` };
    if (v.length > 63) return { labels, error: `label "${k}": value longer than 63 characters` };
    labels[k] = v;
  }
  return { labels };
}

export const formatLabels = (labels: Record<string, string>) =>
  Object.entries(labels)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');

const intIn = (s: string, min: number, max: number) => /^\d+$/.test(s) && +s >= min && +s <= max;

export const sshKeys = (f: VmShape) =>
  f.ssh_keys
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean);

/** VMM, restart policy and labels. */
export function checkGeneral(f: VmShape): ShapeErrors {
  const l = parseLabels(f.labels);
  return l.error ? { labels: l.error } : {};
}

type SizeShape = Pick<VmShape, 'vcpu' | 'mem_mib'>;
type SizeErrors = Partial<Record<keyof SizeShape, string>>;

/** vCPUs and memory (VMs and containers). */
export function checkSize(f: SizeShape): SizeErrors {
  const e: SizeErrors = {};
  if (!intIn(f.vcpu, 1, 32)) e.vcpu = '1 to 32';
  if (!intIn(f.mem_mib, 64, 262_144)) e.mem_mib = '64 to 262144 MiB';
  return e;
}

/** Size, images and network. */
export function checkResources(f: VmShape): ShapeErrors {
  const e: ShapeErrors = checkSize(f);
  if (f.disk_size_mib && !intIn(f.disk_size_mib, 16, 4_194_304)) e.disk_size_mib = '16 to 4194304 MiB';
  for (const k of ['kernel_image_id', 'rootfs_image_id', 'initrd_image_id'] as const)
    if (f[k] && !UUID_RE.test(f[k])) e[k] = 'an image id (UUID)';
  return e;
}

export function checkGuest(f: VmShape): ShapeErrors {
  const e: ShapeErrors = {};
  if (f.username && !USER_RE.test(f.username)) e.username = 'a POSIX user name (lowercase, digits, _ -)';
  if (f.password.length > 256) e.password = 'at most 256 characters';
  if (f.hostname && !HOST_RE.test(f.hostname)) e.hostname = 'a host name label (letters, digits, -)';
  if (sshKeys(f).length > 32) e.ssh_keys = 'at most 32 keys';
  return e;
}

/** The request body part a VM create and a template spec share; empty fields are left out. */
export function shapeBody(f: VmShape): TemplateSpecInput {
  const keysList = sshKeys(f);
  const guest =
    f.username || f.password || keysList.length || f.hostname
      ? {
          mode: 'auto' as const,
          ...(f.username ? { username: f.username } : {}),
          ...(f.password ? { password: f.password } : {}),
          ...(keysList.length ? { ssh_authorized_keys: keysList } : {}),
          ...(f.hostname ? { hostname: f.hostname } : {}),
        }
      : undefined;
  return {
    vcpu: Number(f.vcpu),
    mem_mib: Number(f.mem_mib),
    ...(f.disk_size_mib ? { disk_size_mib: Number(f.disk_size_mib) } : {}),
    ...(f.kernel_image_id ? { kernel_image_id: f.kernel_image_id } : {}),
    ...(f.rootfs_image_id ? { rootfs_image_id: f.rootfs_image_id } : {}),
    ...(f.initrd_image_id ? { initrd_image_id: f.initrd_image_id } : {}),
    ...(f.vmm !== 'auto' ? { vmm: f.vmm } : {}),
    ...(f.network === 'none' ? { networks: [] } : f.network ? { networks: [{ network_id: f.network }] } : {}),
    ...(guest ? { guest_config: guest } : {}),
    restart_policy: f.restart_policy,
    labels: parseLabels(f.labels).labels,
  };
}

/** The guest settings in a few words (no secret in it). */
export function guestSummary(f: VmShape): string {
  const n = sshKeys(f).length;
  return (
    [
      f.username && `user ${f.username}`,
      f.password && 'password set',
      n && `${n} SSH key(s)`,
      f.hostname && `hostname ${f.hostname}`,
    ]
      .filter(Boolean)
      .join(', ') || 'image defaults'
  );
}

interface GroupProps {
  f: VmShape;
  set: SetShape;
  errors: ShapeErrors;
}

function field(
  { errors }: { errors: ShapeErrors },
  k: keyof VmShape,
  label: string,
  render: (id: string) => ReactNode,
  hint?: ReactNode,
) {
  return <ValidatedField key={k} label={label} error={errors[k]} hint={hint} render={render} />;
}

export const LABELS_PLACEHOLDER = 'env=dev, team=core';
export const LABELS_HINT = 'optional, key=value separated by commas';

/** VMM, restart policy and labels, as cells of a .form-grid. */
export function GeneralFields(p: GroupProps) {
  const { f, set } = p;
  return (
    <>
      {field(
        p,
        'vmm',
        'VMM',
        (id) => (
          <select
            id={id}
            name="vmm"
            value={f.vmm}
            onChange={(e) => set('vmm', e.target.value as VmShape['vmm'])}
          >
            <option value="auto">auto</option>
            <option value="firecracker">Firecracker</option>
            <option value="qemu">QEMU (microvm)</option>
          </select>
        ),
        f.vmm === 'auto' ? 'Firecracker where the host offers it, else QEMU' : undefined,
      )}
      {field(p, 'restart_policy', 'Restart policy', (id) => (
        <RestartPolicySelect id={id} value={f.restart_policy} onChange={(v) => set('restart_policy', v)} />
      ))}
      {field(
        p,
        'labels',
        'Labels',
        (id) => (
          <input
            id={id}
            name="labels"
            value={f.labels}
            onChange={(e) => set('labels', e.target.value)}
            placeholder={LABELS_PLACEHOLDER}
          />
        ),
        LABELS_HINT,
      )}
    </>
  );
}

/**
 * vCPUs, memory, disk, the image pickers and the network picker, as cells of a .form-grid.
 * The pickers stay hidden while their list fails to load (the defaults apply).
 */
export function ResourceFields(p: GroupProps) {
  const { f, set } = p;
  const images = useImages();
  const networks = useNetworks();
  const imageList = images.isSuccess ? images.data : null;
  const networkList = networks.isSuccess ? networks.data : null;
  return (
    <>
      <SizeFields f={f} set={set} errors={p.errors} />
      {field(
        p,
        'disk_size_mib',
        'Disk size (MiB)',
        (id) => (
          <input
            id={id}
            name="disk_size_mib"
            type="number"
            min={16}
            value={f.disk_size_mib}
            placeholder="image size"
            onChange={(e) => set('disk_size_mib', e.target.value)}
          />
        ),
        'optional; the rootfs is grown to this size',
      )}
      {imageList ? (
        <>
          {field(p, 'kernel_image_id', 'Kernel image', (id) => (
            <ImageSelect
              id={id}
              name="kernel_image_id"
              kind="kernel"
              images={imageList}
              value={f.kernel_image_id}
              onChange={(v) => set('kernel_image_id', v)}
            />
          ))}
          {field(p, 'rootfs_image_id', 'Root filesystem image', (id) => (
            <ImageSelect
              id={id}
              name="rootfs_image_id"
              kind="rootfs"
              images={imageList}
              value={f.rootfs_image_id}
              onChange={(v) => set('rootfs_image_id', v)}
            />
          ))}
          {field(
            p,
            'initrd_image_id',
            'Initrd image',
            (id) => (
              <ImageSelect
                id={id}
                name="initrd_image_id"
                kind="initrd"
                images={imageList}
                value={f.initrd_image_id}
                // The manager adds the default initrd only to the default kernel.
                emptyLabel={f.kernel_image_id ? 'none' : 'default initrd'}
                onChange={(v) => set('initrd_image_id', v)}
              />
            ),
            'optional',
          )}
        </>
      ) : null}
      {networkList
        ? field(p, 'network', 'Network', (id) => (
            <NetworkSelect
              id={id}
              networks={networkList}
              value={f.network}
              onChange={(v) => set('network', v)}
            />
          ))
        : null}
    </>
  );
}

/** User, password, SSH keys and (for a single VM) hostname, as cells of a .form-grid. */
export function GuestFields(p: GroupProps & { hostnamePlaceholder?: string; withHostname?: boolean }) {
  const { f, set, withHostname = true } = p;
  return (
    <>
      <p className="muted full">
        Optional. Applied with cloud-init (or written into the image when it has none). Passwords are hashed
        by the manager and never shown again.
      </p>
      {field(p, 'username', 'User', (id) => (
        <input
          id={id}
          name="username"
          value={f.username}
          autoComplete="off"
          placeholder="e.g. debian"
          onChange={(e) => set('username', e.target.value)}
        />
      ))}
      {field(p, 'password', 'Password', (id) => (
        <input
          id={id}
          name="password"
          type="password"
          value={f.password}
          autoComplete="new-password"
          onChange={(e) => set('password', e.target.value)}
        />
      ))}
      {withHostname
        ? field(p, 'hostname', 'Hostname', (id) => (
            <input
              id={id}
              name="hostname"
              value={f.hostname}
              placeholder={p.hostnamePlaceholder}
              onChange={(e) => set('hostname', e.target.value)}
            />
          ))
        : null}
      <div className="full">
        {field(p, 'ssh_keys', 'SSH authorized keys', (id) => (
          <textarea
            id={id}
            name="ssh_keys"
            rows={3}
            value={f.ssh_keys}
            spellCheck={false}
            placeholder="ssh-ed25519 AAAA… user@host (one per line)"
            onChange={(e) => set('ssh_keys', e.target.value)}
          />
        ))}
      </div>
    </>
  );
}

/** vCPUs and memory, as cells of a .form-grid (VMs and containers). */
export function SizeFields({
  f,
  set,
  errors,
}: {
  f: SizeShape;
  set: (k: keyof SizeShape, v: string) => void;
  errors: SizeErrors;
}) {
  return (
    <>
      {field({ errors }, 'vcpu', 'vCPUs', (id) => (
        <input
          id={id}
          name="vcpu"
          type="number"
          min={1}
          max={32}
          value={f.vcpu}
          onChange={(e) => set('vcpu', e.target.value)}
        />
      ))}
      {field(
        { errors },
        'mem_mib',
        'Memory (MiB)',
        (id) => (
          <input
            id={id}
            name="mem_mib"
            type="number"
            min={64}
            step={64}
            value={f.mem_mib}
            onChange={(e) => set('mem_mib', e.target.value)}
          />
        ),
        /^\d+$/.test(f.mem_mib) ? formatMib(Number(f.mem_mib)) : undefined,
      )}
    </>
  );
}

export function RestartPolicySelect({
  id,
  value,
  onChange,
}: {
  id: string;
  value: VmShape['restart_policy'];
  onChange: (v: VmShape['restart_policy']) => void;
}) {
  return (
    <select
      id={id}
      name="restart_policy"
      value={value}
      onChange={(e) => onChange(e.target.value as VmShape['restart_policy'])}
    >
      <option value="never">never</option>
      <option value="on-failure">on failure</option>
      <option value="always">always</option>
    </select>
  );
}

function ImageSelect({
  id,
  name,
  kind,
  images,
  value,
  emptyLabel,
  onChange,
}: {
  id: string;
  name: string;
  kind: string;
  images: ImageSummary[];
  value: string;
  emptyLabel?: string;
  onChange: (v: string) => void;
}) {
  const list = images.filter((i) => !i.kind || i.kind === kind);
  return (
    <select id={id} name={name} value={value} onChange={(e) => onChange(e.target.value)}>
      <option value="">{emptyLabel ?? `default ${kind}`}</option>
      {list.map((i) => (
        <option key={i.id} value={i.id}>
          {i.name ?? i.id}
          {i.is_default ? ' (default)' : ''}
        </option>
      ))}
    </select>
  );
}

/** '' = the default network, 'none' = no NIC (offered unless `allowNone` is false), else an id. */
export function NetworkSelect({
  id,
  networks,
  value,
  onChange,
  allowNone = true,
}: {
  id: string;
  networks: Network[];
  value: string;
  onChange: (v: string) => void;
  allowNone?: boolean;
}) {
  const def = networks.find((n) => n.is_default);
  return (
    <select id={id} name="network" value={value} onChange={(e) => onChange(e.target.value)}>
      <option value="">{def ? `default (${def.name})` : 'default (none set: no NIC)'}</option>
      {allowNone ? <option value="none">none (no NIC)</option> : null}
      {networks.map((n) => (
        <option key={n.id} value={n.id}>
          {n.name} ({n.kind}
          {n.cidr ? ` ${n.cidr}` : ''})
        </option>
      ))}
    </select>
  );
}

/** The network choice in words ('' = the default network, 'none' = no NIC). */
export function useNetworkLabel(): (choice: string) => string {
  const networks = useNetworks();
  return (id) =>
    id === 'none' ? 'none' : id ? (networks.data?.find((n) => n.id === id)?.name ?? id) : 'default network';
}

/** The API's failing spec fields (paths under body.spec or body.overrides) on this form's fields. */
export function shapeErrorsOf(fields: Record<string, string>): ShapeErrors {
  const e: ShapeErrors = {};
  for (const [path, message] of Object.entries(fields)) {
    const [head, sub] = path.split('.');
    const key =
      head === 'guest_config'
        ? sub === 'ssh_authorized_keys'
          ? 'ssh_keys'
          : sub
        : head === 'networks'
          ? 'network'
          : head;
    if (key && key in INITIAL_SHAPE) e[key as keyof VmShape] ??= message;
  }
  return e;
}
