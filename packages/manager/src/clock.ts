/** RFC 3339 UTC with milliseconds: sortable as text on both datastores. */
export function nowIso(): string {
  return new Date().toISOString();
}

export function isoAfter(ms: number, from = Date.now()): string {
  return new Date(from + ms).toISOString();
}
