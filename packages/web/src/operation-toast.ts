/**
 * Every long action reports its end where the user started it: a toast says the work is under
 * way, follows the operation (GET /api/v1/operations/{id}?wait=, which answers as soon as it
 * ends) and turns into its success or the operation's own error message.
 */
import { ApiError, get } from './api';
import { opDone } from './queries';
import type { Operation } from './types';
import { toastPending } from './ui';

/** A busy toast stays this long at most; the outcome is shown again when the operation ends. */
const BUSY_MS = 30_000;
const WAIT_S = 30;

export interface OperationTexts {
  /** While it runs, e.g. "Starting web-1". */
  running: string;
  /** Once it succeeded, e.g. "web-1 is running". */
  succeeded: string;
  /** Prefix of the error, e.g. "Start web-1 failed". */
  failed: string;
}

/**
 * The one line a finished operation ends in.
 *
 * @example
 * operationOutcome(op, texts) // { tone: 'err', text: 'Create web-1 failed: no host has room for ...' }
 */
export function operationOutcome(
  op: Operation,
  texts: OperationTexts,
): { tone: 'ok' | 'err' | 'info'; text: string } {
  if (op.status === 'succeeded') return { tone: 'ok', text: texts.succeeded };
  // Cancelled, or superseded by a later action (a force stop during a shutdown): not a failure.
  if (op.status === 'cancelled') {
    const why = op.progress.message ? ` (${op.progress.message})` : '';
    return { tone: 'info', text: `${texts.running}: cancelled${why}` };
  }
  return { tone: 'err', text: `${texts.failed}: ${op.error?.message ?? 'the operation failed'}` };
}

/**
 * Shows a toast for `op` and follows it to its end; answers the finished operation (or the last
 * state seen when it can no longer be followed).
 *
 * @example
 * const out = await api<VmActionResponse>('POST', `/api/v1/vms/${id}/start`);
 * void followOperation(out.operation, { running: 'Starting web-1', succeeded: 'web-1 is running', failed: 'Start web-1 failed' });
 */
export async function followOperation(op: Operation, texts: OperationTexts): Promise<Operation> {
  const t = toastPending(`${texts.running}…`);
  const started = Date.now();
  let cur = op;
  let failures = 0;
  let parked = false;
  while (!opDone(cur)) {
    try {
      cur = await get<Operation>(`/api/v1/operations/${encodeURIComponent(op.id)}?wait=${WAIT_S}`);
      failures = 0;
    } catch (err) {
      // Gone (pruned) or no longer ours to read: nothing more to report.
      if (err instanceof ApiError && err.status >= 400 && err.status < 500) break;
      if (++failures > 20) break;
      await new Promise((r) => setTimeout(r, Math.min(10_000, 500 * 2 ** failures)));
      continue;
    }
    if (opDone(cur)) break;
    const note = cur.progress.message ? `${texts.running}: ${cur.progress.message}` : `${texts.running}…`;
    if (parked) continue;
    if (Date.now() - started < BUSY_MS) t.update(note);
    else {
      parked = true;
      t.done('info', `${note} (you will be told when it ends)`);
    }
  }
  if (opDone(cur)) {
    const { tone, text } = operationOutcome(cur, texts);
    t.done(tone, text);
  }
  return cur;
}
