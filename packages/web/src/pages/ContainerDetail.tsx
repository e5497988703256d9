/** One container: overview, actions, and the Logs, Exec (operators), Stats and Operations tabs. */
import { lazy, Suspense, useEffect, useRef, useState } from 'react';
import { ActionsBar, type ActionDef as Def } from '../actions-bar';
import { ApiError, api } from '../api';
import { formatArgv } from '../argv';
import { ContainerStatusBadge, formatPort } from '../container-status';
import { formatBytes, formatDuration, formatMib, formatTime, timeAgo, useNow } from '../format';
import { useCan, useContainer, useContainerStats, useHosts, useNetworks, useTargetOps } from '../queries';
import { Link } from '../router';
import type { Container, ContainerActionResponse, ContainerStats, ContainerStatus } from '../types';
import { Bar, Empty, ErrorBox, Loading } from '../ui';
import { ContainerLogs } from './ContainerLogs';
import { OperationsTable } from './Operations';

// xterm.js is the largest dependency: load it only when the exec tab opens.
const ContainerExec = lazy(() => import('./ContainerExec'));

type ActionKey = 'start' | 'stop' | 'restart' | 'pause' | 'resume' | 'delete';

/** Statuses in which the container's VM runs (a delete then needs force). */
const LIVE: ContainerStatus[] = ['starting', 'running', 'paused'];

type ActionDef = Def<ActionKey, ContainerStatus, Container>;

const ACTIONS: ActionDef[] = [
  { key: 'start', label: 'Start', allowed: (s) => s === 'created' || s === 'exited' || s === 'failed' },
  {
    key: 'stop',
    label: 'Stop',
    allowed: (s) => LIVE.includes(s),
    confirm: (c) =>
      `Stop ${c.name}? Its process gets SIGTERM, then SIGKILL after 10 s; its VM stops with it.`,
  },
  {
    key: 'restart',
    label: 'Restart',
    allowed: (s) => s === 'running' || s === 'exited' || s === 'failed',
    confirm: (c) =>
      c.status === 'running'
        ? `Restart ${c.name}? Its VM reboots and the process starts anew.`
        : `Start ${c.name} again?`,
  },
  { key: 'pause', label: 'Pause', allowed: (s) => s === 'running' },
  { key: 'resume', label: 'Resume', allowed: (s) => s === 'paused' },
  {
    key: 'delete',
    label: 'Delete',
    allowed: () => true,
    confirm: (c) =>
      LIVE.includes(c.status)
        ? `${c.name} is ${c.status}: deleting stops it by force and removes its VM and disk. This cannot be undone.`
        : `Delete ${c.name}, its VM and its disk? This cannot be undone.`,
    danger: true,
  },
];

function runAction(c: Container, key: ActionKey): Promise<ContainerActionResponse | undefined> {
  const base = `/api/v1/containers/${c.id}`;
  if (key === 'delete') return api('DELETE', LIVE.includes(c.status) ? `${base}?force=true` : base);
  return api('POST', `${base}/${key}`, key === 'stop' ? {} : undefined);
}

const TABS = ['overview', 'logs', 'exec', 'stats', 'operations'] as const;
const TAB_LABEL: Record<(typeof TABS)[number], string> = {
  overview: 'Overview',
  logs: 'Logs',
  exec: 'Exec',
  stats: 'Stats',
  operations: 'Operations',
};

export function ContainerDetailPage({ id, tab: asked }: { id: string; tab: string }) {
  const ctr = useContainer(id);
  const canOperate = useCan('operator');

  if (ctr.isPending) return <Loading what="container" />;
  if (ctr.data === null || (ctr.error instanceof ApiError && ctr.error.status === 404))
    return (
      <div className="page">
        <h1>Container not found</h1>
        <Empty>
          This container does not exist (any more). <Link to="/containers">Back to the list</Link>.
        </Empty>
      </div>
    );
  if (!ctr.data) return <ErrorBox error={ctr.error} />;
  const c = ctr.data;
  // Exec is for operators and admins: a viewer asking for it sees the overview.
  const tabs = TABS.filter((t) => t !== 'exec' || canOperate);
  const tab = tabs.find((t) => t === asked) ?? 'overview';

  return (
    <div className="page">
      <nav className="crumbs small">
        <Link to="/containers">Containers</Link> / {c.name}
      </nav>
      <div className="page-head">
        <h1>
          {c.name} <ContainerStatusBadge c={c} />
        </h1>
        {canOperate ? <ContainerActions c={c} /> : null}
      </div>
      {c.last_error ? (
        <div className={`alert ${c.status === 'failed' ? 'alert-err' : 'alert-warn'}`}>{c.last_error}</div>
      ) : null}
      <div className="tabs" role="tablist">
        {tabs.map((t) => (
          <Link
            key={t}
            to={t === 'overview' ? `/containers/${c.id}` : `/containers/${c.id}/${t}`}
            role="tab"
            aria-selected={tab === t}
            className={tab === t ? 'active' : undefined}
          >
            {TAB_LABEL[t]}
          </Link>
        ))}
      </div>

      {tab === 'overview' ? <Overview c={c} /> : null}
      {tab === 'logs' ? <ContainerLogs c={c} /> : null}
      {tab === 'exec' ? (
        <Suspense fallback={<Loading what="terminal" />}>
          <ContainerExec c={c} />
        </Suspense>
      ) : null}
      {tab === 'stats' ? <Stats c={c} /> : null}
      {tab === 'operations' ? <ContainerOperations id={c.id} /> : null}
    </div>
  );
}

function Overview({ c }: { c: Container }) {
  const hosts = useHosts();
  const networks = useNetworks();
  const now = useNow();
  const host = c.host_id ? hosts.data?.find((h) => h.id === c.host_id) : undefined;
  const network = c.network_id ? networks.data?.find((n) => n.id === c.network_id) : undefined;
  const env = Object.entries(c.env);
  const labels = Object.entries(c.labels);
  const when = (iso: string | null) =>
    iso ? <span title={formatTime(iso)}>{timeAgo(iso, now)}</span> : <span className="muted">—</span>;

  return (
    <div className="grid-cards" data-testid="container-overview">
      <section className="card">
        <h2>Overview</h2>
        <dl className="kv">
          <dt>Status</dt>
          <dd>
            <ContainerStatusBadge c={c} />
          </dd>
          <dt>Exit code</dt>
          <dd>{c.exit_code ?? '—'}</dd>
          <dt>Restarts</dt>
          <dd>
            {c.restart_count} <span className="muted small">(policy: {c.restart_policy})</span>
          </dd>
          <dt>Started</dt>
          <dd>{when(c.started_at)}</dd>
          <dt>Finished</dt>
          <dd>{when(c.finished_at)}</dd>
          <dt>IP</dt>
          <dd>{c.ip ?? '—'}</dd>
          <dt>Ports</dt>
          <dd>{c.ports.length ? c.ports.map(formatPort).join(', ') : '—'}</dd>
          <dt>Network</dt>
          <dd>{network ? network.name : (c.network_id ?? 'none')}</dd>
          <dt>Host</dt>
          <dd>{host ? host.name : (c.host_id ?? 'not placed yet')}</dd>
          <dt>VM</dt>
          <dd>
            <Link to={`/vms/${c.vm_id}`}>{c.name}</Link> <span className="muted small">({c.vm_state})</span>
          </dd>
          <dt>Size</dt>
          <dd>
            {c.vcpu} vCPU, {formatMib(c.mem_mib)}
          </dd>
          <dt>Created</dt>
          <dd>{when(c.created_at)}</dd>
          <dt>ID</dt>
          <dd>
            <code className="small">{c.id}</code>
          </dd>
        </dl>
      </section>
      <section className="card">
        <h2>Image &amp; process</h2>
        <dl className="kv">
          <dt>Image</dt>
          <dd>
            <code>{c.image}</code>
          </dd>
          <dt>Digest</dt>
          <dd>{c.image_digest ? <code className="small">{c.image_digest}</code> : 'not pulled yet'}</dd>
          <dt>Command</dt>
          <dd data-testid="effective-command">
            {c.effective_command ? (
              <code>{formatArgv(c.effective_command)}</code>
            ) : (
              <span className="muted">known once the image is pulled</span>
            )}
            {c.command || c.args ? (
              <div className="small muted">
                {[c.command ? 'entrypoint' : null, c.args ? 'cmd' : null].filter(Boolean).join(' and ')} set
                here, the rest from the image
              </div>
            ) : null}
          </dd>
          <dt>Working dir</dt>
          <dd>{c.working_dir ? <code>{c.working_dir}</code> : "the image's"}</dd>
          <dt>User</dt>
          <dd>{c.user ?? "the image's"}</dd>
          <dt>Environment</dt>
          <dd>
            {env.length ? (
              <ul className="plain-list env-list">
                {env.map(([k, v]) => (
                  <li key={k}>
                    <code>
                      {k}={v}
                    </code>
                  </li>
                ))}
              </ul>
            ) : (
              '—'
            )}
          </dd>
          <dt>Labels</dt>
          <dd>
            {labels.length
              ? labels.map(([k, v]) => (
                  <span key={k} className="chip">
                    {k}={v}
                  </span>
                ))
              : '—'}
          </dd>
        </dl>
      </section>
    </div>
  );
}

function ContainerOperations({ id }: { id: string }) {
  const ops = useTargetOps(id);
  if (ops.isPending) return <Loading what="operations" />;
  if (ops.error) return <ErrorBox error={ops.error} />;
  return (
    <section className="card">
      <OperationsTable ops={[...ops.data].reverse()} />
    </section>
  );
}

/** The VMM's CPU use between two samples, in percent of one CPU. */
function cpuPercent(prev: ContainerStats | undefined, cur: ContainerStats): number | null {
  if (!prev?.host || !cur.host || prev.host.pid !== cur.host.pid) return null;
  const dt = (Date.parse(cur.at) - Date.parse(prev.at)) / 1000;
  if (!(dt > 0)) return null;
  return Math.max(0, ((cur.host.cpu_seconds - prev.host.cpu_seconds) / dt) * 100);
}

function Stats({ c }: { c: Container }) {
  const stats = useContainerStats(c.id);
  const s = stats.data;
  const prev = useRef<ContainerStats | undefined>(undefined);
  const [cpu, setCpu] = useState<number | null>(null);
  useEffect(() => {
    if (!s) return;
    setCpu(cpuPercent(prev.current, s));
    prev.current = s;
  }, [s]);
  const mib = (b: number) => Math.round(b / (1024 * 1024));

  if (stats.isPending) return <Loading what="stats" />;
  return (
    <div className="stack" data-testid="container-stats">
      <ErrorBox error={stats.error} />
      {s ? (
        <div className="grid-cards">
          <section className="card">
            <h2>Guest</h2>
            {s.guest ? (
              <>
                <Bar
                  label="Memory"
                  used={mib(s.guest.mem_total_bytes - s.guest.mem_available_bytes)}
                  total={mib(s.guest.mem_total_bytes)}
                  unit="mib"
                />
                <dl className="kv">
                  <dt>Load (1 min)</dt>
                  <dd>{s.guest.load_1m.toFixed(2)}</dd>
                  <dt>Processes</dt>
                  <dd>{s.guest.processes}</dd>
                  <dt>Uptime</dt>
                  <dd>{formatDuration(s.guest.uptime_s)}</dd>
                </dl>
              </>
            ) : (
              <Empty>No guest figures: the container is {s.status}.</Empty>
            )}
          </section>
          <section className="card">
            <h2>VMM process on the host</h2>
            {s.host ? (
              <dl className="kv">
                <dt>PID</dt>
                <dd>{s.host.pid}</dd>
                <dt>Memory (RSS)</dt>
                <dd>{formatBytes(s.host.rss_bytes)}</dd>
                <dt>CPU time</dt>
                <dd>{s.host.cpu_seconds.toFixed(1)} s</dd>
                <dt>CPU</dt>
                <dd>{cpu === null ? '—' : `${cpu.toFixed(1)} % of one CPU`}</dd>
              </dl>
            ) : (
              <Empty>No VMM process: the container is {s.status}.</Empty>
            )}
          </section>
        </div>
      ) : null}
      {s ? (
        <p className="small muted">
          Measured {formatTime(s.at)}; refreshed every 3 s while this tab is open.
        </p>
      ) : null}
    </div>
  );
}

function ContainerActions({ c }: { c: Container }) {
  return (
    <ActionsBar
      target={c}
      state={c.status}
      actions={ACTIONS}
      run={runAction}
      listPath="/containers"
      testId="container-actions"
    />
  );
}
