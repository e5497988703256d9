/**
 * The Firecracker MMDS data of a guest: the same settings as the config drive, laid out as
 * EC2's instance metadata is, so guests read it the way they read EC2's (see README.md):
 *
 * ```json
 * {"latest": {"meta-data": {"instance-id": "…", "local-hostname": "…"},
 *             "user-data": "#cloud-config\n…",
 *             "network-config": "version: 2\n…"}}
 * ```
 */
import type { AgentGuestConfig } from '@nqvm/api';
import type { CloudInitData } from './cloud-config';

/** Firecracker's default limit of an API request body, which bounds the MMDS store. */
export const MMDS_MAX_BYTES = 51_200;

export function mmdsDocument(cfg: AgentGuestConfig, data: CloudInitData): Record<string, unknown> {
  return {
    latest: {
      'meta-data': { 'instance-id': cfg.instance_id, 'local-hostname': cfg.hostname },
      'user-data': data.userData,
      ...(data.networkConfig !== null ? { 'network-config': data.networkConfig } : {}),
    },
  };
}
