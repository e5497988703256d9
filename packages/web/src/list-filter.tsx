/** A list page's name search and one-field filter, kept in the URL so a filtered view can be shared. */
import { navigate, useLocation, withSearch } from './router';

export interface ListFilter<T> {
  q: string;
  value: string;
  set: (param: string, v: string) => void;
  /** The items whose name starts with the search and whose field matches, sorted by name. */
  rows: T[];
}

export function useListFilter<T extends { name: string }>(
  items: readonly T[] | undefined,
  param: string,
  field: (item: T) => string,
): ListFilter<T> {
  const { pathname, search } = useLocation();
  const q = search.get('q') ?? '';
  const value = search.get(param) ?? '';
  const set = (k: string, v: string) => navigate(withSearch(pathname, search, { [k]: v }), { replace: true });
  const needle = q.trim().toLowerCase();
  const rows = (items ?? [])
    .filter((i) => (!needle || i.name.toLowerCase().startsWith(needle)) && (!value || field(i) === value))
    .sort((a, b) => a.name.localeCompare(b.name));
  return { q, value, set, rows };
}

/** The search box and the select for a `useListFilter`; `noun` names the field ("state", "status"). */
export function FilterBar({
  filter,
  param,
  noun,
  options,
}: {
  filter: ListFilter<unknown>;
  param: string;
  noun: string;
  options: readonly string[];
}) {
  return (
    <div className="toolbar">
      <input
        type="search"
        placeholder="Search by name…"
        aria-label="Search by name"
        value={filter.q}
        onChange={(e) => filter.set('q', e.target.value)}
      />
      <select
        aria-label={`Filter by ${noun}`}
        value={filter.value}
        onChange={(e) => filter.set(param, e.target.value)}
      >
        <option value="">{`All ${noun === 'status' ? 'statuses' : `${noun}s`}`}</option>
        {options.map((s) => (
          <option key={s} value={s}>
            {s}
          </option>
        ))}
      </select>
    </div>
  );
}
