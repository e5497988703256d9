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
export type Image = z.infer<typeof S.Image>;
export type ImageKind = S.ImageKind;
export type ImageCreate = z.input<typeof S.ImageCreate>;
export type ImageActionResponse = z.infer<typeof S.ImageActionResponse>;
export type Network = z.infer<typeof S.Network>;
export type NetworkKind = S.NetworkKind;
export type NetworkCreate = z.input<typeof S.NetworkCreate>;
export type Template = z.infer<typeof S.Template>;
export type TemplateCreate = z.input<typeof S.TemplateCreate>;
export type TemplateSpecInput = z.input<typeof S.TemplateSpecInput>;
export type TemplateOverrides = z.input<typeof S.TemplateOverrides>;
export type Snapshot = z.infer<typeof S.Snapshot>;
export type SnapshotType = S.SnapshotType;
export type SnapshotStatus = S.SnapshotStatus;
export type SnapshotCreate = z.input<typeof S.SnapshotCreate>;
export type SnapshotActionResponse = z.infer<typeof S.SnapshotActionResponse>;
export type SnapshotInstantiateResponse = z.infer<typeof S.SnapshotInstantiateResponse>;
export type Container = z.infer<typeof S.Container>;
export type ContainerStatus = S.ContainerStatus;
export type ContainerCreate = z.input<typeof S.ContainerCreate>;
export type ContainerActionResponse = z.infer<typeof S.ContainerActionResponse>;
export type ContainerStats = z.infer<typeof S.ContainerStats>;
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
