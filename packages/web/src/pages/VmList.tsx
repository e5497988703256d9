import { useState } from 'react';
import { formatMib, formatTime, timeAgo, useNow, VM_STATES } from '../format';
import { useCan, useHosts, useVms } from '../queries';
import { Link, navigate, useLocation, withSearch } from '../router';
import { Empty, ErrorBox, Loading, StateBadge } from '../ui';
import { VmWizard } from './VmWizard';

export function VmListPage() {
  const vms = useVms();
  const hosts = useHosts();
  const canCreate = useCan('operator');
  const now = useNow();
  const { pathname, search } = useLocation();
  const [wizard, setWizard] = useState(false);
  const q = search.get('q') ?? '';
  const state = search.get('state') ?? '';

  const setParam = (k: string, v: string) =>
    navigate(withSearch(pathname, search, { [k]: v }), { replace: true });

  const needle = q.trim().toLowerCase();
  const rows = (vms.data ?? [])
    .filter((v) => (!needle || v.name.toLowerCase().startsWith(needle)) && (!state || v.state === state))
    .sort((a, b) => a.name.localeCompare(b.name));
  const hostName = (id: string | null) =>
    id ? (hosts.data?.find((h) => h.id === id)?.name ?? id.slice(0, 8)) : '—';

  return (
    <div className="page">
      <div className="page-head">
        <h1>
          Virtual machines <span className="count">{vms.data?.length ?? ''}</span>
        </h1>
        {canCreate ? (
          <button type="button" className="btn btn-primary" onClick={() => setWizard(true)}>
            Create VM
          </button>
        ) : null}
      </div>
      <div className="toolbar">
        <input
          type="search"
          placeholder="Search by name…"
          aria-label="Search by name"
          value={q}
          onChange={(e) => setParam('q', e.target.value)}
        />
        <select
          aria-label="Filter by state"
          value={state}
          onChange={(e) => setParam('state', e.target.value)}
        >
          <option value="">All states</option>
          {VM_STATES.map((s) => (
            <option key={s} value={s}>
              {s}
            </option>
          ))}
        </select>
      </div>
      <ErrorBox error={vms.error} />
      {vms.isPending ? <Loading what="VMs" /> : null}
      {vms.data && rows.length === 0 ? (
        <Empty>
          {vms.data.length === 0
            ? canCreate
              ? 'No VMs yet. Create one with "Create VM".'
              : 'No VMs yet.'
            : 'No VM matches the filter.'}
        </Empty>
      ) : null}
      {rows.length ? (
        <div className="table-wrap">
          <table className="table table-hover" data-testid="vm-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>State</th>
                <th className="hide-sm">Host</th>
                <th className="hide-sm num">vCPU</th>
                <th className="hide-sm num">Memory</th>
                <th className="hide-md">VMM</th>
                <th className="hide-md">Created</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((vm) => (
                <tr key={vm.id} data-vm={vm.name}>
                  <td>
                    <Link to={`/vms/${vm.id}`} className="strong">
                      {vm.name}
                    </Link>
                    {vm.last_error &&
                    (vm.state === 'failed' || vm.state === 'unknown' || vm.state === 'creating') ? (
                      <div className="small muted ellipsis" title={vm.last_error}>
                        {vm.last_error}
                      </div>
                    ) : null}
                  </td>
                  <td>
                    <StateBadge state={vm.state} />
                    {vm.desired_state !== vm.state && !['stopped', 'running', 'paused'].includes(vm.state) ? (
                      <span className="small muted"> → {vm.desired_state}</span>
                    ) : null}
                  </td>
                  <td className="hide-sm">{hostName(vm.host_id)}</td>
                  <td className="hide-sm num">{vm.vcpu}</td>
                  <td className="hide-sm num">{formatMib(vm.mem_mib)}</td>
                  <td className="hide-md">{vm.vmm ?? 'auto'}</td>
                  <td className="hide-md" title={formatTime(vm.created_at)}>
                    {timeAgo(vm.created_at, now)}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {canCreate ? <VmWizard open={wizard} onClose={() => setWizard(false)} /> : null}
    </div>
  );
}
