import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, useState } from 'react';
import { api } from '../api';
import { hostFigures } from '../capacity';
import { formatTime, useNow } from '../format';
import { joinTokenState } from '../join-token-state';
import { keys, useCan, useHosts, useJoinTokens, useVms } from '../queries';
import type { Host, JoinToken, JoinTokenCreated } from '../types';
import {
  Badge,
  CapacityBars,
  ConfirmDialog,
  CopyField,
  Empty,
  ErrorBox,
  Field,
  Modal,
  PageHead,
  QueryStatus,
  RelTime,
  SecretOnceModal,
  toast,
  toastError,
} from '../ui';

const HOST_TONE = { ready: 'ok', unreachable: 'warn', lost: 'err' } as const;

type HostAction = 'cordon' | 'uncordon' | 'drain' | 'revoke-credential' | 'delete';

const CONFIRM: Partial<Record<HostAction, { label: string; message: (h: Host) => string }>> = {
  drain: {
    label: 'Drain',
    message: (h) => `Cordon ${h.name} and shut down every VM on it (forced after 30 s)?`,
  },
  'revoke-credential': {
    label: 'Revoke credential',
    message: (h) =>
      `Revoke the credential of ${h.name}? Its agent can no longer report and must join again with a new join token.`,
  },
  delete: { label: 'Remove host', message: (h) => `Remove ${h.name} from the cluster? It must have no VMs.` },
};

export function HostsPage() {
  const hosts = useHosts();
  const vms = useVms();
  const isAdmin = useCan('admin');
  const [confirm, setConfirm] = useState<{ host: Host; action: HostAction } | null>(null);

  const run = async (host: Host, action: HostAction) => {
    if (action === 'delete') await api('DELETE', `/api/v1/hosts/${host.id}`);
    else await api('POST', `/api/v1/hosts/${host.id}/${action}`);
    toast('info', `${action.replace('-', ' ')}: ${host.name}`);
  };
  const click = async (host: Host, action: HostAction) => {
    if (CONFIRM[action]) return setConfirm({ host, action });
    try {
      await run(host, action);
    } catch (err) {
      toastError(err, `${action} ${host.name}`);
    }
  };

  const vmCount = (id: string) => (vms.data ?? []).filter((v) => v.host_id === id).length;

  return (
    <div className="page">
      <PageHead title="Hosts" count={hosts.data?.length} />
      <QueryStatus query={hosts} what="hosts" />
      {hosts.data?.length === 0 ? (
        <Empty>
          No hosts yet.{' '}
          {isAdmin ? 'Create a join token below and run ' : 'An admin creates a join token and runs '}
          <code>nqvm agent --manager {location.origin} --join-token …</code> on the host.
        </Empty>
      ) : null}
      <div className="host-list" data-testid="host-list">
        {(hosts.data ?? []).map((h) => (
          <section key={h.id} className="card host" data-host={h.name}>
            <div className="host-card-head">
              <h2>{h.name}</h2>
              <Badge tone={HOST_TONE[h.status]}>{h.status}</Badge>
              {!h.schedulable ? <Badge tone="warn">cordoned</Badge> : null}
              {h.credential_revoked ? <Badge tone="err">credential revoked</Badge> : null}
              {!h.capacity.kvm ? <Badge tone="muted">no KVM</Badge> : null}
            </div>
            <div className="host-grid">
              <dl className="kv">
                <dt>Address</dt>
                <dd>
                  <code className="small">{h.address}</code>
                </dd>
                <dt>Agent</dt>
                <dd>{h.agent_version ?? '—'}</dd>
                <dt>Heartbeat</dt>
                <dd data-testid="heartbeat">
                  <RelTime iso={h.last_heartbeat_at} />
                </dd>
                <dt>VMs</dt>
                <dd>{vmCount(h.id)}</dd>
                <dt>Drivers</dt>
                <dd>
                  {h.capacity.drivers.length
                    ? h.capacity.drivers.map((d) => (
                        <Badge key={d.kind} tone={d.available ? 'ok' : 'muted'} title={d.reason}>
                          {d.kind}
                          {d.version ? ` ${d.version}` : ''}
                          {d.available && d.kvm ? ' (KVM)' : ''}
                        </Badge>
                      ))
                    : '—'}
                </dd>
                {Object.keys(h.labels).length ? (
                  <>
                    <dt>Labels</dt>
                    <dd>
                      {Object.entries(h.labels).map(([k, v]) => (
                        <span key={k} className="chip">
                          {k}={v}
                        </span>
                      ))}
                    </dd>
                  </>
                ) : null}
              </dl>
              <div>
                <CapacityBars figures={hostFigures(h)} />
              </div>
            </div>
            {isAdmin ? (
              <div className="actions-bar">
                {h.schedulable ? (
                  <button type="button" className="btn" onClick={() => click(h, 'cordon')}>
                    Cordon
                  </button>
                ) : (
                  <button type="button" className="btn" onClick={() => click(h, 'uncordon')}>
                    Uncordon
                  </button>
                )}
                <button type="button" className="btn" onClick={() => click(h, 'drain')}>
                  Drain
                </button>
                <button
                  type="button"
                  className="btn btn-danger-outline"
                  disabled={h.credential_revoked}
                  onClick={() => click(h, 'revoke-credential')}
                >
                  Revoke credential
                </button>
                <button
                  type="button"
                  className="btn btn-danger-outline"
                  disabled={vmCount(h.id) > 0}
                  title={vmCount(h.id) > 0 ? 'move or delete its VMs first' : undefined}
                  onClick={() => click(h, 'delete')}
                >
                  Remove
                </button>
              </div>
            ) : null}
          </section>
        ))}
      </div>
      {isAdmin ? <JoinTokens /> : null}
      <ConfirmDialog
        open={confirm !== null}
        title={confirm ? `${CONFIRM[confirm.action]?.label}: ${confirm.host.name}` : ''}
        message={confirm ? CONFIRM[confirm.action]?.message(confirm.host) : ''}
        confirmLabel={confirm ? (CONFIRM[confirm.action]?.label ?? '') : ''}
        onConfirm={() => (confirm ? run(confirm.host, confirm.action) : Promise.resolve())}
        onClose={() => setConfirm(null)}
      />
    </div>
  );
}

function JoinTokens() {
  const qc = useQueryClient();
  const tokens = useJoinTokens(true);
  const now = useNow();
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState<JoinTokenCreated | null>(null);
  const [revoke, setRevoke] = useState<JoinToken | null>(null);
  const [ttl, setTtl] = useState('3600');
  const [description, setDescription] = useState('');
  const [error, setError] = useState<unknown>(null);

  const create = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    try {
      const out = await api<JoinTokenCreated>('POST', '/api/v1/join-tokens', {
        ttl_s: Number(ttl),
        ...(description ? { description } : {}),
      });
      setCreating(false);
      setDescription('');
      setCreated(out);
      void qc.invalidateQueries({ queryKey: keys.joinTokens });
    } catch (err) {
      setError(err);
    }
  };

  const list = [...(tokens.data ?? [])].reverse();
  return (
    <section className="card">
      <div className="page-head">
        <h2>Join tokens</h2>
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          Create join token
        </button>
      </div>
      <p className="muted small">A join token lets one agent register its host. It is shown once.</p>
      <ErrorBox error={tokens.error} />
      {tokens.data && list.length === 0 ? <Empty>No join tokens.</Empty> : null}
      {list.length ? (
        <div className="table-wrap">
          <table className="table">
            <thead>
              <tr>
                <th>Description</th>
                <th>State</th>
                <th className="hide-sm">Created</th>
                <th>Expires</th>
                <th className="hide-sm">Last used</th>
                <th aria-label="Actions" />
              </tr>
            </thead>
            <tbody>
              {list.map((t) => {
                const st = joinTokenState(t, now);
                return (
                  <tr key={t.id}>
                    <td>{t.description ?? <span className="muted">—</span>}</td>
                    <td>
                      <Badge
                        tone={st.tone}
                        title={
                          st.label === 'used'
                            ? `an agent joined with it ${formatTime(t.last_used_at)}; ${st.usable ? 'valid until' : 'expired'} ${formatTime(t.expires_at)}`
                            : undefined
                        }
                      >
                        {st.label}
                      </Badge>
                    </td>
                    <td className="hide-sm">
                      <RelTime iso={t.created_at} />
                    </td>
                    <td>
                      <RelTime iso={t.expires_at} />
                    </td>
                    <td className="hide-sm">
                      <RelTime iso={t.last_used_at} />
                    </td>
                    <td className="actions">
                      {st.usable ? (
                        <button type="button" className="btn btn-small" onClick={() => setRevoke(t)}>
                          Revoke
                        </button>
                      ) : null}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      ) : null}

      <Modal
        open={creating}
        title="Create join token"
        onClose={() => setCreating(false)}
        footer={
          <>
            <button type="button" className="btn" onClick={() => setCreating(false)}>
              Cancel
            </button>
            <button type="submit" form="join-token-form" className="btn btn-primary">
              Create
            </button>
          </>
        }
      >
        <form id="join-token-form" className="stack" onSubmit={create}>
          <Field label="Valid for" htmlFor="jt-ttl">
            <select id="jt-ttl" value={ttl} onChange={(e) => setTtl(e.target.value)}>
              <option value="900">15 minutes</option>
              <option value="3600">1 hour</option>
              <option value="86400">1 day</option>
              <option value="604800">7 days</option>
            </select>
          </Field>
          <Field label="Description" htmlFor="jt-desc" hint="optional, e.g. the host it is for">
            <input
              id="jt-desc"
              value={description}
              maxLength={200}
              onChange={(e) => setDescription(e.target.value)}
            />
          </Field>
          <ErrorBox error={error} />
        </form>
      </Modal>

      <SecretOnceModal
        title="Join token created"
        label="Join token"
        secret={created?.token ?? null}
        onClose={() => setCreated(null)}
      >
        {created ? (
          <>
            <p className="small muted">On the new host, as root:</p>
            <CopyField
              label="Agent command"
              value={`nqvm agent --manager ${location.origin} --join-token ${created.token}`}
            />
          </>
        ) : null}
      </SecretOnceModal>

      <ConfirmDialog
        open={revoke !== null}
        title="Revoke join token"
        message="Agents can no longer join with this token. Hosts that already joined are not affected."
        confirmLabel="Revoke"
        onConfirm={async () => {
          if (!revoke) return;
          await api('DELETE', `/api/v1/join-tokens/${revoke.id}`);
          await qc.invalidateQueries({ queryKey: keys.joinTokens });
        }}
        onClose={() => setRevoke(null)}
      />
    </section>
  );
}
