import { useState } from 'react';
import { formatMib, formatTime, timeAgo, useNow, VM_STATES } from '../format';
import { FilterBar, useListFilter } from '../list-filter';
import { useCan, useHosts, useVms } from '../queries';
import { Link } from '../router';
import { Empty, GuestBadge, PageHead, QueryStatus, StateBadge } from '../ui';
import { VmWizard } from './VmWizard';

export function VmListPage() {
  const vms = useVms();
  const hosts = useHosts();
  const canCreate = useCan('operator');
  const now = useNow();
  const [wizard, setWizard] = useState(false);
  const filter = useListFilter(vms.data, 'state', (x) => x.state);
  const rows = filter.rows;
  const hostName = (id: string | null) =>
    id ? (hosts.data?.find((h) => h.id === id)?.name ?? id.slice(0, 8)) : '—';

  return (
    <div className="page">
      <PageHead title="Virtual machines" count={vms.data?.length}>
        {canCreate ? (
          <button type="button" className="btn btn-primary" onClick={() => setWizard(true)}>
            Create VM
          </button>
        ) : null}
      </PageHead>
      <FilterBar filter={filter} param="state" noun="state" options={VM_STATES} />
      <QueryStatus query={vms} what="VMs" />
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
                    <StateBadge state={vm.state} /> <GuestBadge vm={vm} />
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
