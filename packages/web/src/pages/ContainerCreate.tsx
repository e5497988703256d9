/**
 * The create form: image, process, environment, ports, size, network and registry credentials;
 * one POST /api/v1/containers, then its operation followed (pulling, converting, starting) until
 * the container runs (the detail page opens) or fails (the error stays on screen).
 */
import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, useEffect, useState } from 'react';
import { ApiError, api, fieldErrors } from '../api';
import { parseArgv } from '../argv';
import { ContainerStatusBadge } from '../container-status';
import { keys, opDone, useContainer, useNetworks, useOperation } from '../queries';
import { Link, navigate } from '../router';
import type { ContainerActionResponse, ContainerCreate } from '../types';
import { ErrorBox, FormFoot, Loading, Modal, ProgressBar, ValidatedField } from '../ui';
import {
  checkSize,
  LABELS_HINT,
  LABELS_PLACEHOLDER,
  NAME_RE,
  NAME_RULE,
  NetworkSelect,
  parseLabels,
  RestartPolicySelect,
  SizeFields,
  type VmShape,
} from '../vm-fields';

const ENV_NAME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,127}$/;
const USER_RE = /^[A-Za-z0-9_.-]{1,32}(:[A-Za-z0-9_.-]{1,32})?$/;
const ARGV_HINT = `words split like a shell line ('…', "…", \\ escape; nothing is expanded), or a JSON array`;

interface EnvRow {
  id: number;
  key: string;
  value: string;
}
interface PortRow {
  id: number;
  host: string;
  container: string;
  protocol: 'tcp' | 'udp';
}

interface Form {
  image: string;
  name: string;
  command: string;
  args: string;
  working_dir: string;
  user: string;
  env: EnvRow[];
  ports: PortRow[];
  vcpu: string;
  mem_mib: string;
  restart_policy: VmShape['restart_policy'];
  /** '' = the default network, else a network id. */
  network: string;
  labels: string;
  username: string;
  password: string;
  start: boolean;
}

const INITIAL: Form = {
  image: '',
  name: '',
  command: '',
  args: '',
  working_dir: '',
  user: '',
  env: [],
  ports: [],
  vcpu: '1',
  mem_mib: '256',
  restart_policy: 'never',
  network: '',
  labels: '',
  username: '',
  password: '',
  start: true,
};

const PLACEHOLDER = {
  image: 'docker.io/library/alpine:3.20',
  name: 'web',
  command: `/bin/sh -c 'echo hello'`,
  args: '--port 8080',
  working_dir: '/app',
  user: '1000:1000',
  labels: LABELS_PLACEHOLDER,
  username: 'robot',
} satisfies Partial<Record<keyof Form, string>>;

type Errors = Partial<Record<Exclude<keyof Form, 'start'>, string>>;
let nextRow = 1;

const isPort = (s: string) => /^\d+$/.test(s) && +s >= 1 && +s <= 65_535;

/** The request body, or the errors of the fields that stop it. */
function toBody(f: Form, password: string): { body?: ContainerCreate; errors: Errors } {
  const e: Errors = { ...checkSize(f) };
  const image = f.image.trim();
  if (!image) e.image = 'an image reference, e.g. docker.io/library/alpine:3.20';
  else if (/\s/.test(image) || image.length > 512)
    e.image = 'a reference has no spaces (at most 512 characters)';
  if (!NAME_RE.test(f.name)) e.name = NAME_RULE;
  const command = parseArgv(f.command);
  if (command.error) e.command = command.error;
  const args = parseArgv(f.args);
  if (args.error) e.args = args.error;
  if (f.working_dir && !f.working_dir.startsWith('/')) e.working_dir = 'an absolute path';
  if (f.user && !USER_RE.test(f.user)) e.user = 'user, uid, user:group or uid:gid';

  const env: Record<string, string> = {};
  for (const r of f.env) {
    if (!r.key && !r.value) continue;
    if (!ENV_NAME_RE.test(r.key)) e.env ??= `"${r.key}": letters, digits and _, not starting with a digit`;
    else if (r.key in env) e.env ??= `${r.key} is set twice`;
    env[r.key] = r.value;
  }
  const ports: NonNullable<ContainerCreate['ports']> = [];
  const seen = new Set<string>();
  for (const r of f.ports) {
    if (!r.host && !r.container) continue;
    if (!isPort(r.host) || !isPort(r.container)) e.ports ??= 'ports are numbers from 1 to 65535';
    else if (seen.has(`${r.protocol}/${r.host}`))
      e.ports ??= `host port ${r.host}/${r.protocol} is used twice`;
    seen.add(`${r.protocol}/${r.host}`);
    ports.push({ host_port: Number(r.host), container_port: Number(r.container), protocol: r.protocol });
  }
  const labels = parseLabels(f.labels);
  if (labels.error) e.labels = labels.error;
  if (f.username && !password) e.password = 'the registry password for this user';
  if (password && !f.username) e.username = 'the registry user of this password';
  if (Object.keys(e).length) return { errors: e };

  const body: ContainerCreate = {
    name: f.name,
    image,
    ...(command.argv?.length ? { command: command.argv } : {}),
    ...(args.argv?.length ? { args: args.argv } : {}),
    env,
    ...(f.working_dir ? { working_dir: f.working_dir } : {}),
    ...(f.user ? { user: f.user } : {}),
    ports,
    vcpu: Number(f.vcpu),
    mem_mib: Number(f.mem_mib),
    restart_policy: f.restart_policy,
    ...(f.network ? { network_id: f.network } : {}),
    ...(f.username ? { registry_credentials: { username: f.username, password } } : {}),
    labels: labels.labels,
    start: f.start,
  };
  return { body, errors: {} };
}

const FIELD_OF: Record<string, keyof Errors> = {
  network_id: 'network',
  registry_credentials: 'username',
};
const CODE_FIELD: Record<string, keyof Errors> = {
  NAME_TAKEN: 'name',
  PORT_IN_USE: 'ports',
  IMAGE_NOT_FOUND: 'image',
  REGISTRY_IMAGE_NOT_FOUND: 'image',
  IMAGE_UNSUPPORTED: 'image',
  REGISTRY_UNREACHABLE: 'image',
  REGISTRY_ERROR: 'image',
  REGISTRY_AUTH_FAILED: 'username',
  CONTAINER_COMMAND_MISSING: 'command',
};

/** The API's refusal on the fields it names (a 400's fields, or the field a code is about). */
function apiErrors(err: unknown): Errors {
  const e: Errors = {};
  for (const [path, message] of Object.entries(fieldErrors(err, 'body'))) {
    const head = path.split('.')[0] ?? '';
    const key = FIELD_OF[head] ?? (head in INITIAL ? (head as keyof Errors) : undefined);
    if (key) e[key] ??= message;
  }
  const byCode = err instanceof ApiError ? CODE_FIELD[err.code] : undefined;
  if (byCode && err instanceof ApiError) e[byCode] ??= err.message;
  return e;
}

export function CreateContainerDialog({ open, onClose }: { open: boolean; onClose: () => void }) {
  return (
    <Modal open={open} title="Create container" onClose={onClose} wide>
      {open ? <CreateContainer onClose={onClose} /> : null}
    </Modal>
  );
}

function CreateContainer({ onClose }: { onClose: () => void }) {
  const qc = useQueryClient();
  const networks = useNetworks();
  const [f, setF] = useState<Form>(INITIAL);
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const [created, setCreated] = useState<{ id: string; opId: string; start: boolean } | null>(null);
  const set = <K extends keyof Form>(k: K, v: Form[K]) => setF((old) => ({ ...old, [k]: v }));
  const setEnv = (id: number, patch: Partial<EnvRow>) =>
    set(
      'env',
      f.env.map((r) => (r.id === id ? { ...r, ...patch } : r)),
    );
  const setPort = (id: number, patch: Partial<PortRow>) =>
    set(
      'ports',
      f.ports.map((r) => (r.id === id ? { ...r, ...patch } : r)),
    );

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    // The password leaves the form's state before anything can fail: it is never shown again.
    const password = f.password;
    setF((old) => ({ ...old, password: '' }));
    const { body, errors: errs } = toBody(f, password);
    setErrors(errs);
    setApiError(null);
    if (!body) return;
    setBusy(true);
    try {
      const out = await api<ContainerActionResponse>('POST', '/api/v1/containers', body);
      // Seeded so that container events keep it current from here on.
      qc.setQueryData(keys.container(out.container.id), out.container);
      setCreated({ id: out.container.id, opId: out.operation.id, start: body.start ?? true });
    } catch (err) {
      setApiError(err);
      setErrors(apiErrors(err));
    } finally {
      setBusy(false);
    }
  };

  if (created) return <CreateProgress {...created} onClose={onClose} />;

  const text = (k: keyof typeof PLACEHOLDER) => (id: string) => (
    <input
      id={id}
      name={k}
      autoComplete="off"
      spellCheck={false}
      value={f[k]}
      placeholder={PLACEHOLDER[k]}
      onChange={(e) => set(k, e.target.value)}
    />
  );

  return (
    <form className="stack" onSubmit={submit} noValidate data-testid="container-form">
      <div className="form-grid">
        <div className="full">
          <ValidatedField
            label="Image"
            error={errors.image}
            hint="an OCI reference; pulled and made into the container's root file system once per digest"
            render={text('image')}
          />
        </div>
        <ValidatedField label="Name" error={errors.name} render={text('name')} />
        <label className="check">
          <input
            type="checkbox"
            name="start"
            checked={f.start}
            onChange={(e) => set('start', e.target.checked)}
          />
          Start after creation
        </label>

        <h3 className="full form-section">Process</h3>
        <div className="full">
          <ValidatedField
            label="Command"
            error={errors.command}
            hint={`optional; replaces the image's entrypoint: ${ARGV_HINT}`}
            render={text('command')}
          />
        </div>
        <div className="full">
          <ValidatedField
            label="Arguments"
            error={errors.args}
            hint="optional; replaces the image's cmd, written the same way"
            render={text('args')}
          />
        </div>
        <ValidatedField
          label="Working directory"
          error={errors.working_dir}
          hint="optional; the image's by default"
          render={text('working_dir')}
        />
        <ValidatedField
          label="User"
          error={errors.user}
          hint="optional; user, uid, user:group or uid:gid"
          render={text('user')}
        />

        <h3 className="full form-section">Environment</h3>
        <div className={`full rows-editor${errors.env ? ' invalid' : ''}`} data-testid="env-rows">
          {f.env.map((r, i) => (
            <div className="row-edit row-env" key={r.id}>
              <input
                aria-label={`Variable ${i + 1} name`}
                placeholder="NAME"
                autoComplete="off"
                spellCheck={false}
                value={r.key}
                onChange={(e) => setEnv(r.id, { key: e.target.value })}
              />
              <input
                aria-label={`Variable ${i + 1} value`}
                placeholder="value"
                autoComplete="off"
                spellCheck={false}
                value={r.value}
                onChange={(e) => setEnv(r.id, { value: e.target.value })}
              />
              <button
                type="button"
                className="btn-icon"
                aria-label={`Remove variable ${i + 1}`}
                onClick={() =>
                  set(
                    'env',
                    f.env.filter((x) => x.id !== r.id),
                  )
                }
              >
                ✕
              </button>
            </div>
          ))}
          <div>
            <button
              type="button"
              className="btn btn-small"
              onClick={() => set('env', [...f.env, { id: nextRow++, key: '', value: '' }])}
            >
              Add variable
            </button>
          </div>
          {errors.env ? (
            <small className="error-text">{errors.env}</small>
          ) : (
            <small className="muted">added to the image's environment; the same name here wins</small>
          )}
        </div>

        <h3 className="full form-section">Ports</h3>
        <div className={`full rows-editor${errors.ports ? ' invalid' : ''}`} data-testid="port-rows">
          {f.ports.map((r, i) => (
            <div className="row-edit row-port" key={r.id}>
              <input
                aria-label={`Port ${i + 1} host port`}
                placeholder="host port"
                type="number"
                min={1}
                max={65_535}
                value={r.host}
                onChange={(e) => setPort(r.id, { host: e.target.value })}
              />
              <span aria-hidden="true">→</span>
              <input
                aria-label={`Port ${i + 1} container port`}
                placeholder="container port"
                type="number"
                min={1}
                max={65_535}
                value={r.container}
                onChange={(e) => setPort(r.id, { container: e.target.value })}
              />
              <select
                aria-label={`Port ${i + 1} protocol`}
                value={r.protocol}
                onChange={(e) => setPort(r.id, { protocol: e.target.value as PortRow['protocol'] })}
              >
                <option value="tcp">tcp</option>
                <option value="udp">udp</option>
              </select>
              <button
                type="button"
                className="btn-icon"
                aria-label={`Remove port ${i + 1}`}
                onClick={() =>
                  set(
                    'ports',
                    f.ports.filter((x) => x.id !== r.id),
                  )
                }
              >
                ✕
              </button>
            </div>
          ))}
          <div>
            <button
              type="button"
              className="btn btn-small"
              onClick={() =>
                set('ports', [...f.ports, { id: nextRow++, host: '', container: '', protocol: 'tcp' }])
              }
            >
              Add port
            </button>
          </div>
          {errors.ports ? (
            <small className="error-text">{errors.ports}</small>
          ) : (
            <small className="muted">a host port forwarded to the container's port</small>
          )}
        </div>

        <h3 className="full form-section">Resources</h3>
        <SizeFields f={f} set={(k, v) => set(k, v)} errors={errors} />
        <ValidatedField
          label="Restart policy"
          render={(id) => (
            <RestartPolicySelect
              id={id}
              value={f.restart_policy}
              onChange={(v) => set('restart_policy', v)}
            />
          )}
          hint="on failure: after a non-zero exit"
        />
        {networks.isSuccess ? (
          <ValidatedField
            label="Network"
            error={errors.network}
            render={(id) => (
              <NetworkSelect
                id={id}
                networks={networks.data}
                value={f.network}
                allowNone={false}
                onChange={(v) => set('network', v)}
              />
            )}
          />
        ) : null}
        <div className="full">
          <ValidatedField label="Labels" error={errors.labels} hint={LABELS_HINT} render={text('labels')} />
        </div>

        <h3 className="full form-section">Registry</h3>
        <ValidatedField
          label="Registry user"
          error={errors.username}
          hint="optional, for a private registry"
          render={text('username')}
        />
        <ValidatedField
          label="Registry password"
          error={errors.password}
          hint="used for this pull only; never stored"
          render={(id) => (
            <input
              id={id}
              name="password"
              type="password"
              autoComplete="new-password"
              value={f.password}
              onChange={(e) => set('password', e.target.value)}
            />
          )}
        />
      </div>
      <FormFoot
        error={apiError}
        refused="The manager refused the container"
        onCancel={onClose}
        busy={busy}
        submit="Create container"
        submitting="Creating…"
      />
    </form>
  );
}

/** Follows the create operation; opens the container's page once it runs (or has run). */
function CreateProgress({
  id,
  opId,
  start,
  onClose,
}: {
  id: string;
  opId: string;
  start: boolean;
  onClose: () => void;
}) {
  const qc = useQueryClient();
  const op = useOperation(opId);
  const ctr = useContainer(id);
  const o = op.data;
  const c = ctr.data;
  const finished = opDone(o);
  // The operation's poll backs up the event stream: once it ends, read the container again.
  useEffect(() => {
    if (finished) void qc.invalidateQueries({ queryKey: keys.container(id) });
  }, [finished, qc, id]);
  const failed = c?.status === 'failed' || o?.status === 'failed' || o?.status === 'cancelled';
  const arrived =
    !failed &&
    !!c &&
    (c.status === 'running' ||
      c.status === 'paused' ||
      c.status === 'exited' ||
      (!start && o?.status === 'succeeded'));
  useEffect(() => {
    if (!arrived) return;
    onClose();
    navigate(`/containers/${id}`);
  }, [arrived, id, onClose]);

  if (c === null)
    return (
      <div className="alert alert-err" role="alert">
        The container was deleted.
      </div>
    );
  return (
    <div className="stack" data-testid="container-progress">
      <div>
        {c ? <ContainerStatusBadge c={c} /> : null} <strong>{c?.name}</strong>{' '}
        <code className="small muted">{c?.image}</code>
      </div>
      {!failed ? (
        o ? (
          <ProgressBar
            label="Create container"
            percent={o.status === 'succeeded' ? 100 : o.progress.percent}
            message={o.progress.message || (start ? 'Pulling the image and starting…' : 'Pulling the image…')}
          />
        ) : (
          <Loading what="progress" />
        )
      ) : (
        <div className="alert alert-err" role="alert">
          <strong>The container failed: </strong>
          {o?.error?.message ?? c?.last_error ?? 'no reason given'}
        </div>
      )}
      <ErrorBox error={op.error ?? ctr.error} />
      {failed ? null : (
        <p className="small muted">
          You can close this dialog: the container goes on, and the list shows its status.
        </p>
      )}
      <div className="modal-foot wizard-foot">
        <button type="button" className="btn" onClick={onClose}>
          Close
        </button>
        <Link to={`/containers/${id}`} className="btn btn-primary" onClick={onClose}>
          Open {c?.name ?? 'container'}
        </Link>
      </div>
    </div>
  );
}
