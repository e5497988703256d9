/** API shapes, inferred from the shared zod schemas (types only: nothing of zod reaches the bundle). */
import type * as S from '@nqvm/api';
import type { z } from 'zod';

export type Role = S.Role;
export type VmState = S.VmState;
export type Vm = z.infer<typeof S.Vm>;
export type VmCreate = z.input<typeof S.VmCreate>;
export type VmActionResponse = z.infer<typeof S.VmActionResponse>;
export type Operation = z.infer<typeof S.Operation>;
export type Host = z.infer<typeof S.Host>;
export type User = z.infer<typeof S.User>;
export type ApiToken = z.infer<typeof S.ApiToken>;
export type ApiTokenCreated = z.infer<typeof S.ApiTokenCreated>;
export type JoinToken = z.infer<typeof S.JoinToken>;
export type JoinTokenCreated = z.infer<typeof S.JoinTokenCreated>;
export type AuditEvent = z.infer<typeof S.AuditEvent>;
export type LoginResponse = z.infer<typeof S.LoginResponse>;
export type Me = User & { effective_role: Role; via: 'session' | 'token' };

export interface Page<T> {
  items: T[];
  next: string | null;
}

/** Images arrive with a later API; only what the wizard needs. */
export interface ImageSummary {
  id: string;
  name?: string;
  kind?: string;
  is_default?: boolean;
}
