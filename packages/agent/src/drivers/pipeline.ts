import { BootStepError, type StepTiming } from './types';

/**
 * A boot is an ordered list of named steps, each with an optional undo. When a step fails,
 * the steps that completed are undone in reverse order and the error names the failed step.
 * Answers how long each step took (monotonic clock), in order: where a boot's time goes.
 *
 * @example
 * const timings = await runPipeline([
 *   { name: 'prepare-disk', run: () => makeDisk(), undo: () => rmDisk() },
 *   { name: 'start-vmm', run: () => spawnVmm(), undo: () => killVmm() },
 * ]);
 */
export interface PipelineStep {
  name: string;
  run: () => Promise<void> | void;
  undo?: () => Promise<void> | void;
}

export async function runPipeline(steps: PipelineStep[], signal?: AbortSignal): Promise<StepTiming[]> {
  const done: PipelineStep[] = [];
  const timings: StepTiming[] = [];
  for (const step of steps) {
    try {
      signal?.throwIfAborted();
      const start = performance.now();
      await step.run();
      timings.push({ name: step.name, ms: performance.now() - start });
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
  return timings;
}
