import { BootStepError } from './types';

/**
 * A boot is an ordered list of named steps, each with an optional undo. When a step fails,
 * the steps that completed are undone in reverse order and the error names the failed step.
 *
 * @example
 * await runPipeline([
 *   { name: 'prepare-disk', run: () => makeDisk(), undo: () => rmDisk() },
 *   { name: 'start-vmm', run: () => spawnVmm(), undo: () => killVmm() },
 * ]);
 */
export interface PipelineStep {
  name: string;
  run: () => Promise<void> | void;
  undo?: () => Promise<void> | void;
}

export async function runPipeline(steps: PipelineStep[], signal?: AbortSignal): Promise<void> {
  const done: PipelineStep[] = [];
  for (const step of steps) {
    try {
      signal?.throwIfAborted();
      await step.run();
      done.push(step);
    } catch (err) {
      for (const prev of done.reverse()) {
        try {
          await prev.undo?.();
        } catch {
          // Best effort: the original failure is what the caller needs to see.
        }
      }
      try {
        await step.undo?.();
      } catch {
        // The failed step may have partly run; its undo must tolerate that.
      }
      throw new BootStepError(step.name, err);
    }
  }
}
