import { z } from 'zod';

/** GET /v1/vms/{id}/usage (agent) and /api/v1/vms/{id}/usage (manager): `?resolution=1s|1m`. */
export const VmUsageQuery = z.object({ resolution: z.enum(['1s', '1m']).default('1s') });
export type VmUsageQuery = z.infer<typeof VmUsageQuery>;

/** One sample; counters are cumulative since the VMM started (rates come from consecutive points). */
export const VmUsagePoint = z.object({
  /** Milliseconds since the epoch. */
  t: z.number(),
  cpu_seconds: z.number(),
  rss_bytes: z.number(),
  disk_read_bytes: z.number(),
  disk_written_bytes: z.number(),
  net_rx_bytes: z.number(),
  net_tx_bytes: z.number(),
});

/** A VM's usage history as its host keeps it: 1 s points for 10 minutes, 1 min points for 7 days. */
export const VmUsageHistory = z.object({
  vm_id: z.string(),
  resolution: z.enum(['1s', '1m']),
  step_s: z.number().int(),
  points: z.array(VmUsagePoint),
});
export type VmUsageHistory = z.infer<typeof VmUsageHistory>;
