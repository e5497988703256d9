/**
 * The sessions of one VM's console: who is connected, who is the writer, the terminal size, and
 * the end of every session when the console ends. Transport-free: a WebSocket (or a test) plugs
 * in as a ConsolePeer. The protocol it implements is described in @nqvm/api console-protocol.
 */
import {
  CONSOLE_SCROLLBACK_DEFAULT,
  type ConsoleClientMessage,
  type ConsoleCloseReason,
  type ConsoleServerMessage,
  consoleCloseCodeOf,
  type TerminalSize,
} from '@nqvm/api';
import type { ConsoleSubscribeOptions, ConsoleViewer } from './console-hub';

/** What the room needs of a VM's console (a ConsoleHub has it all). */
export interface RoomConsole {
  /** The most recent output, at most `bytes`. Still answers after the VM ended. */
  tail(bytes: number): Promise<Buffer>;
  /** Live output after `replayBytes` of scrollback; absent when the console cannot stream. */
  subscribe?(viewer: ConsoleViewer, opts: ConsoleSubscribeOptions): () => void;
  /** Input to the guest; false when it cannot take it now (the input is dropped). */
  write?(data: Buffer): boolean;
  /** Applies a terminal size where the console has one (not a serial UART). */
  resize?(size: TerminalSize): void;
}

/** One connected client, as the transport sees it. */
export interface ConsolePeer {
  sendBytes(chunk: Buffer): void;
  sendControl(message: ConsoleServerMessage): void;
  /** Bytes queued towards the client and not yet sent (`ws.bufferedAmount`). */
  bufferedBytes(): number;
  /** Ends the connection (the `closed` message was sent just before). */
  close(code: number, reason: ConsoleCloseReason): void;
}

export interface ConsoleJoinOptions {
  /** The name other clients see when this one writes. */
  name: string;
  /** Whether this client may ever write (operator or admin at the manager). */
  canWrite: boolean;
  /** Bytes of scrollback sent first. */
  scrollbackBytes?: number;
}

/** A client's handle on the room, for what it sends. */
export interface ConsoleMember {
  input(data: Buffer): void;
  control(message: ConsoleClientMessage): void;
  /** Ends the session from the server side (e.g. a protocol error), with a `closed` message. */
  end(reason: ConsoleCloseReason, message: string): void;
  /** The connection is gone. */
  leave(): void;
}

export interface ConsoleRoomOptions {
  /**
   * When the console closes before the VM's end is known (the VMM exited; the runtime hears it
   * a moment later), sessions wait this long for the reason, then end as `vm-stopped`.
   */
  endGraceMs?: number;
}

interface Session {
  readonly peer: ConsolePeer;
  readonly name: string;
  readonly canWrite: boolean;
  readonly replayBytes: number;
  /** Told that its input is dropped, since its role last changed. */
  toldDenied: boolean;
  unsubscribe: (() => void) | null;
  ended: boolean;
}

export class ConsoleRoom {
  private console: RoomConsole | null = null;
  private live = false;
  /** A run is starting: clients that join wait for its console (parked). */
  private isStarting = false;
  private lastEnd: { reason: ConsoleCloseReason; message: string } | null = null;
  private readonly sessions = new Set<Session>();
  private readonly parked = new Set<Session>();
  private writer: Session | null = null;
  private size: TerminalSize | null = null;
  private graceTimer: NodeJS.Timeout | null = null;
  private readonly endGraceMs: number;

  constructor(opts: ConsoleRoomOptions = {}) {
    this.endGraceMs = opts.endGraceMs ?? 2_000;
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** The display name of the writer, or null. */
  get writerName(): string | null {
    return this.writer?.name ?? null;
  }

  /** The VM is starting: clients that join now wait for its console rather than being told it is down. */
  starting(): void {
    if (!this.live) this.isStarting = true;
  }

  /** A new run's console: waiting clients and those that join from now on stream it. */
  attach(console: RoomConsole): void {
    this.clearGrace();
    this.writer = null;
    for (const s of [...this.sessions]) this.close(s, 'vm-stopped', 'the VM started again');
    this.console = console;
    this.live = typeof console.subscribe === 'function';
    this.isStarting = false;
    this.lastEnd = null;
    this.size = null;
    for (const s of [...this.parked]) {
      this.parked.delete(s);
      if (this.live) this.joinLive(s);
      else void this.sendEndedRun(s);
    }
  }

  /** The console ended: every session gets `closed` with the reason and is disconnected. */
  end(reason: ConsoleCloseReason, message: string): void {
    this.clearGrace();
    this.live = false;
    this.isStarting = false;
    this.lastEnd = { reason, message };
    this.writer = null;
    for (const s of [...this.sessions, ...this.parked]) this.close(s, reason, message);
  }

  /**
   * Adds a client: `hello`, the scrollback, then live output. While the VM starts, the client
   * waits for its console. When the VM is down, it gets the scrollback of the last run and
   * `closed`.
   *
   * @example
   * const member = room.join(peer, { name: 'alice', canWrite: true });
   * ws.on('message', (data, binary) => binary && member.input(data));
   * ws.on('close', () => member.leave());
   */
  join(peer: ConsolePeer, opts: ConsoleJoinOptions): ConsoleMember {
    const s: Session = {
      peer,
      name: opts.name,
      canWrite: opts.canWrite,
      replayBytes: opts.scrollbackBytes ?? CONSOLE_SCROLLBACK_DEFAULT,
      toldDenied: false,
      unsubscribe: null,
      ended: false,
    };
    const member: ConsoleMember = {
      input: (data) => this.input(s, data),
      control: (m) => this.control(s, m),
      end: (reason, message) => this.close(s, reason, message),
      leave: () => this.leave(s),
    };
    if (this.live) this.joinLive(s);
    else if (this.isStarting) this.parked.add(s);
    else void this.sendEndedRun(s);
    return member;
  }

  private joinLive(s: Session): void {
    const { peer } = s;
    const console = this.console;
    if (!console?.subscribe) return;
    this.sessions.add(s);
    const becomesWriter = s.canWrite && this.writer === null;
    if (becomesWriter) this.writer = s;
    peer.sendControl(this.hello(s));
    s.unsubscribe = console.subscribe(
      {
        onData: (chunk) => peer.sendBytes(chunk),
        pendingBytes: () => peer.bufferedBytes(),
        onClose: (reason) => {
          s.unsubscribe = null;
          if (reason === 'slow') {
            this.close(s, 'slow-consumer', 'more than 1 MiB of output was waiting for this client');
          } else if (reason === 'error') {
            this.close(s, 'internal-error', 'sending console output failed');
          } else {
            this.consoleClosed(console);
          }
        },
      },
      { replayBytes: s.replayBytes },
    );
    // The others learn who writes now; the newcomer knows from hello.
    if (becomesWriter)
      for (const other of this.sessions)
        if (other !== s) other.peer.sendControl({ type: 'writer', you: false, writer: s.name });
  }

  private async sendEndedRun(s: Session): Promise<void> {
    const console = this.console;
    s.peer.sendControl({ type: 'hello', role: 'viewer', can_write: s.canWrite, writer: null, size: null });
    const scrollback =
      console && s.replayBytes > 0 ? await console.tail(s.replayBytes).catch(() => null) : null;
    if (s.ended) return;
    if (scrollback && scrollback.length > 0) s.peer.sendBytes(scrollback);
    const end = this.lastEnd ?? { reason: 'vm-not-running' as const, message: 'the VM is not running' };
    this.close(s, end.reason, end.message);
  }

  private hello(s: Session): ConsoleServerMessage {
    return {
      type: 'hello',
      role: this.writer === s ? 'writer' : 'viewer',
      can_write: s.canWrite,
      writer: this.writer?.name ?? null,
      size: this.size,
    };
  }

  private input(s: Session, data: Buffer): void {
    if (s.ended || !this.sessions.has(s)) return;
    if (this.writer !== s) {
      if (s.canWrite && this.writer === null) {
        this.setWriter(s);
      } else {
        this.deny(s, 'input');
        return;
      }
    }
    // A guest that does not read its console (false) loses the keystrokes, as a real UART would.
    this.console?.write?.(data);
  }

  private control(s: Session, m: ConsoleClientMessage): void {
    if (s.ended) return;
    if (m.type === 'ping') {
      s.peer.sendControl({ type: 'pong' });
      return;
    }
    if (!this.sessions.has(s)) return;
    switch (m.type) {
      case 'take':
        if (!s.canWrite) this.deny(s, 'take');
        else if (this.writer !== s) this.setWriter(s);
        else s.peer.sendControl({ type: 'writer', you: true, writer: s.name });
        return;
      case 'release':
        if (this.writer === s) this.setWriter(null);
        return;
      case 'resize': {
        if (this.writer !== s) return;
        const size = { cols: m.cols, rows: m.rows };
        this.size = size;
        this.console?.resize?.(size);
        for (const other of this.sessions)
          if (other !== s) other.peer.sendControl({ type: 'resize', ...size });
        return;
      }
    }
  }

  private deny(s: Session, what: 'input' | 'take'): void {
    if (what === 'input' && s.toldDenied) return;
    if (what === 'input') s.toldDenied = true;
    const message = !s.canWrite
      ? 'this session is read-only: the viewer role can watch the console but not type into it'
      : `${this.writer?.name ?? 'another session'} is typing; send "take" to take over`;
    s.peer.sendControl({ type: 'denied', what, message });
  }

  private setWriter(s: Session | null): void {
    this.writer = s;
    for (const other of this.sessions) other.toldDenied = false;
    this.announceWriter(s);
  }

  private announceWriter(s: Session | null): void {
    for (const other of this.sessions)
      other.peer.sendControl({ type: 'writer', you: other === s, writer: s?.name ?? null });
  }

  private close(s: Session, reason: ConsoleCloseReason, message: string): void {
    if (s.ended) return;
    s.ended = true;
    this.detach(s);
    s.peer.sendControl({ type: 'closed', reason, message });
    s.peer.close(consoleCloseCodeOf(reason), reason);
  }

  private leave(s: Session): void {
    s.ended = true;
    this.detach(s);
  }

  private detach(s: Session): void {
    s.unsubscribe?.();
    s.unsubscribe = null;
    this.parked.delete(s);
    if (!this.sessions.delete(s)) return;
    if (this.writer === s) this.setWriter(null);
  }

  /** The console dropped its viewers (the VMM is gone or let go): wait for the reason. */
  private consoleClosed(console: RoomConsole): void {
    if (console !== this.console || !this.live) return;
    this.live = false;
    this.clearGrace();
    this.graceTimer = setTimeout(() => {
      this.graceTimer = null;
      this.end('vm-stopped', 'the console closed');
    }, this.endGraceMs);
    this.graceTimer.unref();
  }

  private clearGrace(): void {
    if (this.graceTimer) clearTimeout(this.graceTimer);
    this.graceTimer = null;
  }
}
