import { useQueryClient } from '@tanstack/react-query';
import { type FormEvent, useEffect, useId, useRef, useState } from 'react';
import { api, get, setCsrfToken } from '../api';
import { keys } from '../queries';
import { navigate, useLocation } from '../router';
import type { LoginResponse, Me } from '../types';
import { ErrorBox } from '../ui';

/** Only same-site paths: a crafted ?next= must not send the user elsewhere. */
function safeNext(v: string | null): string {
  return v?.startsWith('/') && !v.startsWith('//') && !v.startsWith('/login') ? v : '/';
}

export function LoginPage() {
  const qc = useQueryClient();
  const { search } = useLocation();
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const uid = useId();
  const pid = useId();
  const userInput = useRef<HTMLInputElement>(null);
  useEffect(() => userInput.current?.focus(), []);

  const submit = async (e: FormEvent) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    const pw = password;
    setPassword(''); // never kept after submission
    try {
      const res = await api<LoginResponse>('POST', '/api/v1/auth/login', { username, password: pw });
      setCsrfToken(res.csrf_token);
      const me = await get<Me>('/api/v1/auth/me');
      navigate(safeNext(search.get('next')), { replace: true });
      qc.setQueryData(keys.me, me);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <main className="login-page">
      <form className="card login-card" onSubmit={submit}>
        <div className="login-brand">
          <img src="/favicon.svg" alt="" width="40" height="40" />
          <div>
            <h1>nqvm</h1>
            <p className="muted">microVM manager</p>
          </div>
        </div>
        <div className="field">
          <label htmlFor={uid}>User name</label>
          <input
            id={uid}
            name="username"
            autoComplete="username"
            required
            ref={userInput}
            value={username}
            onChange={(e) => setUsername(e.target.value)}
          />
        </div>
        <div className="field">
          <label htmlFor={pid}>Password</label>
          <input
            id={pid}
            name="password"
            type="password"
            autoComplete="current-password"
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </div>
        <ErrorBox error={error} />
        <button type="submit" className="btn btn-primary btn-block" disabled={busy}>
          {busy ? 'Signing in…' : 'Log in'}
        </button>
        <p className="muted small">
          API clients use tokens; see the <a href="/docs">API docs</a>.
        </p>
      </form>
    </main>
  );
}
