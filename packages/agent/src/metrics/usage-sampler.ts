import type { RunningVmm } from '../agent/vm-runtime';
import type { UsageHistory } from './usage-history';
import { measureVm } from './vm-usage';

export interface UsageSamplerSource {
  running(): RunningVmm[];
  /** Whether the agent still holds a VM (a deleted one's history goes). */
  holds(vmId: string): boolean;
  taps(): Promise<Map<string, Array<{ nicIndex: number; tap: string }>>>;
}

/**
 * Samples every running VM into `history` each `intervalMs`; a round still measuring when the
 * next is due is not overlapped (that second has no point). Returns the stop function.
 *
 * @example
 * const stop = startUsageSampler(source, history); // ... stop() at shutdown
 */
export function startUsageSampler(
  source: UsageSamplerSource,
  history: UsageHistory,
  intervalMs = 1_000,
): () => void {
  let busy = false;
  const round = async () => {
    if (busy) return;
    busy = true;
    try {
      const now = Date.now();
      const taps = await source
        .taps()
        .catch(() => new Map<string, Array<{ nicIndex: number; tap: string }>>());
      const usages = await Promise.all(source.running().map((vm) => measureVm(vm, taps.get(vm.vmId) ?? [])));
      for (const u of usages) if (u) history.record(u, now);
      for (const id of history.ids()) if (!source.holds(id)) history.forget(id);
    } catch {
      // A VM going away mid-round: the next round measures what runs then.
    } finally {
      busy = false;
    }
  };
  const timer = setInterval(() => void round(), intervalMs);
  timer.unref();
  return () => clearInterval(timer);
}
