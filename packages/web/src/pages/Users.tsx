import { type FormEvent, useState } from 'react';
import { api } from '../api';
import { formatTime, ROLES, timeAgo, useNow } from '../format';
import { useUsers } from '../queries';
import type { Me, Role, User } from '../types';
import {
  Badge,
  ConfirmDialog,
  Empty,
  ErrorBox,
  Field,
  Modal,
  PageHead,
  QueryStatus,
  toast,
  toastError,
} from '../ui';

const USERNAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.@-]{0,63}$/;

export function UsersPage({ me }: { me: Me }) {
  const users = useUsers(true);
  const now = useNow();
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState<User | null>(null);
  const [resetting, setResetting] = useState<User | null>(null);

  const patch = async (u: User, body: Partial<{ role: Role; disabled: boolean }>, what: string) => {
    try {
      await api('PATCH', `/api/v1/users/${u.id}`, body);
      toast('ok', `${u.username}: ${what}`);
    } catch (err) {
      toastError(err, `${u.username}`);
    }
  };

  return (
    <div className="page">
      <PageHead title="Users" count={users.data?.length}>
        <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
          Create user
        </button>
      </PageHead>
      <QueryStatus query={users} what="users" />
      {users.data && users.data.length === 0 ? <Empty>No users.</Empty> : null}
      {users.data?.length ? (
        <div className="table-wrap">
          <table className="table" data-testid="users-table">
            <thead>
              <tr>
                <th>User</th>
                <th>Role</th>
                <th>Status</th>
                <th className="hide-sm">Created</th>
                <th aria-label="Actions" />
              </tr>
            </thead>
            <tbody>
              {users.data.map((u) => (
                <tr key={u.id} data-user={u.username}>
                  <td className="strong">
                    {u.username}
                    {u.id === me.id ? <span className="muted"> (you)</span> : null}
                  </td>
                  <td>
                    <select
                      aria-label={`Role of ${u.username}`}
                      value={u.role}
                      onChange={(e) => patch(u, { role: e.target.value as Role }, `role ${e.target.value}`)}
                    >
                      {ROLES.map((r) => (
                        <option key={r} value={r}>
                          {r}
                        </option>
                      ))}
                    </select>
                  </td>
                  <td>{u.disabled ? <Badge tone="err">disabled</Badge> : <Badge tone="ok">active</Badge>}</td>
                  <td className="hide-sm" title={formatTime(u.created_at)}>
                    {timeAgo(u.created_at, now)}
                  </td>
                  <td className="actions">
                    <button
                      type="button"
                      className="btn btn-small"
                      onClick={() =>
                        patch(
                          u,
                          { disabled: !u.disabled },
                          u.disabled ? 'enabled' : 'disabled; sessions ended',
                        )
                      }
                    >
                      {u.disabled ? 'Enable' : 'Disable'}
                    </button>
                    <button type="button" className="btn btn-small" onClick={() => setResetting(u)}>
                      Set password
                    </button>
                    <button
                      type="button"
                      className="btn btn-small btn-danger-outline"
                      onClick={() => setDeleting(u)}
                    >
                      Delete
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}

      <CreateUser open={creating} onClose={() => setCreating(false)} />
      <SetPassword user={resetting} onClose={() => setResetting(null)} />
      <ConfirmDialog
        open={deleting !== null}
        title={`Delete user ${deleting?.username ?? ''}`}
        message="The user's sessions and API tokens stop working. This cannot be undone."
        confirmLabel="Delete"
        onConfirm={() => api('DELETE', `/api/v1/users/${deleting?.id}`)}
        onClose={() => setDeleting(null)}
      />
    </div>
  );
}

function CreateUser({ open, onClose }: { open: boolean; onClose: () => void }) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [role, setRole] = useState<Role>('viewer');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);

  const close = () => {
    setUsername('');
    setPassword('');
    setRole('viewer');
    setError(null);
    onClose();
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!USERNAME_RE.test(username)) return setError(new Error('user name: letters, digits, . _ @ - (1-64)'));
    if (password.length < 8) return setError(new Error('the password needs at least 8 characters'));
    setBusy(true);
    const pw = password;
    setPassword('');
    try {
      await api('POST', '/api/v1/users', { username, password: pw, role });
      toast('ok', `Created user ${username}`);
      close();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <Modal
      open={open}
      title="Create user"
      onClose={close}
      footer={
        <>
          <button type="button" className="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" form="create-user" className="btn btn-primary" disabled={busy}>
            Create
          </button>
        </>
      }
    >
      <form id="create-user" className="stack" onSubmit={submit}>
        <Field label="User name" htmlFor="cu-name">
          <input
            id="cu-name"
            name="username"
            autoComplete="off"
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
        </Field>
        <Field label="Password" htmlFor="cu-pw" hint="at least 8 characters">
          <input
            id="cu-pw"
            name="password"
            type="password"
            autoComplete="new-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </Field>
        <Field label="Role" htmlFor="cu-role">
          <select id="cu-role" name="role" value={role} onChange={(e) => setRole(e.target.value as Role)}>
            {ROLES.map((r) => (
              <option key={r} value={r}>
                {r}
              </option>
            ))}
          </select>
        </Field>
        <ErrorBox error={error} />
      </form>
    </Modal>
  );
}

function SetPassword({ user, onClose }: { user: User | null; onClose: () => void }) {
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);
  const close = () => {
    setPassword('');
    setError(null);
    onClose();
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    if (!user) return;
    if (password.length < 8) return setError(new Error('the password needs at least 8 characters'));
    const pw = password;
    setPassword('');
    try {
      await api('PATCH', `/api/v1/users/${user.id}`, { password: pw });
      toast('ok', `New password set for ${user.username}; their sessions ended`);
      close();
    } catch (err) {
      setError(err);
    }
  };
  return (
    <Modal
      open={user !== null}
      title={`Set password: ${user?.username ?? ''}`}
      onClose={close}
      footer={
        <>
          <button type="button" className="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" form="set-password" className="btn btn-primary">
            Set password
          </button>
        </>
      }
    >
      <form id="set-password" className="stack" onSubmit={submit}>
        <Field label="New password" htmlFor="sp-pw" hint="at least 8 characters; ends the user's sessions">
          <input
            id="sp-pw"
            type="password"
            autoComplete="new-password"
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </Field>
        <ErrorBox error={error} />
      </form>
    </Modal>
  );
}
