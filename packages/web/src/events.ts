/**
 * The live link: one EventSource on /api/v1/events whose events are written into the query
 * cache. The browser reconnects by itself (sending Last-Event-ID); when the server closes the
 * stream for good (e.g. 401) we reopen it with backoff and ?last_event_id=, and after any gap
 * every query is invalidated so nothing stays stale.
 */
import type { QueryClient, QueryKey } from '@tanstack/react-query';
import { keys, RECENT_OPS } from './queries';
import type {
  ApiToken,
  Container,
  Host,
  Image,
  Network,
  Operation,
  Snapshot,
  Template,
  User,
  Vm,
} from './types';

export type LiveStatus = 'connecting' | 'live' | 'reconnecting';

const EVENT_TYPES = [
  'vm',
  'operation',
  'host',
  'user',
  'token',
  'image',
  'network',
  'join_token',
  'template',
  'snapshot',
  'container',
].flatMap((r) => [`${r}.created`, `${r}.updated`, `${r}.deleted`]);

interface Identified {
  id: string;
  updated_at?: string;
}

/**
 * Writes one item into every cached list under `prefix` whose filter accepts it. A list that is
 * being fetched right now is refetched instead, so a response older than the event cannot win.
 */
function upsertLists<T extends Identified>(
  qc: QueryClient,
  prefix: QueryKey,
  item: T,
  opts: { remove?: boolean; accept?: (key: QueryKey, item: T) => boolean; keep?: number } = {},
): void {
  for (const q of qc.getQueryCache().findAll({ queryKey: prefix })) {
    if (q.state.data === undefined) continue;
    if (opts.accept && !opts.accept(q.queryKey, item)) continue;
    if (q.state.fetchStatus === 'fetching') {
      void qc.invalidateQueries({ queryKey: q.queryKey, exact: true });
      continue;
    }
    qc.setQueryData<T[]>(q.queryKey, (old) => {
      if (!old) return old;
      const i = old.findIndex((x) => x.id === item.id);
      if (opts.remove) return i < 0 ? old : old.filter((x) => x.id !== item.id);
      if (i < 0) {
        const next = [...old, item];
        return opts.keep ? next.slice(-opts.keep) : next;
      }
      const cur = old[i]!;
      if (cur.updated_at && item.updated_at && item.updated_at < cur.updated_at) return old;
      const next = old.slice();
      next[i] = item;
      return next;
    });
  }
}

/** Applies one event (type like "vm.updated", data = the resource) to the cache. */
export function applyEvent(qc: QueryClient, type: string, data: unknown): void {
  const dot = type.lastIndexOf('.');
  const resource = type.slice(0, dot);
  const verb = type.slice(dot + 1);
  const removed = verb === 'deleted';
  switch (resource) {
    case 'vm': {
      const vm = data as Vm;
      // The scheduler reserves and releases host capacity without a host event of its own:
      // refresh the hosts when a VM is placed, moved, or removed from a host.
      const before = qc.getQueryData<Vm[]>(keys.vms)?.find((v) => v.id === vm.id);
      if (vm.host_id !== (before?.host_id ?? null) || (removed && vm.host_id)) refreshSoon(qc, keys.hosts);
      // A network's NIC count changes with its VMs, without a network event.
      if (verb !== 'updated' || before?.networks.length !== vm.networks.length)
        refreshSoon(qc, keys.networks);
      upsertLists(qc, keys.vms, vm, { remove: removed });
      if (removed) qc.setQueryData(keys.vm(vm.id), null);
      else if (qc.getQueryData(keys.vm(vm.id)) !== undefined) {
        qc.setQueryData<Vm | null>(keys.vm(vm.id), (old) =>
          old && old.updated_at > vm.updated_at ? old : vm,
        );
      }
      break;
    }
    case 'operation': {
      const op = data as Operation;
      upsertLists(qc, keys.recentOps, op, { keep: RECENT_OPS });
      upsertLists(qc, keys.targetOps(op.target.id), op);
      if (qc.getQueryData(keys.operation(op.id)) !== undefined)
        qc.setQueryData<Operation>(keys.operation(op.id), (old) =>
          old && old.updated_at > op.updated_at ? old : op,
        );
      break;
    }
    case 'image':
      upsertLists(qc, keys.images, data as Image, { remove: removed });
      // Making one image the default of its kind clears the flag on another without its own event.
      if ((data as Image).is_default) refreshSoon(qc, keys.images);
      break;
    case 'network': {
      const network = data as Network;
      upsertLists(qc, keys.networks, network, { remove: removed });
      if (network.is_default) refreshSoon(qc, keys.networks);
      break;
    }
    case 'template':
      upsertLists(qc, keys.templates, data as Template, { remove: removed });
      break;
    case 'snapshot': {
      const snap = data as Snapshot;
      upsertLists(qc, ['snapshots'], snap, {
        remove: removed,
        accept: (key) => key[1] === 'all' || key[1] === snap.vm_id,
      });
      if (qc.getQueryData(keys.snapshot(snap.id)) !== undefined)
        qc.setQueryData<Snapshot | null>(keys.snapshot(snap.id), (old) =>
          removed ? null : old && old.updated_at > snap.updated_at ? old : snap,
        );
      break;
    }
    case 'container': {
      const c = data as Container;
      upsertLists(qc, keys.containers, c, { remove: removed });
      if (removed) qc.setQueryData(keys.container(c.id), null);
      else if (qc.getQueryData(keys.container(c.id)) !== undefined)
        qc.setQueryData<Container | null>(keys.container(c.id), (old) =>
          old && old.updated_at > c.updated_at ? old : c,
        );
      break;
    }
    case 'host':
      upsertLists(qc, keys.hosts, data as Host, { remove: removed });
      // A heartbeat (host.updated every few seconds) is not a mutation: nothing new in the audit log.
      if (verb === 'updated') return;
      break;
    case 'user':
      upsertLists(qc, keys.users, data as User, { remove: removed });
      break;
    case 'token': {
      const token = data as ApiToken;
      upsertLists(qc, ['tokens'], token, {
        remove: removed,
        accept: (key) => key[1] === 'all' || key[1] === token.user_id,
      });
      break;
    }
    default:
      void qc.invalidateQueries({ queryKey: [`${resource.replace('_', '-')}s`] });
  }
  // Mutations land in the audit log, which has no events: refresh an open audit view.
  refreshSoon(qc, ['audit']);
}

const pending = new Map<string, ReturnType<typeof setTimeout>>();
/** Invalidates a query family once, shortly after a burst of events. */
function refreshSoon(qc: QueryClient, queryKey: QueryKey, delayMs = 500): void {
  const id = JSON.stringify(queryKey);
  if (pending.has(id)) return;
  pending.set(
    id,
    setTimeout(() => {
      pending.delete(id);
      void qc.invalidateQueries({ queryKey });
    }, delayMs),
  );
}

/** Opens the stream; answers a function that closes it. */
export function startLiveEvents(qc: QueryClient, onStatus: (s: LiveStatus) => void): () => void {
  let es: EventSource | null = null;
  let lastId: string | null = null;
  let stopped = false;
  let hadGap = false;
  let attempt = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const onEvent = (e: MessageEvent<string>) => {
    if (e.lastEventId) lastId = e.lastEventId;
    try {
      applyEvent(qc, e.type, JSON.parse(e.data));
    } catch {
      // a malformed event must not stop the stream
    }
  };

  const connect = () => {
    if (stopped) return;
    onStatus(attempt === 0 && !hadGap ? 'connecting' : 'reconnecting');
    const url = lastId ? `/api/v1/events?last_event_id=${encodeURIComponent(lastId)}` : '/api/v1/events';
    const source = new EventSource(url, { withCredentials: true });
    es = source;
    for (const t of EVENT_TYPES) source.addEventListener(t, onEvent as EventListener);
    source.onopen = () => {
      attempt = 0;
      onStatus('live');
      if (hadGap) {
        hadGap = false;
        void qc.invalidateQueries({ predicate: (q) => q.queryKey[0] !== 'me' });
      }
    };
    source.onerror = () => {
      hadGap = true;
      onStatus('reconnecting');
      if (source.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      source.close();
      // Closed for good (an HTTP error such as 401): check the session, then retry with backoff.
      void qc.invalidateQueries({ queryKey: keys.me });
      const delay = Math.min(30_000, 1000 * 2 ** attempt++);
      timer = setTimeout(connect, delay);
    };
  };
  connect();

  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    es?.close();
  };
}
