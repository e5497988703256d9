import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, useState } from 'react';
import { api, setCsrfToken } from '../api';
import { formatTime, ROLES, timeAgo, useNow } from '../format';
import { keys, roleAtLeast, useTokens, useUsers } from '../queries';
import { navigate } from '../router';
import type { ApiToken, ApiTokenCreated, Me, Role } from '../types';
import {
  Badge,
  ConfirmDialog,
  Empty,
  ErrorBox,
  Field,
  Modal,
  QueryStatus,
  RelTime,
  SecretOnceModal,
  toast,
} from '../ui';

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;

export function AccountPage({ me }: { me: Me }) {
  return (
    <div className="page">
      <h1>Account</h1>
      <div className="grid-cards">
        <section className="card">
          <h2>Profile</h2>
          <dl className="kv">
            <dt>User</dt>
            <dd>{me.username}</dd>
            <dt>Role</dt>
            <dd>
              {me.role}
              {me.effective_role !== me.role ? ` (effective: ${me.effective_role})` : ''}
            </dd>
            <dt>Signed in with</dt>
            <dd>{me.via}</dd>
            <dt>Member since</dt>
            <dd>{formatTime(me.created_at)}</dd>
          </dl>
        </section>
        <ChangePassword />
      </div>
      <Tokens me={me} />
    </div>
  );
}

function ChangePassword() {
  const qc = useQueryClient();
  const [current, setCurrent] = useState('');
  const [next, setNext] = useState('');
  const [again, setAgain] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setError(null);
    if (next.length < 8) return setError(new Error('the new password needs at least 8 characters'));
    if (next !== again) return setError(new Error('the new passwords differ'));
    const body = { current_password: current, new_password: next };
    setCurrent('');
    setNext('');
    setAgain('');
    setBusy(true);
    try {
      await api('POST', '/api/v1/auth/password', body);
      // The change ends every session, this one included: sign in again.
      toast('ok', 'Password changed; log in with the new password');
      setCsrfToken(null);
      qc.clear();
      qc.setQueryData(keys.me, null);
      navigate('/login');
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <section className="card">
      <h2>Change password</h2>
      <form className="stack" onSubmit={submit}>
        <Field label="Current password" htmlFor="pw-cur">
          <input
            id="pw-cur"
            type="password"
            autoComplete="current-password"
            value={current}
            onChange={(e) => setCurrent(e.target.value)}
          />
        </Field>
        <Field label="New password" htmlFor="pw-new" hint="at least 8 characters; ends all your sessions">
          <input
            id="pw-new"
            type="password"
            autoComplete="new-password"
            value={next}
            onChange={(e) => setNext(e.target.value)}
          />
        </Field>
        <Field label="New password again" htmlFor="pw-again">
          <input
            id="pw-again"
            type="password"
            autoComplete="new-password"
            value={again}
            onChange={(e) => setAgain(e.target.value)}
          />
        </Field>
        <ErrorBox error={error} />
        <div>
          <button type="submit" className="btn btn-primary" disabled={busy || !current || !next}>
            Change password
          </button>
        </div>
      </form>
    </section>
  );
}

function Tokens({ me }: { me: Me }) {
  const isAdmin = roleAtLeast(me.effective_role, 'admin');
  const [scope, setScope] = useState<string>(me.id);
  const tokens = useTokens(scope);
  const users = useUsers(isAdmin && scope === 'all');
  const now = useNow();
  const [creating, setCreating] = useState(false);
  const [created, setCreated] = useState<ApiTokenCreated | null>(null);
  const [revoking, setRevoking] = useState<ApiToken | null>(null);
  const owner = (id: string) => users.data?.find((u) => u.id === id)?.username ?? id.slice(0, 8);
  const list = [...(tokens.data ?? [])].reverse();

  return (
    <section className="card">
      <div className="page-head">
        <h2>API tokens</h2>
        <div className="toolbar">
          {isAdmin ? (
            <select aria-label="Whose tokens" value={scope} onChange={(e) => setScope(e.target.value)}>
              <option value={me.id}>My tokens</option>
              <option value="all">All users' tokens</option>
            </select>
          ) : null}
          <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
            Create token
          </button>
        </div>
      </div>
      <p className="muted small">
        For the CLI and scripts: <code>Authorization: Bearer &lt;token&gt;</code>. A token is shown once.
      </p>
      <QueryStatus query={tokens} what="tokens" />
      {tokens.data && list.length === 0 ? <Empty>No API tokens.</Empty> : null}
      {list.length ? (
        <div className="table-wrap">
          <table className="table" data-testid="tokens-table">
            <thead>
              <tr>
                <th>Name</th>
                {scope === 'all' ? <th>Owner</th> : null}
                <th className="hide-sm">Prefix</th>
                <th>Role</th>
                <th className="hide-sm">Expires</th>
                <th className="hide-sm">Last used</th>
                <th>Status</th>
                <th aria-label="Actions" />
              </tr>
            </thead>
            <tbody>
              {list.map((t) => {
                const expired = t.expires_at !== null && new Date(t.expires_at).getTime() <= now;
                return (
                  <tr key={t.id}>
                    <td className="strong">{t.name}</td>
                    {scope === 'all' ? <td>{owner(t.user_id)}</td> : null}
                    <td className="hide-sm">
                      <code className="small">{t.prefix}…</code>
                    </td>
                    <td>{t.role}</td>
                    <td className="hide-sm" title={formatTime(t.expires_at)}>
                      {t.expires_at ? timeAgo(t.expires_at, now) : 'never'}
                    </td>
                    <td className="hide-sm">
                      <RelTime iso={t.last_used_at} />
                    </td>
                    <td>
                      {t.revoked_at ? (
                        <Badge tone="err">revoked</Badge>
                      ) : expired ? (
                        <Badge tone="muted">expired</Badge>
                      ) : (
                        <Badge tone="ok">active</Badge>
                      )}
                    </td>
                    <td className="actions">
                      {!t.revoked_at && !expired ? (
                        <button type="button" className="btn btn-small" onClick={() => setRevoking(t)}>
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

      <CreateToken me={me} open={creating} onClose={() => setCreating(false)} onCreated={setCreated} />
      <SecretOnceModal
        title="API token created"
        label="API token"
        secret={created?.token ?? null}
        onClose={() => setCreated(null)}
      >
        {created ? (
          <p className="small muted">
            Role {created.role}
            {created.expires_at ? `, expires ${formatTime(created.expires_at)}` : ', never expires'}.
          </p>
        ) : null}
      </SecretOnceModal>
      <ConfirmDialog
        open={revoking !== null}
        title={`Revoke token ${revoking?.name ?? ''}`}
        message="Clients using this token are refused from now on."
        confirmLabel="Revoke"
        onConfirm={() => api('DELETE', `/api/v1/tokens/${revoking?.id}`)}
        onClose={() => setRevoking(null)}
      />
    </section>
  );
}

function CreateToken({
  me,
  open,
  onClose,
  onCreated,
}: {
  me: Me;
  open: boolean;
  onClose: () => void;
  onCreated: (t: ApiTokenCreated) => void;
}) {
  const [name, setName] = useState('');
  const [role, setRole] = useState<Role>(me.effective_role);
  const [days, setDays] = useState('90');
  const [error, setError] = useState<unknown>(null);
  const close = () => {
    setName('');
    setError(null);
    onClose();
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!NAME_RE.test(name)) return setError(new Error('name: letters, digits, "-", "_" or "." (1-63)'));
    try {
      const out = await api<ApiTokenCreated>('POST', '/api/v1/tokens', {
        name,
        role,
        expires_in_days: days === 'never' ? null : Number(days),
      });
      close();
      onCreated(out);
    } catch (err) {
      setError(err);
    }
  };
  return (
    <Modal
      open={open}
      title="Create API token"
      onClose={close}
      footer={
        <>
          <button type="button" className="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" form="create-token" className="btn btn-primary">
            Create
          </button>
        </>
      }
    >
      <form id="create-token" className="stack" onSubmit={submit}>
        <Field label="Name" htmlFor="tk-name" hint="e.g. laptop-cli">
          <input id="tk-name" value={name} autoComplete="off" onChange={(e) => setName(e.target.value)} />
        </Field>
        <Field label="Role" htmlFor="tk-role" hint="never higher than yours">
          <select id="tk-role" value={role} onChange={(e) => setRole(e.target.value as Role)}>
            {ROLES.filter((r) => roleAtLeast(me.effective_role, r)).map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>
        </Field>
        <Field label="Expires" htmlFor="tk-exp">
          <select id="tk-exp" value={days} onChange={(e) => setDays(e.target.value)}>
            <option value="7">in 7 days</option>
            <option value="30">in 30 days</option>
            <option value="90">in 90 days</option>
            <option value="365">in 1 year</option>
            <option value="never">never</option>
          </select>
        </Field>
        <ErrorBox error={error} />
      </form>
    </Modal>
  );
}
