import { useState } from 'react';
import { formatTime, timeAgo, useNow } from '../format';
import { useAudit } from '../queries';
import { Link } from '../router';
import type { AuditEvent } from '../types';
import { Badge, Empty, QueryStatus } from '../ui';

function target(t: AuditEvent['target']) {
  if (!t) return '—';
  if (t.type === 'vm') return <Link to={`/vms/${t.id}`}>vm {t.id.slice(0, 8)}</Link>;
  return `${t.type} ${t.id.slice(0, 8)}`;
}

export function AuditPage() {
  const [action, setAction] = useState('');
  const [applied, setApplied] = useState('');
  const [result, setResult] = useState('');
  const audit = useAudit(applied);
  const now = useNow();
  const rows = [...(audit.data ?? [])].reverse().filter((e) => !result || e.result === result);

  return (
    <div className="page">
      <h1>Audit log</h1>
      <form
        className="toolbar"
        onSubmit={(e) => {
          e.preventDefault();
          setApplied(action.trim());
        }}
      >
        <input
          type="search"
          placeholder="Action, e.g. vm.create"
          aria-label="Filter by action"
          value={action}
          onChange={(e) => {
            setAction(e.target.value);
            if (!e.target.value) setApplied('');
          }}
        />
        <select aria-label="Filter by result" value={result} onChange={(e) => setResult(e.target.value)}>
          <option value="">All results</option>
          <option value="success">success</option>
          <option value="failure">failure</option>
        </select>
        <button type="submit" className="btn">
          Filter
        </button>
      </form>
      <p className="muted small">The newest 500 entries, newest first; follows changes as they happen.</p>
      <QueryStatus query={audit} what="audit log" />
      {audit.data && rows.length === 0 ? <Empty>No entries.</Empty> : null}
      {rows.length ? (
        <div className="table-wrap">
          <table className="table" data-testid="audit-table">
            <thead>
              <tr>
                <th>When</th>
                <th>Actor</th>
                <th>Action</th>
                <th className="hide-sm">Target</th>
                <th>Result</th>
                <th className="hide-md">IP</th>
              </tr>
            </thead>
            <tbody>
              {rows.map((e) => (
                <tr key={e.id}>
                  <td title={formatTime(e.at)}>{timeAgo(e.at, now)}</td>
                  <td>
                    {e.actor.name ?? e.actor.id ?? e.actor.type}
                    {e.actor.type !== 'user' ? <span className="muted small"> ({e.actor.type})</span> : null}
                  </td>
                  <td>
                    <code>{e.action}</code>
                  </td>
                  <td className="hide-sm">{target(e.target)}</td>
                  <td>
                    <Badge tone={e.result === 'success' ? 'ok' : 'err'}>{e.status_code}</Badge>
                  </td>
                  <td className="hide-md">{e.ip ?? '—'}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
    </div>
  );
}
