import { hostFigures, totalFigures } from '../capacity';
import { VM_STATES } from '../format';
import { useHosts, useRecentOps, useVms } from '../queries';
import { Link } from '../router';
import type { VmState } from '../types';
import { Badge, CapacityBars, Empty, ErrorBox, Loading, RelTime, StateBadge, stateTone } from '../ui';
import { OperationsTable } from './Operations';

const HOST_TONE = { ready: 'ok', unreachable: 'warn', lost: 'err' } as const;

export function DashboardPage() {
  const vms = useVms();
  const hosts = useHosts();
  const ops = useRecentOps();

  const counts = new Map<VmState, number>();
  for (const vm of vms.data ?? []) counts.set(vm.state, (counts.get(vm.state) ?? 0) + 1);
  // What the scheduler can place on: ready hosts that are not cordoned.
  const open = (hosts.data ?? []).filter((h) => h.status === 'ready' && h.schedulable);
  const attention = (vms.data ?? []).filter((v) => v.state === 'failed' || v.state === 'unknown');

  return (
    <div className="page">
      <h1>Dashboard</h1>
      <div className="grid-cards">
        <section className="card">
          <h2>
            Virtual machines <span className="count">{vms.data?.length ?? '…'}</span>
          </h2>
          <ErrorBox error={vms.error} />
          {vms.data ? (
            <div className="state-tiles" data-testid="vm-counts">
              {VM_STATES.filter((s) => counts.get(s) || ['running', 'stopped'].includes(s)).map((s) => (
                <Link key={s} to={`/vms?state=${s}`} className={`state-tile tile-${stateTone(s)}`}>
                  <strong>{counts.get(s) ?? 0}</strong>
                  <span>{s}</span>
                </Link>
              ))}
            </div>
          ) : (
            <Loading />
          )}
          {attention.length ? (
            <ul className="attention">
              {attention.slice(0, 5).map((v) => (
                <li key={v.id}>
                  <StateBadge state={v.state} /> <Link to={`/vms/${v.id}`}>{v.name}</Link>
                  {v.last_error ? <span className="muted"> — {v.last_error}</span> : null}
                </li>
              ))}
            </ul>
          ) : null}
        </section>

        <section className="card">
          <h2>
            Capacity{' '}
            <span className="muted small">
              ({open.length} schedulable {open.length === 1 ? 'host' : 'hosts'})
            </span>
          </h2>
          <ErrorBox error={hosts.error} />
          {hosts.data ? <CapacityBars figures={totalFigures(open)} /> : <Loading />}
        </section>
      </div>

      <section className="card">
        <h2>
          Hosts <span className="count">{hosts.data?.length ?? '…'}</span>
        </h2>
        {hosts.data && hosts.data.length === 0 ? (
          <Empty>
            No hosts have joined yet. <Link to="/hosts">Create a join token</Link> and run{' '}
            <code>nqvm agent</code> on a host.
          </Empty>
        ) : null}
        <div className="host-cards">
          {(hosts.data ?? []).map((h) => (
            <div key={h.id} className="host-card" data-testid="host-capacity">
              <div className="host-card-head">
                <strong>{h.name}</strong>
                <Badge tone={HOST_TONE[h.status]}>{h.status}</Badge>
                {!h.schedulable ? <Badge tone="warn">cordoned</Badge> : null}
                <span className="muted small">
                  heartbeat <RelTime iso={h.last_heartbeat_at} />
                </span>
              </div>
              <CapacityBars figures={hostFigures(h)} />
            </div>
          ))}
        </div>
      </section>

      <section className="card">
        <h2>Recent operations</h2>
        <ErrorBox error={ops.error} />
        {ops.data ? (
          <OperationsTable ops={ops.data.slice(-10).reverse()} showTarget vms={vms.data} />
        ) : (
          <Loading />
        )}
      </section>
    </div>
  );
}
