/**
 * Snapshots: the live list (all of them, or one VM's), taking one while following its
 * operation, and making a VM of one, restoring its VM to it, or deleting it.
 */
import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, useEffect, useState } from 'react';
import { api } from '../api';
import { formatBytes, formatMib, formatTime, timeAgo, useNow } from '../format';
import { followOperation } from '../operation-toast';
import { keys, opDone, useCan, useHosts, useOperation, useSnapshot, useSnapshots } from '../queries';
import { Link, navigate, useLocation, withSearch } from '../router';
import type {
  Snapshot,
  SnapshotActionResponse,
  SnapshotCreate,
  SnapshotInstantiateResponse,
  SnapshotStatus,
  SnapshotType,
  Vm,
  VmActionResponse,
} from '../types';
import {
  Badge,
  ConfirmDialog,
  DescriptionField,
  Empty,
  ErrorBox,
  FormFoot,
  Modal,
  PageHead,
  ProgressBar,
  QueryStatus,
  type Tone,
  ValidatedField,
} from '../ui';
import { LABELS_HINT, LABELS_PLACEHOLDER, NAME_RE, NAME_RULE, parseLabels } from '../vm-fields';

const STATUSES: SnapshotStatus[] = ['creating', 'ready', 'failed', 'deleting'];
const STATUS_TONE: Record<SnapshotStatus, Tone> = {
  creating: 'busy',
  ready: 'ok',
  failed: 'err',
  deleting: 'busy',
};

function SnapshotStatusBadge({ status }: { status: SnapshotStatus }) {
  return (
    <Badge tone={STATUS_TONE[status]}>
      <span className="dot" aria-hidden="true" />
      {status}
    </Badge>
  );
}

export function SnapshotsPage() {
  const snapshots = useSnapshots('all');
  const { pathname, search } = useLocation();
  const status = search.get('status') ?? '';
  const rows = (snapshots.data ?? []).filter((s) => !status || s.status === status);

  return (
    <div className="page">
      <PageHead title="Snapshots" count={snapshots.data?.length} />
      <div className="toolbar">
        <select
          aria-label="Filter by status"
          value={status}
          onChange={(e) =>
            navigate(withSearch(pathname, search, { status: e.target.value }), { replace: true })
          }
        >
          <option value="">All statuses</option>
          {STATUSES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </div>
      <QueryStatus query={snapshots} what="snapshots" />
      {snapshots.data && rows.length === 0 ? (
        <Empty>
          {snapshots.data.length === 0
            ? 'No snapshots yet. Take one from a running VM\'s page ("Take snapshot").'
            : 'No snapshot has this status.'}
        </Empty>
      ) : null}
      {rows.length ? <SnapshotsTable snapshots={rows} showVm /> : null}
    </div>
  );
}

/** Newest first, with the actions an operator may take on each. */
export function SnapshotsTable({ snapshots, showVm }: { snapshots: Snapshot[]; showVm?: boolean }) {
  const hosts = useHosts();
  const canOperate = useCan('operator');
  const now = useNow();
  const [using, setUsing] = useState<Snapshot | null>(null);
  const [restoring, setRestoring] = useState<Snapshot | null>(null);
  const [deleting, setDeleting] = useState<Snapshot | null>(null);
  const rows = snapshots.slice().sort((a, b) => b.created_at.localeCompare(a.created_at));
  const hostName = (id: string | null) =>
    id ? (hosts.data?.find((h) => h.id === id)?.name ?? id.slice(0, 8)) : '—';

  const restore = async (s: Snapshot) => {
    const out = await api<VmActionResponse>('POST', `/api/v1/vms/${s.vm_id}/restore`, {
      snapshot_id: s.id,
    });
    void followOperation(out.operation, {
      running: `Restoring ${s.vm_name} to ${s.name}`,
      succeeded: `${s.vm_name} was restored to ${s.name} and runs`,
      failed: `Restore ${s.vm_name} to ${s.name} failed`,
    });
  };

  return (
    <>
      <div className="table-wrap">
        <table className="table" data-testid="snapshots-table">
          <thead>
            <tr>
              <th>Name</th>
              <th>Status</th>
              <th>Type</th>
              {showVm ? <th>Source VM</th> : null}
              <th className="hide-sm">Host</th>
              <th className="hide-md">VMM</th>
              <th className="hide-sm num">Memory</th>
              <th className="num">Size</th>
              <th className="hide-md">Created</th>
              {canOperate ? <th aria-label="Actions" /> : null}
            </tr>
          </thead>
          <tbody>
            {rows.map((s) => (
              <tr key={s.id} data-snapshot={s.name}>
                <td>
                  <span className="strong">{s.name}</span>
                  {s.description ? (
                    <div className="small muted ellipsis narrow" title={s.description}>
                      {s.description}
                    </div>
                  ) : null}
                  {s.error ? (
                    <div className="small error-text ellipsis narrow" title={s.error}>
                      {s.error}
                    </div>
                  ) : null}
                </td>
                <td>
                  <SnapshotStatusBadge status={s.status} />
                </td>
                <td title={s.parent_id ? `builds on ${s.parent_id}` : undefined}>{s.snapshot_type}</td>
                {showVm ? (
                  <td>
                    {s.vm_id ? (
                      <Link to={`/vms/${s.vm_id}`}>{s.vm_name}</Link>
                    ) : (
                      <span className="muted" title="the VM was deleted; the snapshot stays usable">
                        {s.vm_name} (deleted)
                      </span>
                    )}
                  </td>
                ) : null}
                <td className="hide-sm">{hostName(s.host_id)}</td>
                <td className="hide-md">{s.vmm}</td>
                <td className="hide-sm num nowrap">{formatMib(s.mem_mib)}</td>
                <td className="num nowrap">{formatBytes(s.size_bytes)}</td>
                <td className="hide-md nowrap" title={formatTime(s.created_at)}>
                  {timeAgo(s.created_at, now)}
                </td>
                {canOperate ? (
                  <td className="actions">
                    {s.status === 'ready' ? (
                      <button type="button" className="btn btn-small" onClick={() => setUsing(s)}>
                        Instantiate
                      </button>
                    ) : null}
                    {s.status === 'ready' && s.vm_id ? (
                      <button type="button" className="btn btn-small" onClick={() => setRestoring(s)}>
                        Restore
                      </button>
                    ) : null}
                    {s.status !== 'deleting' ? (
                      <button
                        type="button"
                        className="btn btn-small btn-danger-outline"
                        onClick={() => setDeleting(s)}
                      >
                        Delete
                      </button>
                    ) : null}
                  </td>
                ) : null}
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {canOperate ? (
        <>
          <Modal
            open={using !== null}
            title={`Create a VM from ${using?.name ?? ''}`}
            onClose={() => setUsing(null)}
          >
            {using ? <InstantiateSnapshot snapshot={using} onClose={() => setUsing(null)} /> : null}
          </Modal>
          <ConfirmDialog
            open={restoring !== null}
            title={`Restore ${restoring?.vm_name ?? ''} to ${restoring?.name ?? ''}`}
            message={
              <>
                <p>
                  {restoring?.vm_name} returns to the state of this snapshot, taken{' '}
                  {formatTime(restoring?.created_at)}; <strong>what it did since is lost</strong>.
                </p>
                <p className="muted">Its VMM is stopped and it resumes running from the snapshot.</p>
              </>
            }
            confirmLabel="Restore"
            onConfirm={() => (restoring ? restore(restoring) : Promise.resolve())}
            onClose={() => setRestoring(null)}
          />
          <ConfirmDialog
            open={deleting !== null}
            title={`Delete snapshot ${deleting?.name ?? ''}`}
            message="Its files are removed from the host. The manager refuses while a VM or a Diff snapshot depends on it."
            confirmLabel="Delete"
            onConfirm={() => api('DELETE', `/api/v1/snapshots/${deleting?.id}`)}
            onClose={() => setDeleting(null)}
          />
        </>
      ) : null}
    </>
  );
}

function InstantiateSnapshot({ snapshot, onClose }: { snapshot: Snapshot; onClose: () => void }) {
  const hosts = useHosts();
  const [name, setName] = useState('');
  const [labels, setLabels] = useState('');
  const [errors, setErrors] = useState<{ name?: string; labels?: string }>({});
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const [done, setDone] = useState<SnapshotInstantiateResponse | null>(null);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const l = parseLabels(labels);
    const errs = {
      ...(NAME_RE.test(name) ? {} : { name: NAME_RULE }),
      ...(l.error ? { labels: l.error } : {}),
    };
    setErrors(errs);
    setApiError(null);
    if (Object.keys(errs).length) return;
    setBusy(true);
    try {
      const out = await api<SnapshotInstantiateResponse>(
        'POST',
        `/api/v1/snapshots/${snapshot.id}/instantiate`,
        { name, labels: l.labels },
      );
      setDone(out);
      void followOperation(out.operation, {
        running: `Creating VM ${out.vm.name} from ${snapshot.name}`,
        succeeded: `VM ${out.vm.name} (from ${snapshot.name}) is running`,
        failed: `Create VM ${out.vm.name} from ${snapshot.name} failed`,
      });
    } catch (err) {
      setApiError(err);
    } finally {
      setBusy(false);
    }
  };

  if (done) {
    const host = hosts.data?.find((h) => h.id === done.placement.host_id);
    return (
      <div className="stack" data-testid="snapshot-instantiated">
        <div className="alert alert-ok" role="status">
          VM <strong>{done.vm.name}</strong> is being created from {snapshot.name} on{' '}
          {host?.name ?? done.placement.host_id}.
        </div>
        <div className="alert alert-info" data-testid="placement">
          <strong>Placement: </strong>
          {done.placement.reason}
        </div>
        {done.warnings.length ? (
          <div className="alert alert-warn" data-testid="warnings">
            <strong>Warning{done.warnings.length === 1 ? '' : 's'}:</strong>
            <ul className="plain-list">
              {done.warnings.map((w) => (
                <li key={w}>{w}</li>
              ))}
            </ul>
          </div>
        ) : null}
        <div className="modal-foot wizard-foot">
          <button type="button" className="btn" onClick={onClose}>
            Close
          </button>
          <Link to={`/vms/${done.vm.id}`} className="btn btn-primary" onClick={onClose}>
            Open {done.vm.name}
          </Link>
        </div>
      </div>
    );
  }

  return (
    <form className="stack" onSubmit={submit} noValidate data-testid="instantiate-snapshot">
      <p className="muted">
        A clone of {snapshot.vm_name} as it was at {formatTime(snapshot.created_at)}: {snapshot.vcpu} vCPU,{' '}
        {formatMib(snapshot.mem_mib)}, {snapshot.vmm}, with its own copy of the disk and its own network
        identity. It runs on the host that keeps the snapshot.
      </p>
      <ValidatedField
        label="VM name"
        error={errors.name}
        render={(id) => (
          <input
            id={id}
            name="name"
            autoComplete="off"
            placeholder={`${snapshot.vm_name}-clone`}
            value={name}
            onChange={(e) => setName(e.target.value)}
          />
        )}
      />
      <ValidatedField
        label="Labels"
        error={errors.labels}
        hint={LABELS_HINT}
        render={(id) => (
          <input
            id={id}
            name="labels"
            autoComplete="off"
            placeholder={LABELS_PLACEHOLDER}
            value={labels}
            onChange={(e) => setLabels(e.target.value)}
          />
        )}
      />
      <FormFoot
        error={apiError}
        refused="The manager refused the VM"
        onCancel={onClose}
        busy={busy}
        submit="Create VM"
        submitting="Creating…"
      />
    </form>
  );
}

/** Whether a VM in this state can be snapshotted (it has a VMM whose memory can be frozen). */
export const snapshottable = (vm: Vm) => vm.state === 'running' || vm.state === 'paused';

export function TakeSnapshotDialog({ vm, open, onClose }: { vm: Vm; open: boolean; onClose: () => void }) {
  return (
    <Modal open={open} title={`Take a snapshot of ${vm.name}`} onClose={onClose}>
      {open ? <TakeSnapshot vm={vm} onClose={onClose} /> : null}
    </Modal>
  );
}

/** "web-1-20250101-1230": the VM's name and the local time, within the 63 characters a name has. */
function defaultSnapshotName(vmName: string): string {
  const d = new Date();
  const p = (n: number) => String(n).padStart(2, '0');
  const stamp = `${d.getFullYear()}${p(d.getMonth() + 1)}${p(d.getDate())}-${p(d.getHours())}${p(d.getMinutes())}`;
  return `${vmName.slice(0, 63 - stamp.length - 1)}-${stamp}`;
}

function TakeSnapshot({ vm, onClose }: { vm: Vm; onClose: () => void }) {
  const qc = useQueryClient();
  const [name, setName] = useState(() => defaultSnapshotName(vm.name));
  const [type, setType] = useState<SnapshotType>('Full');
  const [description, setDescription] = useState('');
  const [nameError, setNameError] = useState<string | undefined>();
  const [busy, setBusy] = useState(false);
  const [apiError, setApiError] = useState<unknown>(null);
  const [taken, setTaken] = useState<{ snapshotId: string; opId: string } | null>(null);
  const diffOk = vm.vmm === 'firecracker';

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!NAME_RE.test(name)) return setNameError(NAME_RULE);
    setNameError(undefined);
    setApiError(null);
    setBusy(true);
    const body: SnapshotCreate = {
      name,
      snapshot_type: type,
      ...(description.trim() ? { description: description.trim() } : {}),
    };
    try {
      const out = await api<SnapshotActionResponse>('POST', `/api/v1/vms/${vm.id}/snapshots`, body);
      // Seeded so that snapshot events keep it current from here on.
      qc.setQueryData(keys.snapshot(out.snapshot.id), out.snapshot);
      setTaken({ snapshotId: out.snapshot.id, opId: out.operation.id });
    } catch (err) {
      setApiError(err);
    } finally {
      setBusy(false);
    }
  };

  if (taken) return <SnapshotProgress {...taken} onClose={onClose} />;

  return (
    <form className="stack" onSubmit={submit} noValidate data-testid="take-snapshot">
      <p className="muted">
        The VM is paused for a moment while its memory, device state and disks are saved, then it runs on.
      </p>
      <ValidatedField
        label="Snapshot name"
        error={nameError}
        render={(id) => (
          <input
            id={id}
            name="name"
            autoComplete="off"
            value={name}
            onChange={(e) => setName(e.target.value)}
          />
        )}
      />
      <fieldset className="field choice">
        <legend>Type</legend>
        <label className="check">
          <input
            type="radio"
            name="snapshot_type"
            value="Full"
            checked={type === 'Full'}
            onChange={() => setType('Full')}
          />
          <span>
            Full <span className="muted small">all of the memory</span>
          </span>
        </label>
        <label className="check">
          <input
            type="radio"
            name="snapshot_type"
            value="Diff"
            checked={type === 'Diff'}
            disabled={!diffOk}
            onChange={() => setType('Diff')}
          />
          <span>
            Diff{' '}
            <span className="muted small">only the memory written since this run's previous snapshot</span>
          </span>
        </label>
        {diffOk ? null : (
          <small className="muted" data-testid="diff-why">
            Diff snapshots need Firecracker; {vm.name} runs under {vm.vmm ?? 'a VMM not known yet'}.
          </small>
        )}
      </fieldset>
      <DescriptionField value={description} onChange={setDescription} />
      <FormFoot
        error={apiError}
        refused="The manager refused the snapshot"
        onCancel={onClose}
        busy={busy}
        submit="Take snapshot"
        submitting="Starting…"
      />
    </form>
  );
}

/** Follows a snapshot being taken: its operation's progress, then ready or the error. */
function SnapshotProgress({
  snapshotId,
  opId,
  onClose,
}: {
  snapshotId: string;
  opId: string;
  onClose: () => void;
}) {
  const qc = useQueryClient();
  const op = useOperation(opId);
  const snap = useSnapshot(snapshotId);
  const o = op.data;
  const s = snap.data;
  const finished = opDone(o);
  // The operation's poll backs up the event stream: once it ends, read the snapshot again.
  useEffect(() => {
    if (finished) void qc.invalidateQueries({ queryKey: keys.snapshot(snapshotId) });
  }, [finished, qc, snapshotId]);
  const failed = s?.status === 'failed' || o?.status === 'failed' || o?.status === 'cancelled';
  const ready = !failed && (s?.status === 'ready' || o?.status === 'succeeded');

  return (
    <div className="stack" data-testid="snapshot-progress">
      <div>
        {s ? <SnapshotStatusBadge status={ready ? 'ready' : failed ? 'failed' : s.status} /> : null}{' '}
        <strong>{s?.name}</strong>
      </div>
      {!ready && !failed ? (
        <ProgressBar
          label="Snapshot"
          percent={o?.progress.percent ?? 0}
          message={o?.progress.message || 'Taking the snapshot…'}
        />
      ) : null}
      {ready ? (
        <div className="alert alert-ok" role="status">
          {s?.name} is ready{s?.size_bytes ? ` (${formatBytes(s.size_bytes)} on the host)` : ''}.
        </div>
      ) : null}
      {failed ? (
        <div className="alert alert-err" role="alert">
          <strong>The snapshot failed: </strong>
          {s?.error ?? o?.error?.message ?? 'no reason given'}
        </div>
      ) : null}
      <ErrorBox error={op.error ?? snap.error} />
      <p className="small muted">You can close this dialog: the snapshot goes on, and the list shows it.</p>
      <div className="modal-foot wizard-foot">
        <button type="button" className="btn btn-primary" onClick={onClose}>
          {ready || failed ? 'Done' : 'Close'}
        </button>
      </div>
    </div>
  );
}
