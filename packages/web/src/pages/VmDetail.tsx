import { lazy, Suspense, useState } from 'react';
import { ActionsBar } from '../actions-bar';
import { ApiError } from '../api';
import { formatMib, formatTime, timeAgo, useNow } from '../format';
import { useCan, useHosts, useSnapshots, useTargetOps, useVm } from '../queries';
import { Link } from '../router';
import type { Vm } from '../types';
import { Empty, ErrorBox, GuestBadge, Loading, StateBadge } from '../ui';
import { VM_ACTIONS as ACTIONS, runVmAction as runAction } from '../vm-actions';
import { OperationsTable } from './Operations';
import { SnapshotsTable, snapshottable, TakeSnapshotDialog } from './Snapshots';
import { SaveAsTemplateDialog } from './Templates';

// xterm.js is the largest dependency: load it only when the console tab opens.
const VmConsole = lazy(() => import('./VmConsole'));

export function VmDetailPage({ id, tab }: { id: string; tab: string }) {
  const vm = useVm(id);
  const hosts = useHosts();
  const canOperate = useCan('operator');
  const now = useNow();

  if (vm.isPending) return <Loading what="VM" />;
  if (vm.data === null || (vm.error instanceof ApiError && vm.error.status === 404))
    return (
      <div className="page">
        <h1>VM not found</h1>
        <Empty>
          This VM does not exist (any more). <Link to="/vms">Back to the list</Link>.
        </Empty>
      </div>
    );
  if (!vm.data) return <ErrorBox error={vm.error} />;
  const v = vm.data;
  const host = v.host_id ? hosts.data?.find((h) => h.id === v.host_id) : undefined;
  const tabs = [
    ['summary', 'Summary', `/vms/${v.id}`],
    ['console', 'Console', `/vms/${v.id}/console`],
    ['snapshots', 'Snapshots', `/vms/${v.id}/snapshots`],
    ['operations', 'Operations', `/vms/${v.id}/operations`],
  ] as const;

  return (
    <div className="page">
      <nav className="crumbs small">
        <Link to="/vms">Virtual machines</Link> / {v.name}
      </nav>
      <div className="page-head">
        <h1>
          {v.name} <StateBadge state={v.state} /> <GuestBadge vm={v} />
          {v.desired_state !== v.state && !['running', 'stopped', 'paused'].includes(v.state) ? (
            <span className="small muted"> → {v.desired_state}</span>
          ) : null}
        </h1>
        {canOperate ? <VmActions vm={v} /> : null}
      </div>
      {v.last_error ? (
        <div
          className={`alert ${v.state === 'failed' || v.state === 'unknown' ? 'alert-err' : 'alert-warn'}`}
        >
          {v.last_error}
        </div>
      ) : null}
      <div className="tabs" role="tablist">
        {tabs.map(([key, label, to]) => (
          <Link
            key={key}
            to={to}
            role="tab"
            aria-selected={tab === key}
            className={tab === key ? 'active' : undefined}
          >
            {label}
          </Link>
        ))}
      </div>

      {tab === 'summary' ? (
        <div className="grid-cards">
          <section className="card">
            <h2>Overview</h2>
            <dl className="kv">
              <dt>State</dt>
              <dd>
                {v.state} (desired: {v.desired_state})
              </dd>
              <dt>Host</dt>
              <dd>{host ? host.name : v.host_id ? v.host_id : 'not placed yet'}</dd>
              <dt>VMM</dt>
              <dd>{v.vmm ?? 'auto'}</dd>
              <dt>vCPUs</dt>
              <dd>{v.vcpu}</dd>
              <dt>Memory</dt>
              <dd>{formatMib(v.mem_mib)}</dd>
              <dt>Disk</dt>
              <dd>{v.disk_size_mib ? formatMib(v.disk_size_mib) : 'image size'}</dd>
              <dt>Restart policy</dt>
              <dd>{v.restart_policy}</dd>
              <dt>Created</dt>
              <dd title={formatTime(v.created_at)}>{timeAgo(v.created_at, now)}</dd>
              <dt>Updated</dt>
              <dd title={formatTime(v.updated_at)}>{timeAgo(v.updated_at, now)}</dd>
              <dt>ID</dt>
              <dd>
                <code className="small">{v.id}</code>
              </dd>
            </dl>
          </section>
          <section className="card">
            <h2>Boot &amp; guest</h2>
            <dl className="kv">
              <dt>Kernel</dt>
              <dd>{v.kernel_image_id ?? 'default'}</dd>
              <dt>Root filesystem</dt>
              <dd>{v.rootfs_image_id ?? 'default'}</dd>
              {v.initrd_image_id ? (
                <>
                  <dt>Initrd</dt>
                  <dd>{v.initrd_image_id}</dd>
                </>
              ) : null}
              <dt>Boot args</dt>
              <dd>{v.boot_args ? <code className="small">{v.boot_args}</code> : 'default'}</dd>
              <dt>Guest config</dt>
              <dd>{v.guest_config.mode}</dd>
              <dt>User</dt>
              <dd>
                {v.guest_config.username ?? '—'}
                {v.guest_config.has_password ? ' (password set)' : ''}
              </dd>
              <dt>SSH keys</dt>
              <dd>{v.guest_config.ssh_authorized_keys.length}</dd>
              <dt>Hostname</dt>
              <dd>{v.guest_config.hostname ?? '—'}</dd>
              <dt>Networks</dt>
              <dd>
                {v.networks.length
                  ? v.networks.map((n) => `${n.ip ?? 'dhcp'}${n.mac ? ` (${n.mac})` : ''}`).join(', ')
                  : 'none'}
              </dd>
              <dt>Labels</dt>
              <dd>
                {Object.keys(v.labels).length
                  ? Object.entries(v.labels).map(([k, val]) => (
                      <span key={k} className="chip">
                        {k}={val}
                      </span>
                    ))
                  : '—'}
              </dd>
            </dl>
          </section>
        </div>
      ) : null}

      {tab === 'console' ? (
        <Suspense fallback={<Loading what="console" />}>
          <VmConsole vm={v} />
        </Suspense>
      ) : null}

      {tab === 'snapshots' ? <VmSnapshots vm={v} /> : null}

      {tab === 'operations' ? <VmOperations id={v.id} /> : null}
    </div>
  );
}

function VmOperations({ id }: { id: string }) {
  const ops = useTargetOps(id);
  if (ops.isPending) return <Loading what="operations" />;
  if (ops.error) return <ErrorBox error={ops.error} />;
  return (
    <section className="card">
      <OperationsTable ops={[...ops.data].reverse()} />
    </section>
  );
}

function VmSnapshots({ vm }: { vm: Vm }) {
  const snapshots = useSnapshots(vm.id);
  if (snapshots.isPending) return <Loading what="snapshots" />;
  if (snapshots.error) return <ErrorBox error={snapshots.error} />;
  return (
    <section className="card">
      {snapshots.data.length ? (
        <SnapshotsTable snapshots={snapshots.data} />
      ) : (
        <Empty>
          No snapshots of {vm.name} yet.
          {snapshottable(vm) ? '' : ' A snapshot needs the VM running or paused.'}
        </Empty>
      )}
    </section>
  );
}

function VmActions({ vm }: { vm: Vm }) {
  const [dialog, setDialog] = useState<'snapshot' | 'template' | null>(null);
  return (
    <ActionsBar
      target={vm}
      state={vm.state}
      actions={ACTIONS}
      run={runAction}
      listPath="/vms"
      testId="vm-actions"
    >
      <button
        type="button"
        className="btn"
        disabled={!snapshottable(vm)}
        title={snapshottable(vm) ? undefined : 'the VM must be running or paused'}
        onClick={() => setDialog('snapshot')}
      >
        Take snapshot
      </button>
      <button
        type="button"
        className="btn"
        disabled={vm.state === 'deleting'}
        onClick={() => setDialog('template')}
      >
        Save as template
      </button>
      <TakeSnapshotDialog vm={vm} open={dialog === 'snapshot'} onClose={() => setDialog(null)} />
      <SaveAsTemplateDialog vm={vm} open={dialog === 'template'} onClose={() => setDialog(null)} />
    </ActionsBar>
  );
}
