/** The create wizard: General → Resources → Guest → Confirm, one POST /api/v1/vms at the end. */
import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, type ReactNode, useEffect, useId, useRef, useState } from 'react';
import { api } from '../api';
import { formatMib } from '../format';
import { keys, useImages } from '../queries';
import { Link } from '../router';
import type { ImageSummary, Vm, VmActionResponse, VmCreate } from '../types';
import { ErrorBox, Modal, toast } from '../ui';

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const USER_RE = /^[a-z_][a-z0-9_-]{0,31}$/;
const HOST_RE = /^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$/;
const LABEL_KEY_RE = /^[a-z0-9]([a-z0-9._/-]{0,61}[a-z0-9])?$/;
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const STEPS = ['General', 'Resources', 'Guest', 'Confirm'] as const;

interface Form {
  name: string;
  vmm: 'auto' | 'firecracker' | 'qemu';
  restart_policy: 'never' | 'on-failure' | 'always';
  start: boolean;
  labels: string;
  vcpu: string;
  mem_mib: string;
  disk_size_mib: string;
  kernel_image_id: string;
  rootfs_image_id: string;
  username: string;
  password: string;
  ssh_keys: string;
  hostname: string;
}

const INITIAL: Form = {
  name: '',
  vmm: 'auto',
  restart_policy: 'never',
  start: true,
  labels: '',
  vcpu: '1',
  mem_mib: '256',
  disk_size_mib: '',
  kernel_image_id: '',
  rootfs_image_id: '',
  username: '',
  password: '',
  ssh_keys: '',
  hostname: '',
};

function parseLabels(text: string): { labels: Record<string, string>; error?: string } {
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

const intIn = (s: string, min: number, max: number) => /^\d+$/.test(s) && +s >= min && +s <= max;

function validate(f: Form, step: number): Partial<Record<keyof Form, string>> {
  const e: Partial<Record<keyof Form, string>> = {};
  if (step === 0) {
    if (!NAME_RE.test(f.name)) e.name = 'letters, digits, "-", "_" or "." (1-63), starting alphanumeric';
    const l = parseLabels(f.labels);
    if (l.error) e.labels = l.error;
  }
  if (step === 1) {
    if (!intIn(f.vcpu, 1, 32)) e.vcpu = '1 to 32';
    if (!intIn(f.mem_mib, 64, 262_144)) e.mem_mib = '64 to 262144 MiB';
    if (f.disk_size_mib && !intIn(f.disk_size_mib, 16, 4_194_304)) e.disk_size_mib = '16 to 4194304 MiB';
    if (f.kernel_image_id && !UUID_RE.test(f.kernel_image_id)) e.kernel_image_id = 'an image id (UUID)';
    if (f.rootfs_image_id && !UUID_RE.test(f.rootfs_image_id)) e.rootfs_image_id = 'an image id (UUID)';
  }
  if (step === 2) {
    if (f.username && !USER_RE.test(f.username)) e.username = 'a POSIX user name (lowercase, digits, _ -)';
    if (f.password.length > 256) e.password = 'at most 256 characters';
    if (f.hostname && !HOST_RE.test(f.hostname)) e.hostname = 'a host name label (letters, digits, -)';
    if (sshKeys(f).length > 32) e.ssh_keys = 'at most 32 keys';
  }
  return e;
}

const sshKeys = (f: Form) =>
  f.ssh_keys
    .split('\n')
    .map((s) => s.trim())
    .filter(Boolean);

function toBody(f: Form): VmCreate {
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
    name: f.name,
    vcpu: Number(f.vcpu),
    mem_mib: Number(f.mem_mib),
    ...(f.disk_size_mib ? { disk_size_mib: Number(f.disk_size_mib) } : {}),
    ...(f.kernel_image_id ? { kernel_image_id: f.kernel_image_id } : {}),
    ...(f.rootfs_image_id ? { rootfs_image_id: f.rootfs_image_id } : {}),
    ...(f.vmm !== 'auto' ? { vmm: f.vmm } : {}),
    ...(guest ? { guest_config: guest } : {}),
    restart_policy: f.restart_policy,
    labels: parseLabels(f.labels).labels,
    start: f.start,
  };
}

export function VmWizard({ open, onClose }: { open: boolean; onClose: () => void }) {
  return (
    <Modal open={open} title="Create virtual machine" onClose={onClose} wide>
      {open ? <WizardBody onClose={onClose} /> : null}
    </Modal>
  );
}

function WizardBody({ onClose }: { onClose: () => void }) {
  const qc = useQueryClient();
  const images = useImages();
  const [f, setF] = useState<Form>(INITIAL);
  const [step, setStep] = useState(0);
  const [errors, setErrors] = useState<Partial<Record<keyof Form, string>>>({});
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const form = useRef<HTMLFormElement>(null);
  // Focus the first field of each step (keyboard users go straight on typing).
  // biome-ignore lint/correctness/useExhaustiveDependencies: runs again on every step change
  useEffect(() => {
    form.current
      ?.querySelector<HTMLElement>('.form-grid input, .form-grid select, .form-grid textarea')
      ?.focus();
  }, [step]);
  const set = <K extends keyof Form>(k: K, v: Form[K]) => setF((old) => ({ ...old, [k]: v }));
  const taken = qc.getQueryData<Vm[]>(keys.vms)?.some((v) => v.name === f.name);

  const next = (e?: FormEvent) => {
    e?.preventDefault();
    const errs = validate(f, step);
    setErrors(errs);
    if (Object.keys(errs).length) return;
    if (step < STEPS.length - 1) setStep(step + 1);
    else void submit();
  };

  const submit = async () => {
    setBusy(true);
    setApiError(null);
    try {
      const out = await api<VmActionResponse>('POST', '/api/v1/vms', toBody(f));
      toast('ok', `Creating VM ${out.vm.name}`);
      onClose(); // unmounts the form: the password is gone with it
    } catch (err) {
      setApiError(err);
    } finally {
      setBusy(false);
    }
  };

  const field = (k: keyof Form, label: string, input: (id: string) => ReactNode, hint?: ReactNode) => (
    <WizardField label={label} error={errors[k]} hint={hint} render={input} />
  );
  const imageList = images.isSuccess ? images.data : null;

  return (
    <form ref={form} onSubmit={next} className="wizard" noValidate>
      <ol className="steps">
        {STEPS.map((s, i) => (
          <li key={s} className={i === step ? 'current' : i < step ? 'done' : undefined}>
            <button type="button" disabled={i > step} onClick={() => setStep(i)}>
              <span className="step-n">{i + 1}</span> {s}
            </button>
          </li>
        ))}
      </ol>

      {step === 0 ? (
        <div className="form-grid">
          {field(
            'name',
            'Name',
            (id) => (
              <input
                id={id}
                name="name"
                value={f.name}
                required
                onChange={(e) => set('name', e.target.value)}
                placeholder="web-1"
              />
            ),
            taken ? 'another VM already has this name' : undefined,
          )}
          {field('vmm', 'VMM', (id) => (
            <select
              id={id}
              name="vmm"
              value={f.vmm}
              onChange={(e) => set('vmm', e.target.value as Form['vmm'])}
            >
              <option value="auto">auto (Firecracker where available, else QEMU)</option>
              <option value="firecracker">Firecracker</option>
              <option value="qemu">QEMU (microvm)</option>
            </select>
          ))}
          {field('restart_policy', 'Restart policy', (id) => (
            <select
              id={id}
              name="restart_policy"
              value={f.restart_policy}
              onChange={(e) => set('restart_policy', e.target.value as Form['restart_policy'])}
            >
              <option value="never">never</option>
              <option value="on-failure">on failure</option>
              <option value="always">always</option>
            </select>
          ))}
          {field(
            'labels',
            'Labels',
            (id) => (
              <input
                id={id}
                name="labels"
                value={f.labels}
                onChange={(e) => set('labels', e.target.value)}
                placeholder="env=dev, team=core"
              />
            ),
            'optional, key=value separated by commas',
          )}
          <label className="check">
            <input
              type="checkbox"
              name="start"
              checked={f.start}
              onChange={(e) => set('start', e.target.checked)}
            />
            Start after creation
          </label>
        </div>
      ) : null}

      {step === 1 ? (
        <div className="form-grid">
          {field('vcpu', 'vCPUs', (id) => (
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
          {field(
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
              {field('kernel_image_id', 'Kernel image', (id) => (
                <ImageSelect
                  id={id}
                  name="kernel_image_id"
                  kind="kernel"
                  images={imageList}
                  value={f.kernel_image_id}
                  onChange={(v) => set('kernel_image_id', v)}
                />
              ))}
              {field('rootfs_image_id', 'Root filesystem image', (id) => (
                <ImageSelect
                  id={id}
                  name="rootfs_image_id"
                  kind="rootfs"
                  images={imageList}
                  value={f.rootfs_image_id}
                  onChange={(v) => set('rootfs_image_id', v)}
                />
              ))}
            </>
          ) : null}
        </div>
      ) : null}

      {step === 2 ? (
        <div className="form-grid">
          <p className="muted full">
            Optional. Applied with cloud-init (or written into the image when it has none). Passwords are
            hashed by the manager and never shown again.
          </p>
          {field('username', 'User', (id) => (
            <input
              id={id}
              name="username"
              value={f.username}
              autoComplete="off"
              placeholder="e.g. debian"
              onChange={(e) => set('username', e.target.value)}
            />
          ))}
          {field('password', 'Password', (id) => (
            <input
              id={id}
              name="password"
              type="password"
              value={f.password}
              autoComplete="new-password"
              onChange={(e) => set('password', e.target.value)}
            />
          ))}
          {field('hostname', 'Hostname', (id) => (
            <input
              id={id}
              name="hostname"
              value={f.hostname}
              placeholder={NAME_RE.test(f.name) ? f.name.replace(/[._]/g, '-') : ''}
              onChange={(e) => set('hostname', e.target.value)}
            />
          ))}
          <div className="full">
            {field('ssh_keys', 'SSH authorized keys', (id) => (
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
        </div>
      ) : null}

      {step === 3 ? (
        <dl className="kv summary" data-testid="wizard-summary">
          <dt>Name</dt>
          <dd>{f.name}</dd>
          <dt>VMM</dt>
          <dd>{f.vmm}</dd>
          <dt>vCPUs / memory</dt>
          <dd>
            {f.vcpu} / {formatMib(Number(f.mem_mib))}
          </dd>
          <dt>Disk</dt>
          <dd>{f.disk_size_mib ? formatMib(Number(f.disk_size_mib)) : 'image size'}</dd>
          <dt>Images</dt>
          <dd>
            kernel {f.kernel_image_id || 'default'}, rootfs {f.rootfs_image_id || 'default'}
          </dd>
          <dt>Guest</dt>
          <dd>
            {[
              f.username && `user ${f.username}`,
              f.password && 'password set',
              sshKeys(f).length && `${sshKeys(f).length} SSH key(s)`,
              f.hostname && `hostname ${f.hostname}`,
            ]
              .filter(Boolean)
              .join(', ') || 'image defaults'}
          </dd>
          <dt>Restart policy</dt>
          <dd>{f.restart_policy}</dd>
          <dt>Labels</dt>
          <dd>{f.labels.trim() || '—'}</dd>
          <dt>Start now</dt>
          <dd>{f.start ? 'yes' : 'no'}</dd>
        </dl>
      ) : null}

      <ErrorBox error={apiError} title="The manager refused the VM" />
      <div className="modal-foot wizard-foot">
        <button type="button" className="btn" onClick={onClose}>
          Cancel
        </button>
        <span className="spacer" />
        {step > 0 ? (
          <button type="button" className="btn" onClick={() => setStep(step - 1)}>
            Back
          </button>
        ) : null}
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {step < STEPS.length - 1 ? 'Next' : busy ? 'Creating…' : 'Create'}
        </button>
      </div>
      <p className="small muted">
        Progress shows in the VM list and under <Link to="/">recent operations</Link>.
      </p>
    </form>
  );
}

function WizardField({
  label,
  error,
  hint,
  render,
}: {
  label: string;
  error?: string;
  hint?: ReactNode;
  render: (id: string) => ReactNode;
}) {
  const id = useId();
  return (
    <div className={`field${error ? ' invalid' : ''}`}>
      <label htmlFor={id}>{label}</label>
      {render(id)}
      {error ? (
        <small className="error-text">{error}</small>
      ) : hint ? (
        <small className="muted">{hint}</small>
      ) : null}
    </div>
  );
}

function ImageSelect({
  id,
  name,
  kind,
  images,
  value,
  onChange,
}: {
  id: string;
  name: string;
  kind: string;
  images: ImageSummary[];
  value: string;
  onChange: (v: string) => void;
}) {
  const list = images.filter((i) => !i.kind || i.kind === kind);
  return (
    <select id={id} name={name} value={value} onChange={(e) => onChange(e.target.value)}>
      <option value="">default {kind}</option>
      {list.map((i) => (
        <option key={i.id} value={i.id}>
          {i.name ?? i.id}
          {i.is_default ? ' (default)' : ''}
        </option>
      ))}
    </select>
  );
}
