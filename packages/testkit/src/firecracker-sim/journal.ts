import { appendFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';

/** The instance state a request found, as `GET /` reports it. */
export type SimPhase = 'Not started' | 'Running' | 'Paused';

/** One API request the simulator answered. */
export interface JournalRequest {
  kind: 'request';
  ts: number;
  pid: number;
  instance: string;
  version: string;
  method: string;
  path: string;
  /** Parsed JSON body, the raw text when it was not JSON, or null when empty. */
  body: unknown;
  phase: SimPhase;
  status: number;
  fault?: string;
}

/** A process-level event: start, serial wiring, guest output, exit. */
export interface JournalEvent {
  kind: 'event';
  ts: number;
  pid: number;
  instance: string;
  version: string;
  event: 'start' | 'serial-input' | 'exit';
  detail: Record<string, unknown>;
}

export type JournalEntry = JournalRequest | JournalEvent;

export function appendJournal(path: string | undefined, entry: JournalEntry): void {
  if (path) appendFileSync(path, `${JSON.stringify(entry)}\n`);
}

/** Reads a journal written by one or more simulator processes, in write order. */
export async function readJournal(path: string): Promise<JournalEntry[]> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as JournalEntry);
}

/** Only the requests of a journal, optionally of one simulator process. */
export function journalRequests(entries: JournalEntry[], pid?: number): JournalRequest[] {
  return entries.filter(
    (e): e is JournalRequest => e.kind === 'request' && (pid === undefined || e.pid === pid),
  );
}
