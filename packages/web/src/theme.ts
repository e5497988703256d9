/** Light/dark theme: follows prefers-color-scheme until the user picks one (kept in localStorage). */
import { useEffect, useSyncExternalStore } from 'react';

export type ThemeChoice = 'system' | 'light' | 'dark';
const KEY = 'nqvm.theme';
const media = window.matchMedia('(prefers-color-scheme: dark)');
const subs = new Set<() => void>();

function stored(): ThemeChoice {
  try {
    const v = localStorage.getItem(KEY);
    return v === 'light' || v === 'dark' ? v : 'system';
  } catch {
    return 'system';
  }
}

let choice: ThemeChoice = stored();

export function resolvedTheme(): 'light' | 'dark' {
  return choice === 'system' ? (media.matches ? 'dark' : 'light') : choice;
}

function apply(): void {
  document.documentElement.dataset.theme = resolvedTheme();
  for (const s of subs) s();
}

export function setTheme(next: ThemeChoice): void {
  choice = next;
  try {
    if (next === 'system') localStorage.removeItem(KEY);
    else localStorage.setItem(KEY, next);
  } catch {
    // private mode: the choice lasts for this page only
  }
  apply();
}

media.addEventListener('change', apply);
apply();

export function useTheme(): { choice: ThemeChoice; resolved: 'light' | 'dark' } {
  const snapshot = useSyncExternalStore(
    (l) => {
      subs.add(l);
      return () => subs.delete(l);
    },
    () => `${choice}:${resolvedTheme()}`,
  );
  const [c, r] = snapshot.split(':') as [ThemeChoice, 'light' | 'dark'];
  return { choice: c, resolved: r };
}

/** Keeps <meta name="theme-color"> in step (mobile browser chrome). */
export function useThemeColor(): void {
  const { resolved } = useTheme();
  useEffect(() => {
    let meta = document.querySelector<HTMLMetaElement>('meta[name="theme-color"]');
    if (!meta) {
      meta = document.createElement('meta');
      meta.name = 'theme-color';
      document.head.appendChild(meta);
    }
    meta.content = resolved === 'dark' ? '#111827' : '#ffffff';
  }, [resolved]);
}
