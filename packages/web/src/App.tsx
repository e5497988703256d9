/** The shell: auth gate, live event stream, navigation and the page router. */
import { useQueryClient } from '@tanstack/react-query';
import { useEffect, useState } from 'react';
import { api, setCsrfToken, setUnauthorizedHandler } from './api';
import { type LiveStatus, startLiveEvents } from './events';
import { AccountPage } from './pages/Account';
import { AuditPage } from './pages/Audit';
import { ContainerDetailPage } from './pages/ContainerDetail';
import { ContainersPage } from './pages/Containers';
import { DashboardPage } from './pages/Dashboard';
import { HostsPage } from './pages/Hosts';
import { ImagesPage } from './pages/Images';
import { LoginPage } from './pages/Login';
import { NetworksPage } from './pages/Networks';
import { SnapshotsPage } from './pages/Snapshots';
import { TemplatesPage } from './pages/Templates';
import { UsersPage } from './pages/Users';
import { VmDetailPage } from './pages/VmDetail';
import { VmListPage } from './pages/VmList';
import { keys, roleAtLeast, useMe } from './queries';
import { Link, match, navigate, useLocation } from './router';
import { setTheme, type ThemeChoice, useTheme, useThemeColor } from './theme';
import type { Me, Role } from './types';
import { ErrorBox, Loading, Toasts, toastError } from './ui';

export function App() {
  const qc = useQueryClient();
  const me = useMe();
  const { pathname } = useLocation();
  useThemeColor();

  useEffect(() => {
    setUnauthorizedHandler(() => qc.setQueryData(keys.me, null));
    return () => setUnauthorizedHandler(null);
  }, [qc]);

  if (me.isPending) return <Loading what="nqvm" />;
  if (me.isError)
    return (
      <main className="center-page">
        <ErrorBox error={me.error} title="The manager cannot be reached" />
      </main>
    );
  if (!me.data) {
    const back = pathname === '/' ? '' : `?next=${encodeURIComponent(pathname)}`;
    return (
      <>
        {pathname !== '/login' ? <Redirect to={`/login${back}`} /> : null}
        <LoginPage />
        <Toasts />
      </>
    );
  }
  if (pathname === '/login') return <Redirect to="/" />;
  return <Shell me={me.data} />;
}

function Redirect({ to }: { to: string }) {
  useEffect(() => navigate(to, { replace: true }), [to]);
  return null;
}

interface NavItem {
  to: string;
  label: string;
  role: Role;
}
const NAV: NavItem[] = [
  { to: '/', label: 'Dashboard', role: 'viewer' },
  { to: '/vms', label: 'Virtual machines', role: 'viewer' },
  { to: '/containers', label: 'Containers', role: 'viewer' },
  { to: '/templates', label: 'Templates', role: 'viewer' },
  { to: '/snapshots', label: 'Snapshots', role: 'viewer' },
  { to: '/images', label: 'Images', role: 'viewer' },
  { to: '/networks', label: 'Networks', role: 'viewer' },
  { to: '/hosts', label: 'Hosts', role: 'viewer' },
  { to: '/users', label: 'Users', role: 'admin' },
  { to: '/audit', label: 'Audit log', role: 'admin' },
  { to: '/account', label: 'Account & tokens', role: 'viewer' },
];

function Shell({ me }: { me: Me }) {
  const qc = useQueryClient();
  const { pathname } = useLocation();
  const [live, setLive] = useState<LiveStatus>('connecting');
  const [menuOpen, setMenuOpen] = useState(false);

  useEffect(() => startLiveEvents(qc, setLive), [qc]);
  // biome-ignore lint/correctness/useExhaustiveDependencies: close the phone menu on every navigation
  useEffect(() => setMenuOpen(false), [pathname]);

  const logout = async () => {
    try {
      await api('POST', '/api/v1/auth/logout');
    } catch (err) {
      toastError(err, 'Logout');
    }
    setCsrfToken(null);
    qc.clear();
    qc.setQueryData(keys.me, null);
    navigate('/login');
  };

  const items = NAV.filter((n) => roleAtLeast(me.effective_role, n.role));
  const active = (to: string) =>
    to === '/' ? pathname === '/' : pathname === to || pathname.startsWith(`${to}/`);

  return (
    <div className={`shell${menuOpen ? ' menu-open' : ''}`}>
      <header className="topbar">
        <button
          type="button"
          className="btn-icon menu-btn"
          aria-label="Menu"
          aria-expanded={menuOpen}
          onClick={() => setMenuOpen((o) => !o)}
        >
          ☰
        </button>
        <Link to="/" className="brand">
          <img src="/favicon.svg" alt="" width="24" height="24" />
          nqvm
        </Link>
        <span className="spacer" />
        <span className={`live live-${live}`} title={`Live updates: ${live}`} data-testid="live">
          <span className="dot" aria-hidden="true" />
          <span className="hide-sm">{live === 'live' ? 'live' : live}</span>
        </span>
        <ThemeToggle />
        <span className="user hide-sm" title={`role: ${me.effective_role}`}>
          {me.username} <span className="muted">({me.effective_role})</span>
        </span>
        <button type="button" className="btn btn-ghost" onClick={logout}>
          Log out
        </button>
      </header>
      <nav className="sidebar" aria-label="Main">
        {items.map((n) => (
          <Link key={n.to} to={n.to} className={active(n.to) ? 'active' : undefined}>
            {n.label}
          </Link>
        ))}
        <a href="/docs" className="docs-link">
          API docs ↗
        </a>
      </nav>
      <main className="content">
        <Page me={me} pathname={pathname} />
      </main>
      <Toasts />
    </div>
  );
}

function Page({ me, pathname }: { me: Me; pathname: string }) {
  const role = me.effective_role;
  if (pathname === '/') return <DashboardPage />;
  if (pathname === '/vms') return <VmListPage />;
  const vm = match('/vms/:id/:tab?', pathname);
  if (vm) return <VmDetailPage id={vm.id!} tab={vm.tab ?? 'summary'} />;
  if (pathname === '/containers') return <ContainersPage />;
  const container = match('/containers/:id/:tab?', pathname);
  if (container) return <ContainerDetailPage id={container.id!} tab={container.tab ?? 'overview'} />;
  if (pathname === '/templates') return <TemplatesPage />;
  if (pathname === '/snapshots') return <SnapshotsPage />;
  if (pathname === '/images') return <ImagesPage />;
  if (pathname === '/networks') return <NetworksPage />;
  if (pathname === '/hosts') return <HostsPage />;
  if (pathname === '/account') return <AccountPage me={me} />;
  if (pathname === '/users' && roleAtLeast(role, 'admin')) return <UsersPage me={me} />;
  if (pathname === '/audit' && roleAtLeast(role, 'admin')) return <AuditPage />;
  return (
    <div className="page">
      <h1>Not found</h1>
      <p>
        Nothing here (or it needs a higher role). <Link to="/">Back to the dashboard</Link>.
      </p>
    </div>
  );
}

const NEXT_THEME: Record<ThemeChoice, ThemeChoice> = { system: 'light', light: 'dark', dark: 'system' };
const THEME_ICON: Record<ThemeChoice, string> = { system: '◐', light: '☀', dark: '☾' };

function ThemeToggle() {
  const { choice } = useTheme();
  return (
    <button
      type="button"
      className="btn-icon"
      title={`Theme: ${choice} (click for ${NEXT_THEME[choice]})`}
      aria-label={`Theme: ${choice}`}
      data-testid="theme-toggle"
      onClick={() => setTheme(NEXT_THEME[choice])}
    >
      {THEME_ICON[choice]}
    </button>
  );
}
