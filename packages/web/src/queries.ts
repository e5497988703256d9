/**
 * Server state: one TanStack Query cache, filled by list requests and then kept current by the
 * SSE stream (events.ts), so no page ever refreshes by hand.
 */
import { QueryClient, useQuery, useQueryClient } from '@tanstack/react-query';
import { ApiError, get, listAll, listTail, withQuery } from './api';
import type {
  ApiToken,
  AuditEvent,
  Container,
  ContainerStats,
  Host,
  Image,
  JoinToken,
  Me,
  Network,
  Operation,
  Role,
  Snapshot,
  Template,
  User,
  Vm,
} from './types';

export const RECENT_OPS = 100;

export const keys = {
  me: ['me'] as const,
  vms: ['vms'] as const,
  vm: (id: string) => ['vm', id] as const,
  recentOps: ['operations', 'recent'] as const,
  targetOps: (id: string) => ['operations', 'target', id] as const,
  hosts: ['hosts'] as const,
  joinTokens: ['join-tokens'] as const,
  users: ['users'] as const,
  tokens: (scope: string) => ['tokens', scope] as const,
  audit: (action: string) => ['audit', action] as const,
  images: ['images'] as const,
  networks: ['networks'] as const,
  operation: (id: string) => ['operation', id] as const,
  templates: ['templates'] as const,
  /** scope: a VM id (that VM's snapshots) or "all". */
  snapshots: (scope: string) => ['snapshots', scope] as const,
  snapshot: (id: string) => ['snapshot', id] as const,
  containers: ['containers'] as const,
  container: (id: string) => ['container', id] as const,
  containerStats: (id: string) => ['container-stats', id] as const,
};

export function createQueryClient(): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        // The event stream keeps lists current; a reconnect invalidates everything.
        staleTime: Number.POSITIVE_INFINITY,
        refetchOnWindowFocus: false,
        retry: (count, err) =>
          !(err instanceof ApiError && err.status >= 400 && err.status < 500) && count < 2,
      },
    },
  });
}

export function useMe() {
  return useQuery({
    queryKey: keys.me,
    queryFn: async ({ signal }): Promise<Me | null> => {
      try {
        return await get<Me>('/api/v1/auth/me', signal);
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) return null;
        throw err;
      }
    },
  });
}

const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

/** Whether the signed-in user's effective role reaches `role`. */
export function useCan(role: Role): boolean {
  const { data: me } = useMe();
  return me ? RANK[me.effective_role] >= RANK[role] : false;
}

export function roleAtLeast(have: Role, need: Role): boolean {
  return RANK[have] >= RANK[need];
}

export const useVms = () =>
  useQuery({ queryKey: keys.vms, queryFn: ({ signal }) => listAll<Vm>('/api/v1/vms', signal) });

export function useVm(id: string) {
  const qc = useQueryClient();
  return useQuery<Vm | null>({
    queryKey: keys.vm(id),
    queryFn: ({ signal }) => get<Vm | null>(`/api/v1/vms/${encodeURIComponent(id)}`, signal),
    placeholderData: () => qc.getQueryData<Vm[]>(keys.vms)?.find((v) => v.id === id),
  });
}

export const useRecentOps = () =>
  useQuery({
    queryKey: keys.recentOps,
    queryFn: ({ signal }) =>
      listTail<Operation>(withQuery('/api/v1/operations', { order: 'asc' }), RECENT_OPS, signal),
  });

export const useTargetOps = (id: string) =>
  useQuery({
    queryKey: keys.targetOps(id),
    queryFn: ({ signal }) =>
      listAll<Operation>(withQuery('/api/v1/operations', { target_id: id, order: 'asc' }), signal),
  });

/** Every heartbeat publishes host.updated: the event stream keeps "last heartbeat" current. */
export const useHosts = () =>
  useQuery({ queryKey: keys.hosts, queryFn: ({ signal }) => listAll<Host>('/api/v1/hosts', signal) });

export const useJoinTokens = (enabled: boolean) =>
  useQuery({
    queryKey: keys.joinTokens,
    enabled,
    queryFn: ({ signal }) => listAll<JoinToken>('/api/v1/join-tokens', signal),
  });

export const useUsers = (enabled: boolean) =>
  useQuery({
    queryKey: keys.users,
    enabled,
    queryFn: ({ signal }) => listAll<User>('/api/v1/users', signal),
  });

/** scope: a user id (that user's tokens) or "all" (admins). */
export const useTokens = (scope: string) =>
  useQuery({
    queryKey: keys.tokens(scope),
    queryFn: ({ signal }) =>
      listAll<ApiToken>(
        withQuery('/api/v1/tokens', { user_id: scope === 'all' ? undefined : scope }),
        signal,
      ),
  });

/** The audit log is not on the event stream: it follows other events (events.ts) and polls slowly. */
export const useAudit = (action: string) =>
  useQuery({
    queryKey: keys.audit(action),
    queryFn: ({ signal }) =>
      listTail<AuditEvent>(
        withQuery('/api/v1/audit', { action: action || undefined, order: 'asc' }),
        500,
        signal,
      ),
    staleTime: 0,
    refetchInterval: 15_000,
  });

/** Images; the wizard hides its image fields while this fails. */
export const useImages = () =>
  useQuery({
    queryKey: keys.images,
    queryFn: ({ signal }) => listAll<Image>('/api/v1/images', signal),
    retry: false,
  });

/** Networks; the wizard hides its network field while this fails. */
export const useNetworks = () =>
  useQuery({
    queryKey: keys.networks,
    queryFn: ({ signal }) => listAll<Network>('/api/v1/networks', signal),
    retry: false,
  });

export const useTemplates = () =>
  useQuery({
    queryKey: keys.templates,
    queryFn: ({ signal }) => listAll<Template>('/api/v1/templates', signal),
  });

/** Snapshots of one VM, or of all VMs (scope "all"). */
export const useSnapshots = (scope: string) =>
  useQuery({
    queryKey: keys.snapshots(scope),
    queryFn: ({ signal }) =>
      listAll<Snapshot>(
        withQuery('/api/v1/snapshots', { vm_id: scope === 'all' ? undefined : scope }),
        signal,
      ),
  });

/** One snapshot, kept current by snapshot events (a dialog follows it while it is taken). */
export const useSnapshot = (id: string | null) =>
  useQuery<Snapshot | null>({
    queryKey: keys.snapshot(id ?? ''),
    enabled: id !== null,
    queryFn: ({ signal }) => get<Snapshot>(`/api/v1/snapshots/${encodeURIComponent(id ?? '')}`, signal),
  });

export const useContainers = () =>
  useQuery({
    queryKey: keys.containers,
    queryFn: ({ signal }) => listAll<Container>('/api/v1/containers', signal),
  });

/** One container, kept current by container events (null once it was deleted). */
export function useContainer(id: string) {
  const qc = useQueryClient();
  return useQuery<Container | null>({
    queryKey: keys.container(id),
    queryFn: ({ signal }) => get<Container>(`/api/v1/containers/${encodeURIComponent(id)}`, signal),
    placeholderData: () => qc.getQueryData<Container[]>(keys.containers)?.find((c) => c.id === id),
  });
}

/** Stats are not on the event stream: polled while a component shows them (the stats tab). */
export const useContainerStats = (id: string) =>
  useQuery({
    queryKey: keys.containerStats(id),
    queryFn: ({ signal }) =>
      get<ContainerStats>(`/api/v1/containers/${encodeURIComponent(id)}/stats`, signal),
    staleTime: 0,
    refetchInterval: 3000,
    retry: false,
  });

const DONE: Operation['status'][] = ['succeeded', 'failed', 'cancelled'];
export const opDone = (op: Operation | undefined | null) => !!op && DONE.includes(op.status);

/** One operation, kept current by operation.updated events and, as a fallback, a long poll. */
export const useOperation = (id: string | null) =>
  useQuery({
    queryKey: keys.operation(id ?? ''),
    enabled: id !== null,
    queryFn: ({ signal }) => get<Operation>(`/api/v1/operations/${encodeURIComponent(id ?? '')}`, signal),
    refetchInterval: (q) => (opDone(q.state.data) ? false : 3000),
  });
