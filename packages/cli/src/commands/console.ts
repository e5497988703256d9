/**
 * `nqvm vm console NAME`: the VM's serial console in your own terminal, over the console
 * WebSocket. The terminal is in raw mode (every key goes to the guest), its size is sent on
 * SIGWINCH, and Ctrl-] detaches, as in virsh and telnet. A broken connection (agent restart)
 * reconnects and shows the scrollback again.
 */
import {
  type ConsoleServerMessage,
  consoleShouldReconnect,
  ConsoleServerMessage as ServerMessage,
} from '@nqvm/api/console-protocol';
import type { Command } from 'commander';
import WebSocket from 'ws';
import type { ApiClient } from '../client/api';
import { action, KINDS, resolveId, session } from '../client/session';
import { attachTerminal, terminalSize } from '../client/terminal';
import { openApiWebSocket } from '../client/websocket';

/** Ctrl-] */
const DETACH = 0x1d;
const MAX_RECONNECTS = 20;

interface ConsoleOptions {
  readOnly?: boolean;
  take?: boolean;
  scrollback: string;
}

export function addConsoleCommand(vm: Command): void {
  vm.command('console')
    .argument('<vm>', 'name or id')
    .description('attach your terminal to the VM serial console (detach with Ctrl-])')
    .option('--read-only', 'watch only; never type into the console')
    .option('--take', 'take the writer role from whoever holds it')
    .option('--scrollback <bytes>', 'recent output shown first', '65536')
    .addHelpText(
      'after',
      `
One writer at a time: the first operator or admin to attach writes, later ones watch until
they --take over. Viewers only watch.

Examples:
  $ nqvm vm console web1
  $ nqvm vm console web1 --read-only`,
    )
    .action(
      action(async (name: string, opts: ConsoleOptions, cmd: Command) => {
        const { api } = await session(cmd);
        const id = await resolveId(api, KINDS.vm, name);
        const code = await attach(api, id, name, opts);
        process.exitCode = code;
      }),
    );
}

function note(text: string): void {
  // \r first: the terminal is in raw mode, where \n does not return the carriage.
  process.stderr.write(`\r\n[nqvm] ${text}\r\n`);
}

/** Resolves with the exit code once the user detached or the console ended. */
async function attach(api: ApiClient, id: string, name: string, opts: ConsoleOptions): Promise<number> {
  let detached = false;
  let current: WebSocket | null = null;

  const sendSize = () => {
    const size = terminalSize();
    if (current?.readyState === WebSocket.OPEN && size && !opts.readOnly) {
      current.send(JSON.stringify({ type: 'resize', ...size }));
    }
  };
  const onInput = (buf: Buffer) => {
    const at = buf.indexOf(DETACH);
    const data = at >= 0 ? buf.subarray(0, at) : buf;
    if (data.length && !opts.readOnly && current?.readyState === WebSocket.OPEN) current.send(data);
    if (at >= 0) {
      detached = true;
      current?.close(1000, 'detached');
    }
  };

  const release = attachTerminal({ onInput, onResize: sendSize });
  try {
    for (let attempt = 0; ; attempt++) {
      const result = await connectOnce(
        api,
        id,
        opts,
        (ws) => {
          current = ws;
          attempt = 0;
        },
        sendSize,
      );
      current = null;
      if (detached) {
        note(`detached from ${name}`);
        return 0;
      }
      if (result.closed) note(`${result.closed.message} (${result.closed.reason})`);
      if (!consoleShouldReconnect(result.code) || attempt >= MAX_RECONNECTS) {
        if (result.error) throw result.error;
        return result.code === 1000 ? 0 : 1;
      }
      const wait = Math.min(5_000, 250 * 2 ** attempt);
      note(`connection lost; reconnecting in ${(wait / 1000).toFixed(1)} s (Ctrl-] to give up)`);
      await new Promise((r) => setTimeout(r, wait));
      if (detached) return 0;
    }
  } finally {
    release();
  }
}

interface Outcome {
  code: number;
  closed: Extract<ConsoleServerMessage, { type: 'closed' }> | null;
  error: Error | null;
}

function connectOnce(
  api: ApiClient,
  id: string,
  opts: ConsoleOptions,
  onOpen: (ws: WebSocket) => void,
  sendSize: () => void,
): Promise<Outcome> {
  return new Promise((resolve) => {
    let closed: Outcome['closed'] = null;
    let error: Error | null = null;
    const ws = openApiWebSocket(
      api,
      `/api/v1/vms/${id}/console/ws`,
      { scrollback: Number(opts.scrollback) },
      (refusal) => {
        error = refusal;
        // A refusal is final: not found, not allowed, not running.
        resolve({ code: 1008, closed: null, error });
      },
    );
    ws.on('open', () => {
      onOpen(ws);
      sendSize();
      if (opts.take && !opts.readOnly) ws.send(JSON.stringify({ type: 'take' }));
    });
    ws.on('message', (data, isBinary) => {
      if (isBinary) {
        process.stdout.write(data as Buffer);
        return;
      }
      const parsed = ServerMessage.safeParse(safeJson(data.toString()));
      if (!parsed.success) return;
      const m = parsed.data;
      switch (m.type) {
        case 'hello':
          process.stdout.write('\u001bc'); // the scrollback follows: start from a clean screen
          note(
            `connected to the console (${m.role === 'writer' ? 'you write' : m.can_write ? `watching; ${m.writer ?? 'nobody'} writes, --take to take over` : 'watching only'}); detach with Ctrl-]`,
          );
          break;
        case 'writer':
          note(m.you ? 'you are the writer now' : `${m.writer ?? 'nobody'} writes now; you watch`);
          break;
        case 'denied':
          note(m.message);
          break;
        case 'closed':
          closed = m;
          break;
        default:
          break;
      }
    });
    ws.on('error', (err) => {
      error ??= err;
    });
    ws.on('close', (code) => resolve({ code, closed, error: closed ? null : error }));
  });
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
