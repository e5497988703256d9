/**
 * Server state: one TanStack Query cache, filled by list requests and then kept current by the
 * SSE stream (events.ts), so no page ever refreshes by hand.
 */
import { QueryClient, useQuery, useQueryClient } from '@tanstack/react-query';
import { ApiError, get, listAll, listTail, withQuery } from './api';
import type {
  ApiToken,
  AuditEvent,
  Host,
  ImageSummary,
  JoinToken,
  Me,
  Operation,
  Page,
  Role,
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
    queryFn: ({ signal }) => listTail<Operation>('/api/v1/operations', RECENT_OPS, signal),
  });

export const useTargetOps = (id: string) =>
  useQuery({
    queryKey: keys.targetOps(id),
    queryFn: ({ signal }) => listAll<Operation>(withQuery('/api/v1/operations', { target_id: id }), signal),
  });

/** Heartbeats publish no event unless status or capacity change: refresh "last heartbeat" slowly. */
export const useHosts = () =>
  useQuery({
    queryKey: keys.hosts,
    queryFn: ({ signal }) => listAll<Host>('/api/v1/hosts', signal),
    refetchInterval: 30_000,
  });

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
      listTail<AuditEvent>(withQuery('/api/v1/audit', { action: action || undefined }), 500, signal),
    staleTime: 0,
    refetchInterval: 15_000,
  });

/** Images: absent until the images API exists; the wizard hides its fields while this fails. */
export const useImages = () =>
  useQuery({
    queryKey: keys.images,
    queryFn: async ({ signal }) => (await get<Page<ImageSummary>>('/api/v1/images?limit=500', signal)).items,
    retry: false,
  });
