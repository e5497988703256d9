import { useState } from 'react';
import { api } from '../api';
import { formatTime, shortId, timeAgo, useNow } from '../format';
import { useCan } from '../queries';
import { Link } from '../router';
import type { Operation, Vm } from '../types';
import { Empty, OpStatus, toast, toastError } from '../ui';

export function OperationsTable({
  ops,
  showTarget,
  vms,
}: {
  ops: Operation[];
  showTarget?: boolean;
  vms?: Vm[];
}) {
  const now = useNow();
  const canCancel = useCan('operator');
  const [cancelling, setCancelling] = useState<string | null>(null);
  if (!ops.length) return <Empty>No operations yet.</Empty>;

  const cancel = async (op: Operation) => {
    setCancelling(op.id);
    try {
      await api('POST', `/api/v1/operations/${op.id}/cancel`);
      toast('info', `Cancelled ${op.kind}`);
    } catch (err) {
      toastError(err, `Cancel ${op.kind}`);
    } finally {
      setCancelling(null);
    }
  };

  return (
    <div className="table-wrap">
      <table className="table" data-testid="operations">
        <thead>
          <tr>
            <th>Status</th>
            <th>Operation</th>
            {showTarget ? <th>Target</th> : null}
            <th className="hide-sm">Progress</th>
            <th className="hide-sm">By</th>
            <th>Started</th>
            {canCancel ? <th aria-label="Actions" /> : null}
          </tr>
        </thead>
        <tbody>
          {ops.map((op) => {
            const active = op.status === 'queued' || op.status === 'running';
            const vm = op.target.type === 'vm' ? vms?.find((v) => v.id === op.target.id) : undefined;
            return (
              <tr key={op.id}>
                <td>
                  <OpStatus status={op.status} />
                </td>
                <td>
                  <code>{op.kind}</code>
                  {op.error ? <div className="error-text small">{op.error.message}</div> : null}
                </td>
                {showTarget ? (
                  <td>
                    {op.target.type === 'vm' ? (
                      <Link to={`/vms/${op.target.id}`}>{vm?.name ?? `vm ${shortId(op.target.id)}`}</Link>
                    ) : op.target.type === 'container' ? (
                      <Link to={`/containers/${op.target.id}`}>container {shortId(op.target.id)}</Link>
                    ) : op.target.type === 'snapshot' ? (
                      <Link to="/snapshots">snapshot {shortId(op.target.id)}</Link>
                    ) : (
                      `${op.target.type} ${shortId(op.target.id)}`
                    )}
                  </td>
                ) : null}
                <td className="hide-sm">
                  <div className="mini-bar" title={`${op.progress.percent}%`}>
                    <div style={{ width: `${op.progress.percent}%` }} />
                  </div>
                  <span className="small muted">{op.progress.message}</span>
                </td>
                <td className="hide-sm">{op.created_by ?? '—'}</td>
                <td title={formatTime(op.created_at)}>{timeAgo(op.created_at, now)}</td>
                {canCancel ? (
                  <td className="actions">
                    {active ? (
                      <button
                        type="button"
                        className="btn btn-small"
                        disabled={cancelling === op.id}
                        onClick={() => cancel(op)}
                      >
                        Cancel
                      </button>
                    ) : null}
                  </td>
                ) : null}
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
