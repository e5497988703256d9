/** Shared building blocks: badges, bars, dialogs, toasts, copy-once fields. */
import { type ReactNode, useEffect, useId, useRef, useState, useSyncExternalStore } from 'react';
import { errorMessage } from './api';
import type { CapacityFigures } from './capacity';
import { formatMib, formatTime, percent, timeAgo, useNow } from './format';
import type { Operation, Vm, VmState } from './types';

/** A time as lists show it: relative ("5 min ago"), the absolute time on hover. */
export function RelTime({ iso, never }: { iso: string | null | undefined; never?: string }) {
  const now = useNow();
  if (!iso) return <span className="muted">{never ?? 'never'}</span>;
  return (
    <time dateTime={iso} title={formatTime(iso)}>
      {timeAgo(iso, now)}
    </time>
  );
}

export type Tone = 'ok' | 'warn' | 'err' | 'info' | 'muted' | 'busy';

export function Badge({ tone, children, title }: { tone: Tone; children: ReactNode; title?: string }) {
  return (
    <span className={`badge badge-${tone}`} title={title}>
      {children}
    </span>
  );
}

const STATE_TONE: Record<VmState, Tone> = {
  running: 'ok',
  paused: 'warn',
  stopped: 'muted',
  failed: 'err',
  unknown: 'err',
  creating: 'busy',
  starting: 'busy',
  stopping: 'busy',
  pausing: 'busy',
  deleting: 'busy',
};

export const stateTone = (s: VmState): Tone => STATE_TONE[s] ?? 'muted';

export function StateBadge({ state }: { state: VmState }) {
  return (
    <Badge tone={stateTone(state)}>
      <span className="dot" aria-hidden="true" />
      {state}
    </Badge>
  );
}

/**
 * Whether a running VM's guest is up (its guest agent answered, or its console showed a login
 * prompt or cloud-init finishing) or still booting; nothing for a VM that is not running.
 */
export function GuestBadge({ vm }: { vm: Pick<Vm, 'state' | 'guest_ready_at' | 'guest_ready_signal'> }) {
  if (vm.state !== 'running') return null;
  return vm.guest_ready_at ? (
    <Badge tone="ok" title={`up since ${formatTime(vm.guest_ready_at)} (${vm.guest_ready_signal})`}>
      guest up
    </Badge>
  ) : (
    <Badge tone="busy" title="the VMM runs; the guest has not said it is up yet">
      booting
    </Badge>
  );
}

const OP_TONE: Record<Operation['status'], Tone> = {
  queued: 'muted',
  running: 'busy',
  succeeded: 'ok',
  failed: 'err',
  cancelled: 'warn',
};

export function OpStatus({ status }: { status: Operation['status'] }) {
  return <Badge tone={OP_TONE[status]}>{status}</Badge>;
}

export function Bar({
  label,
  used,
  total,
  unit,
  note,
}: {
  label: string;
  used: number;
  total: number;
  unit: 'count' | 'mib';
  /** A line under the bar, e.g. what the total is made of and what is free. */
  note?: ReactNode;
}) {
  const p = percent(used, total);
  const fmt = (n: number) => (unit === 'mib' ? formatMib(n) : String(n));
  const tone = p >= 90 ? 'err' : p >= 75 ? 'warn' : 'ok';
  return (
    <div className="bar">
      <div className="bar-head">
        <span>{label}</span>
        <span className="muted">
          {fmt(used)} / {fmt(total)} ({p}%)
        </span>
      </div>
      <div
        className="bar-track"
        role="progressbar"
        aria-label={label}
        aria-valuenow={p}
        aria-valuemin={0}
        aria-valuemax={100}
      >
        <div className={`bar-fill bar-${tone}`} style={{ width: `${p}%` }} />
      </div>
      {note ? <div className="bar-note muted small">{note}</div> : null}
    </div>
  );
}

/**
 * vCPU, memory and disk of a host (or of all of them) exactly as the scheduler counts them:
 * allocated / what it places up to, the vCPU overcommit ratio, and what is free.
 */
export function CapacityBars({ figures }: { figures: CapacityFigures }) {
  const { vcpu, mem_mib, disk_mib } = figures;
  return (
    <div data-testid="capacity-bars">
      <Bar
        label="vCPU"
        used={vcpu.allocated}
        total={vcpu.capacity}
        unit="count"
        note={
          <>
            {vcpu.cores} {vcpu.cores === 1 ? 'core' : 'cores'} × {vcpu.overcommit} overcommit · {vcpu.free}{' '}
            free
          </>
        }
      />
      <Bar
        label="Memory"
        used={mem_mib.allocated}
        total={mem_mib.capacity}
        unit="mib"
        note={`${formatMib(mem_mib.free)} free`}
      />
      <Bar
        label="Disk"
        used={disk_mib.allocated}
        total={disk_mib.capacity}
        unit="mib"
        note={`${formatMib(disk_mib.free)} free`}
      />
    </div>
  );
}

/** A determinate progress bar with a caption (upload bytes, an operation's percent). */
export function ProgressBar({
  label,
  percent,
  message,
}: {
  label: string;
  percent: number;
  message?: string;
}) {
  const p = Math.max(0, Math.min(100, Math.round(percent)));
  return (
    <div className="bar">
      <div className="bar-head">
        <span>{message || label}</span>
        <span className="muted" data-testid="progress-percent">
          {p}%
        </span>
      </div>
      <div
        className="bar-track"
        role="progressbar"
        aria-label={label}
        aria-valuenow={p}
        aria-valuemin={0}
        aria-valuemax={100}
      >
        <div className="bar-fill bar-ok" style={{ width: `${p}%` }} />
      </div>
    </div>
  );
}

export function ErrorBox({ error, title }: { error: unknown; title?: string }) {
  if (!error) return null;
  return (
    <div className="alert alert-err" role="alert">
      {title ? <strong>{title}: </strong> : null}
      {errorMessage(error)}
    </div>
  );
}

/**
 * The foot of a form in a modal: what the manager refused (if it did), Cancel, and the submit
 * button, which says what it is doing while the request runs.
 */
export function FormFoot({
  error,
  refused,
  onCancel,
  busy,
  submit,
  submitting,
}: {
  error: unknown;
  refused: string;
  onCancel: () => void;
  busy: boolean;
  submit: string;
  submitting: string;
}) {
  return (
    <>
      <ErrorBox error={error} title={refused} />
      <div className="modal-foot wizard-foot">
        <button type="button" className="btn" onClick={onCancel}>
          Cancel
        </button>
        <button type="submit" className="btn btn-primary" disabled={busy}>
          {busy ? submitting : submit}
        </button>
      </div>
    </>
  );
}

/** An optional one-line description, as templates and snapshots have. */
export function DescriptionField({ value, onChange }: { value: string; onChange: (v: string) => void }) {
  return (
    <ValidatedField
      label="Description"
      hint="optional"
      render={(id) => (
        <input
          id={id}
          name="description"
          autoComplete="off"
          maxLength={500}
          value={value}
          onChange={(e) => onChange(e.target.value)}
        />
      )}
    />
  );
}

/** A list page's title with how many there are, and its buttons on the right. */
export function PageHead({
  title,
  count,
  children,
}: {
  title: string;
  count?: number;
  children?: ReactNode;
}) {
  return (
    <div className="page-head">
      <h1>
        {title} <span className="count">{count ?? ''}</span>
      </h1>
      {children}
    </div>
  );
}

/** What a list's query is doing: its error, or that it is loading. */
export function QueryStatus({
  query,
  what,
}: {
  query: { error: unknown; isPending: boolean };
  what: string;
}) {
  return (
    <>
      <ErrorBox error={query.error} />
      {query.isPending ? <Loading what={what} /> : null}
    </>
  );
}

export function Loading({ what }: { what?: string }) {
  return <p className="muted loading">Loading{what ? ` ${what}` : ''}…</p>;
}

export function Empty({ children }: { children: ReactNode }) {
  return <p className="empty muted">{children}</p>;
}

export function Field({
  label,
  hint,
  children,
  htmlFor,
}: {
  label: string;
  hint?: ReactNode;
  children: ReactNode;
  htmlFor?: string;
}) {
  return (
    <div className="field">
      <label htmlFor={htmlFor}>{label}</label>
      {children}
      {hint ? <small className="muted">{hint}</small> : null}
    </div>
  );
}

/** A labelled field that shows its check's message in place of the hint. */
export function ValidatedField({
  label,
  error,
  hint,
  render,
}: {
  label: string;
  error?: string;
  hint?: ReactNode;
  render: (id: string) => ReactNode;
}) {
  const id = useId();
  return (
    <div className={`field${error ? ' invalid' : ''}`}>
      <label htmlFor={id}>{label}</label>
      {render(id)}
      {error ? (
        <small className="error-text">{error}</small>
      ) : hint ? (
        <small className="muted">{hint}</small>
      ) : null}
    </div>
  );
}

/** A modal dialog on the native <dialog> element (focus trap, Escape to close). */
export function Modal({
  open,
  title,
  onClose,
  children,
  footer,
  wide,
}: {
  open: boolean;
  title: string;
  onClose: () => void;
  children: ReactNode;
  footer?: ReactNode;
  wide?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog
      ref={ref}
      className={`modal${wide ? ' modal-wide' : ''}`}
      aria-labelledby={titleId}
      onCancel={(e) => {
        e.preventDefault();
        onClose();
      }}
    >
      {open ? (
        <>
          <header className="modal-head">
            <h2 id={titleId}>{title}</h2>
            <button type="button" className="btn-icon" aria-label="Close" onClick={onClose}>
              ✕
            </button>
          </header>
          <div className="modal-body">{children}</div>
          {footer ? <footer className="modal-foot">{footer}</footer> : null}
        </>
      ) : null}
    </dialog>
  );
}

/** Asks before a destructive action; optionally makes the user type a name. Shows the API error. */
export function ConfirmDialog({
  open,
  title,
  message,
  confirmLabel,
  requireText,
  onConfirm,
  onClose,
}: {
  open: boolean;
  title: string;
  message: ReactNode;
  confirmLabel: string;
  requireText?: string;
  onConfirm: () => Promise<unknown>;
  onClose: () => void;
}) {
  const [typed, setTyped] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);
  const inputId = useId();
  useEffect(() => {
    if (open) {
      setTyped('');
      setError(null);
      setBusy(false);
    }
  }, [open]);
  const ready = !requireText || typed === requireText;
  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
      onClose();
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Modal
      open={open}
      title={title}
      onClose={onClose}
      footer={
        <>
          <button type="button" className="btn" onClick={onClose}>
            Cancel
          </button>
          <button
            type="button"
            className="btn btn-danger"
            disabled={!ready || busy}
            onClick={confirm}
            data-testid="confirm"
          >
            {busy ? 'Working…' : confirmLabel}
          </button>
        </>
      }
    >
      <div className="stack">
        <div>{message}</div>
        {requireText ? (
          <Field label={`Type "${requireText}" to confirm`} htmlFor={inputId}>
            <input
              id={inputId}
              value={typed}
              autoComplete="off"
              spellCheck={false}
              onChange={(e) => setTyped(e.target.value)}
              onKeyDown={(e) => {
                if (e.key === 'Enter' && ready && !busy) void confirm();
              }}
            />
          </Field>
        ) : null}
        <ErrorBox error={error} />
      </div>
    </Modal>
  );
}

/** A secret shown once: read-only, selectable, with a copy button. */
export function CopyField({ value, label }: { value: string; label: string }) {
  const ref = useRef<HTMLInputElement>(null);
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(value);
    } catch {
      // Not a secure context: select the text and fall back to the legacy command.
      ref.current?.select();
      document.execCommand?.('copy');
    }
    setCopied(true);
    setTimeout(() => setCopied(false), 2000);
  };
  return (
    <div className="copy-field">
      <input
        ref={ref}
        readOnly
        value={value}
        aria-label={label}
        spellCheck={false}
        onFocus={(e) => e.target.select()}
      />
      <button type="button" className="btn" onClick={copy}>
        {copied ? 'Copied' : 'Copy'}
      </button>
    </div>
  );
}

// ---- toasts -----------------------------------------------------------------------------

interface Toast {
  id: number;
  tone: 'ok' | 'err' | 'info' | 'busy';
  text: string;
}
let toasts: Toast[] = [];
let nextToast = 1;
const toastSubs = new Set<() => void>();
const toastTimers = new Map<number, ReturnType<typeof setTimeout>>();
const emitToasts = () => {
  for (const s of toastSubs) s();
};

function dismissToast(id: number): void {
  clearTimeout(toastTimers.get(id));
  toastTimers.delete(id);
  toasts = toasts.filter((x) => x.id !== id);
  emitToasts();
}

/** Shows (or, with `id`, replaces) a toast; `busy` ones stay until replaced or dismissed. */
function showToast(t: Toast): void {
  const i = toasts.findIndex((x) => x.id === t.id);
  toasts = i < 0 ? [...toasts, t].slice(-5) : toasts.map((x) => (x.id === t.id ? t : x));
  clearTimeout(toastTimers.get(t.id));
  toastTimers.delete(t.id);
  if (t.tone !== 'busy')
    toastTimers.set(
      t.id,
      setTimeout(() => dismissToast(t.id), t.tone === 'err' ? 10_000 : 5000),
    );
  emitToasts();
}

export function toast(tone: 'ok' | 'err' | 'info', text: string): void {
  showToast({ id: nextToast++, tone, text });
}

export function toastError(err: unknown, what?: string): void {
  toast('err', what ? `${what}: ${errorMessage(err)}` : errorMessage(err));
}

/** A toast for work under way, turned into its outcome later (shown again if it was dismissed). */
export interface PendingToast {
  update(text: string): void;
  done(tone: 'ok' | 'err' | 'info', text: string): void;
}

export function toastPending(text: string): PendingToast {
  const id = nextToast++;
  let finished = false;
  showToast({ id, tone: 'busy', text });
  return {
    update(next) {
      if (!finished && toasts.some((x) => x.id === id)) showToast({ id, tone: 'busy', text: next });
    },
    done(tone, next) {
      finished = true;
      showToast({ id, tone, text: next });
    },
  };
}

export function Toasts() {
  const list = useSyncExternalStore(
    (l) => {
      toastSubs.add(l);
      return () => toastSubs.delete(l);
    },
    () => toasts,
  );
  return (
    <div className="toasts" aria-live="polite">
      {list.map((t) => (
        <div
          key={t.id}
          className={`toast toast-${t.tone}`}
          role={t.tone === 'err' ? 'alert' : 'status'}
          data-testid="toast"
        >
          <span>{t.text}</span>
          <button
            type="button"
            className="btn-icon toast-close"
            aria-label="Dismiss"
            onClick={() => dismissToast(t.id)}
          >
            ✕
          </button>
        </div>
      ))}
    </div>
  );
}

/** A secret shown once after it was created (API token, join token), with a copy button. */
export function SecretOnceModal({
  title,
  label,
  secret,
  onClose,
  children,
}: {
  title: string;
  label: string;
  secret: string | null;
  onClose: () => void;
  children?: ReactNode;
}) {
  return (
    <Modal
      open={secret !== null}
      title={title}
      onClose={onClose}
      footer={
        <button type="button" className="btn btn-primary" onClick={onClose}>
          Done
        </button>
      }
    >
      {secret !== null ? (
        <div className="stack" data-testid="secret-once">
          <div className="alert alert-warn">Copy it now: it is not shown again.</div>
          <CopyField label={label} value={secret} />
          {children}
        </div>
      ) : null}
    </Modal>
  );
}
