/** Containers: OCI images each run as its own microVM; the live list with search and a status filter. */
import { useState } from 'react';
import { CONTAINER_STATUSES, ContainerStatusBadge, formatPort } from '../container-status';
import { formatTime, timeAgo, useNow } from '../format';
import { FilterBar, useListFilter } from '../list-filter';
import { useCan, useContainers } from '../queries';
import { Link } from '../router';
import { Empty, PageHead, QueryStatus } from '../ui';
import { CreateContainerDialog } from './ContainerCreate';

export function ContainersPage() {
  const containers = useContainers();
  const canCreate = useCan('operator');
  const now = useNow();
  const [creating, setCreating] = useState(false);
  const filter = useListFilter(containers.data, 'status', (x) => x.status);
  const rows = filter.rows;

  return (
    <div className="page">
      <PageHead title="Containers" count={containers.data?.length}>
        {canCreate ? (
          <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
            Create container
          </button>
        ) : null}
      </PageHead>
      <FilterBar filter={filter} param="status" noun="status" options={CONTAINER_STATUSES} />
      <QueryStatus query={containers} what="containers" />
      {containers.data && rows.length === 0 ? (
        <Empty>
          {containers.data.length === 0
            ? canCreate
              ? 'No containers yet. Run an OCI image as its own microVM with "Create container".'
              : 'No containers yet.'
            : 'No container matches the filter.'}
        </Empty>
      ) : null}
      {rows.length ? (
        <div className="table-wrap">
          <table className="table table-hover" data-testid="containers-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>Status</th>
                <th className="hide-sm">Image</th>
                <th className="hide-sm">Ports</th>
                <th className="hide-md">IP</th>
                <th className="hide-md num">Restarts</th>
                <th className="hide-md">Created</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((c) => (
                <tr key={c.id} data-container={c.name}>
                  <td>
                    <Link to={`/containers/${c.id}`} className="strong">
                      {c.name}
                    </Link>
                    {c.last_error && (c.status === 'failed' || c.status === 'starting') ? (
                      <div className="small error-text ellipsis narrow" title={c.last_error}>
                        {c.last_error}
                      </div>
                    ) : null}
                  </td>
                  <td>
                    <ContainerStatusBadge c={c} />
                  </td>
                  <td className="hide-sm">
                    <code className="ellipsis narrow" title={c.image_digest ?? c.image}>
                      {c.image}
                    </code>
                  </td>
                  <td className="hide-sm nowrap">
                    {c.ports.length ? c.ports.map(formatPort).join(', ') : '—'}
                  </td>
                  <td className="hide-md">{c.ip ?? '—'}</td>
                  <td className="hide-md num">{c.restart_count}</td>
                  <td className="hide-md nowrap" title={formatTime(c.created_at)}>
                    {timeAgo(c.created_at, now)}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {canCreate ? <CreateContainerDialog open={creating} onClose={() => setCreating(false)} /> : null}
    </div>
  );
}
