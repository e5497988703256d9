/** Networks: the live list; admins create and delete them. */
import { type FormEvent, useState } from 'react';
import { api } from '../api';
import { formatTime, timeAgo, useNow } from '../format';
import { useCan, useNetworks } from '../queries';
import type { Network, NetworkCreate, NetworkKind } from '../types';
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

const NAME_RE = /^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/;
const CIDR_RE = /^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/;
const IP_RE = /^(\d{1,3}\.){3}\d{1,3}$/;
const IF_RE = /^[A-Za-z0-9_.-]{1,15}$/;

export function NetworksPage() {
  const networks = useNetworks();
  const isAdmin = useCan('admin');
  const now = useNow();
  const [creating, setCreating] = useState(false);
  const [deleting, setDeleting] = useState<Network | null>(null);
  const rows = (networks.data ?? []).slice().sort((a, b) => a.name.localeCompare(b.name));
  const makeDefault = async (n: Network) => {
    try {
      await api('PATCH', `/api/v1/networks/${n.id}`, { is_default: true });
      toast('ok', `${n.name} is now the default network`);
    } catch (err) {
      toastError(err, n.name);
    }
  };

  return (
    <div className="page">
      <PageHead title="Networks" count={networks.data?.length}>
        {isAdmin ? (
          <button type="button" className="btn btn-primary" onClick={() => setCreating(true)}>
            Create network
          </button>
        ) : null}
      </PageHead>
      <QueryStatus query={networks} what="networks" />
      {networks.data && rows.length === 0 ? (
        <Empty>
          No networks yet.
          {isAdmin ? ' Create one; VMs created without a network get a NIC on the default one.' : ''}
        </Empty>
      ) : null}
      {rows.length ? (
        <div className="table-wrap">
          <table className="table" data-testid="networks-table">
            <thead>
              <tr>
                <th>Name</th>
                <th>Kind</th>
                <th>Subnet</th>
                <th className="hide-sm">Gateway</th>
                <th className="hide-sm">DHCP</th>
                <th className="num">NICs</th>
                <th className="hide-md">Created</th>
                {isAdmin ? <th aria-label="Actions" /> : null}
              </tr>
            </thead>
            <tbody>
              {rows.map((n) => (
                <tr key={n.id} data-network={n.name}>
                  <td>
                    <span className="strong">{n.name}</span>{' '}
                    {n.is_default ? <Badge tone="info">default</Badge> : null}
                    {n.bridge || n.uplink ? (
                      <div className="small muted">
                        {n.bridge ? `bridge ${n.bridge}` : ''}
                        {n.bridge && n.uplink ? ', ' : ''}
                        {n.uplink ? `uplink ${n.uplink}` : ''}
                      </div>
                    ) : null}
                  </td>
                  <td>{n.kind}</td>
                  <td>{n.cidr ? <code>{n.cidr}</code> : <span className="muted">from the LAN</span>}</td>
                  <td className="hide-sm">{n.gateway ? <code>{n.gateway}</code> : '—'}</td>
                  <td
                    className="hide-sm"
                    title="nqvm serves DHCP on nat and isolated networks, each NIC's address reserved for its MAC"
                  >
                    {n.kind === 'bridged' ? 'LAN' : n.dhcp ? 'guests ask' : 'reserved'}
                  </td>
                  <td className="num">{n.nic_count}</td>
                  <td className="hide-md" title={formatTime(n.created_at)}>
                    {timeAgo(n.created_at, now)}
                  </td>
                  {isAdmin ? (
                    <td className="actions">
                      {n.is_default ? null : (
                        <button type="button" className="btn btn-small" onClick={() => makeDefault(n)}>
                          Set default
                        </button>
                      )}
                      <button
                        type="button"
                        className="btn btn-small btn-danger-outline"
                        onClick={() => setDeleting(n)}
                      >
                        Delete
                      </button>
                    </td>
                  ) : null}
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      ) : null}
      {isAdmin ? (
        <>
          <CreateNetwork open={creating} onClose={() => setCreating(false)} />
          <ConfirmDialog
            open={deleting !== null}
            title={`Delete network ${deleting?.name ?? ''}`}
            message="The manager refuses while a VM has a NIC on it. Hosts remove its bridge when no VM uses it."
            confirmLabel="Delete"
            onConfirm={() => api('DELETE', `/api/v1/networks/${deleting?.id}`)}
            onClose={() => setDeleting(null)}
          />
        </>
      ) : null}
    </div>
  );
}

interface Form {
  name: string;
  kind: NetworkKind;
  cidr: string;
  gateway: string;
  dhcp: boolean;
  bridgeMode: 'existing' | 'uplink';
  bridge: string;
  uplink: string;
  is_default: boolean;
}
const INITIAL: Form = {
  name: '',
  kind: 'nat',
  cidr: '',
  gateway: '',
  dhcp: true,
  bridgeMode: 'existing',
  bridge: '',
  uplink: '',
  is_default: false,
};

function toBody(f: Form): NetworkCreate | string {
  if (!NAME_RE.test(f.name)) return 'name: letters, digits, "-", "_" or "." (1-63), starting alphanumeric';
  if (f.kind === 'bridged') {
    const iface = f.bridgeMode === 'existing' ? f.bridge : f.uplink;
    if (!IF_RE.test(iface)) return 'an interface name: 1-15 of letters, digits, _ . -';
    return {
      name: f.name,
      kind: 'bridged',
      ...(f.bridgeMode === 'existing' ? { bridge: iface } : { uplink: iface }),
      is_default: f.is_default,
    };
  }
  if (!CIDR_RE.test(f.cidr)) return 'subnet: an IPv4 prefix such as 10.213.0.0/24';
  if (f.gateway && !IP_RE.test(f.gateway)) return 'gateway: an IPv4 address';
  if (f.uplink && f.kind === 'nat' && !IF_RE.test(f.uplink)) return 'uplink: an interface name';
  return {
    name: f.name,
    kind: f.kind,
    cidr: f.cidr,
    ...(f.gateway ? { gateway: f.gateway } : {}),
    dhcp: f.dhcp,
    ...(f.kind === 'nat' && f.uplink ? { uplink: f.uplink } : {}),
    is_default: f.is_default,
  };
}

function CreateNetwork({ open, onClose }: { open: boolean; onClose: () => void }) {
  const [f, setF] = useState<Form>(INITIAL);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const set = <K extends keyof Form>(k: K, v: Form[K]) => setF((old) => ({ ...old, [k]: v }));
  const close = () => {
    setF(INITIAL);
    setError(null);
    onClose();
  };
  const submit = async (e: FormEvent) => {
    e.preventDefault();
    const body = toBody(f);
    if (typeof body === 'string') return setError(new Error(body));
    setBusy(true);
    setError(null);
    try {
      const n = await api<Network>('POST', '/api/v1/networks', body);
      toast('ok', `Created network ${n.name}`);
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
      title="Create network"
      onClose={close}
      footer={
        <>
          <button type="button" className="btn" onClick={close}>
            Cancel
          </button>
          <button type="submit" form="create-network" className="btn btn-primary" disabled={busy}>
            Create
          </button>
        </>
      }
    >
      <form id="create-network" className="stack" onSubmit={submit}>
        <Field label="Name" htmlFor="cn-name">
          <input
            id="cn-name"
            autoComplete="off"
            value={f.name}
            onChange={(e) => set('name', e.target.value)}
          />
        </Field>
        <Field
          label="Kind"
          htmlFor="cn-kind"
          hint={
            f.kind === 'nat'
              ? 'a private subnet with outbound NAT through the host'
              : f.kind === 'isolated'
                ? 'a private subnet with no way out'
                : 'VMs join a LAN bridge; the LAN gives addresses'
          }
        >
          <select id="cn-kind" value={f.kind} onChange={(e) => set('kind', e.target.value as NetworkKind)}>
            <option value="nat">nat</option>
            <option value="bridged">bridged</option>
            <option value="isolated">isolated</option>
          </select>
        </Field>
        {f.kind === 'bridged' ? (
          <>
            <Field label="Bridge" htmlFor="cn-bmode">
              <select
                id="cn-bmode"
                value={f.bridgeMode}
                onChange={(e) => set('bridgeMode', e.target.value as Form['bridgeMode'])}
              >
                <option value="existing">join an existing bridge</option>
                <option value="uplink">make a bridge over an uplink interface</option>
              </select>
            </Field>
            {f.bridgeMode === 'existing' ? (
              <Field label="Bridge interface" htmlFor="cn-bridge">
                <input
                  id="cn-bridge"
                  autoComplete="off"
                  placeholder="br0"
                  value={f.bridge}
                  onChange={(e) => set('bridge', e.target.value)}
                />
              </Field>
            ) : (
              <Field label="Uplink interface" htmlFor="cn-uplink">
                <input
                  id="cn-uplink"
                  autoComplete="off"
                  placeholder="eth1"
                  value={f.uplink}
                  onChange={(e) => set('uplink', e.target.value)}
                />
              </Field>
            )}
          </>
        ) : (
          <>
            <Field label="Subnet" htmlFor="cn-cidr">
              <input
                id="cn-cidr"
                autoComplete="off"
                placeholder="10.213.0.0/24"
                value={f.cidr}
                onChange={(e) => set('cidr', e.target.value.trim())}
              />
            </Field>
            <Field label="Gateway" htmlFor="cn-gw" hint="optional; default: the first host address">
              <input
                id="cn-gw"
                autoComplete="off"
                value={f.gateway}
                onChange={(e) => set('gateway', e.target.value.trim())}
              />
            </Field>
            {f.kind === 'nat' ? (
              <Field label="Uplink interface" htmlFor="cn-uplink" hint="optional; the way out">
                <input
                  id="cn-uplink"
                  autoComplete="off"
                  value={f.uplink}
                  onChange={(e) => set('uplink', e.target.value)}
                />
              </Field>
            ) : null}
            <label className="check">
              <input type="checkbox" checked={f.dhcp} onChange={(e) => set('dhcp', e.target.checked)} />
              Guests ask DHCP for their address (cloud-init), instead of having it set (DHCP is served either
              way, each address reserved for its NIC)
            </label>
          </>
        )}
        <label className="check">
          <input
            type="checkbox"
            checked={f.is_default}
            onChange={(e) => set('is_default', e.target.checked)}
          />
          Default network (VMs created without a network get a NIC here)
        </label>
        <ErrorBox error={error} />
      </form>
    </Modal>
  );
}
