/**
 * Entry point of the `firecracker` simulator binary (see binary.ts): the real CLI, the API over
 * HTTP/1.1 on the Unix socket, the guest console on stdin/stdout.
 */
import { existsSync, fstatSync, readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { isatty } from 'node:tty';
import { appendJournal } from './journal';
import { Fault, FirecrackerSimulator, type SimResponse, versionAtLeast } from './simulator';
import { type FirecrackerSimVersion, isSimVersion } from './spec';

const EXIT_GENERIC = 1;
const EXIT_BAD_CONFIGURATION = 152;
const EXIT_ARG_PARSING = 153;

interface FlagSpec {
  takesValue: boolean;
  since?: string;
}

const FLAGS: Record<string, FlagSpec> = {
  'api-sock': { takesValue: true },
  id: { takesValue: true },
  'seccomp-filter': { takesValue: true },
  'no-seccomp': { takesValue: false },
  'start-time-us': { takesValue: true },
  'start-time-cpu-us': { takesValue: true },
  'parent-cpu-time-us': { takesValue: true },
  'config-file': { takesValue: true },
  'no-api': { takesValue: false },
  'log-path': { takesValue: true },
  level: { takesValue: true },
  'show-level': { takesValue: false },
  'show-log-origin': { takesValue: false },
  metadata: { takesValue: true },
  'boot-timer': { takesValue: false },
  version: { takesValue: false },
  help: { takesValue: false },
  'describe-snapshot': { takesValue: true },
  'http-api-max-payload-size': { takesValue: true },
  'mmds-size-limit': { takesValue: true },
  'metrics-path': { takesValue: true, since: '1.13.0' },
  module: { takesValue: true, since: '1.13.0' },
  'enable-pci': { takesValue: false, since: '1.16.0' },
};

function die(code: number, message: string): never {
  process.stderr.write(`${message}\n`);
  process.exit(code);
}

function parseArgs(version: string, argv: string[]): Map<string, string | true> {
  const out = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--'))
      die(EXIT_ARG_PARSING, `Arguments parsing error: Found argument '${arg}' which wasn't expected.`);
    const name = arg.slice(2);
    const spec = FLAGS[name];
    if (!spec || (spec.since && !versionAtLeast(version, spec.since))) {
      die(EXIT_ARG_PARSING, `Arguments parsing error: Found argument '${arg}' which wasn't expected.`);
    }
    if (out.has(name))
      die(EXIT_ARG_PARSING, `Arguments parsing error: '${arg}' was provided more than once.`);
    if (spec.takesValue) {
      const value = argv[++i];
      if (value === undefined) die(EXIT_ARG_PARSING, `Arguments parsing error: Missing value for '${arg}'.`);
      out.set(name, value);
    } else out.set(name, true);
  }
  return out;
}

type StdinKind = 'tty' | 'fifo' | 'file' | 'socket' | 'char-device' | 'closed';

function stdinKind(): StdinKind {
  if (isatty(0)) return 'tty';
  try {
    const st = fstatSync(0);
    if (st.isFIFO()) return 'fifo';
    if (st.isSocket()) return 'socket';
    if (st.isCharacterDevice()) return 'char-device';
    return 'file';
  } catch {
    return 'closed';
  }
}

function main(): void {
  const envVersion = process.env.FC_SIM_VERSION ?? '';
  if (!isSimVersion(envVersion))
    die(EXIT_GENERIC, `FC_SIM_VERSION must be a simulated version, got "${envVersion}"`);
  const version: FirecrackerSimVersion = envVersion;
  const args = parseArgs(version, process.argv.slice(2));
  if (args.has('help')) {
    process.stdout.write(`Firecracker v${version}\n\nUsage: firecracker [--api-sock PATH] [--id ID] ...\n`);
    process.exit(0);
  }
  if (args.has('version')) {
    process.stdout.write(`Firecracker v${version}\n`);
    process.exit(0);
  }
  if (args.has('describe-snapshot')) {
    const file = args.get('describe-snapshot') as string;
    try {
      const state = JSON.parse(readFileSync(file, 'utf8')) as { format?: string };
      process.stdout.write(`v${state.format}\n`);
      process.exit(0);
    } catch (err) {
      die(EXIT_GENERIC, `Cannot read the snapshot file ${file}: ${(err as Error).message}`);
    }
  }
  const id = (args.get('id') as string | undefined) ?? 'anonymous-instance';
  if (!/^[a-zA-Z0-9-]{1,64}$/.test(id)) die(EXIT_ARG_PARSING, `Invalid instance ID: ${id}`);
  const noApi = args.has('no-api');
  const configFile = args.get('config-file') as string | undefined;
  if (noApi && !configFile)
    die(EXIT_ARG_PARSING, 'Arguments parsing error: --no-api requires --config-file.');
  const seccomp = args.get('seccomp-filter') as string | undefined;
  if (seccomp && args.has('no-seccomp')) {
    die(EXIT_ARG_PARSING, "Arguments parsing error: '--seccomp-filter' cannot be used with '--no-seccomp'.");
  }
  const journalPath = process.env.FC_SIM_JOURNAL || undefined;
  const root = process.env.FC_SIM_ROOT || undefined;
  const kind = stdinKind();
  // From 1.5 Firecracker wires serial input only when stdin is a TTY or a FIFO.
  const serialInput = versionAtLeast(version, '1.5.0')
    ? kind === 'tty' || kind === 'fifo'
    : kind !== 'closed';

  const journalExit = (detail: Record<string, unknown>) =>
    appendJournal(journalPath, {
      kind: 'event',
      ts: Date.now(),
      pid: process.pid,
      instance: id,
      version,
      event: 'exit',
      detail,
    });
  const exit = (code: number): never => {
    journalExit({ code });
    process.exit(code);
  };

  const sim = new FirecrackerSimulator({
    version,
    instanceId: id,
    root,
    cwd: process.cwd(),
    journalPath,
    payloadLimit: Number(args.get('http-api-max-payload-size') ?? 51200),
    mmdsSizeLimit: Number(args.get('mmds-size-limit') ?? args.get('http-api-max-payload-size') ?? 51200),
    bootTimer: args.has('boot-timer'),
    serialInput,
    writeConsole: (text) => {
      process.stdout.write(text);
    },
    writeStderr: (text) => {
      process.stderr.write(text);
    },
    exit,
    abort: () => {
      journalExit({ signal: 'SIGABRT' });
      // The writes above are synchronous: nothing is lost when the signal ends the process,
      // and nothing runs after it (no answer goes out) while the signal is on its way.
      process.kill(process.pid, 'SIGABRT');
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 10_000);
    },
    ...(process.env.NQVM_FC_SIM_PANIC_ON
      ? {
          panicOn: {
            request: process.env.NQVM_FC_SIM_PANIC_ON,
            message: process.env.NQVM_FC_SIM_PANIC_MESSAGE || 'simulated panic',
          },
        }
      : {}),
    guestVsockDir: process.env.NQVM_FC_SIM_GUEST_VSOCK_DIR || undefined,
  });
  if (seccomp && !existsSync(sim.hostPath(seccomp)))
    die(EXIT_GENERIC, `Seccomp filter file ${seccomp} not found.`);

  appendJournal(journalPath, {
    kind: 'event',
    ts: Date.now(),
    pid: process.pid,
    instance: id,
    version,
    event: 'start',
    detail: { argv: process.argv.slice(2), root: root ?? null, cwd: process.cwd(), stdin: kind },
  });
  appendJournal(journalPath, {
    kind: 'event',
    ts: Date.now(),
    pid: process.pid,
    instance: id,
    version,
    event: 'serial-input',
    detail: { wired: serialInput, stdin: kind },
  });

  try {
    const logPath = args.get('log-path') as string | undefined;
    if (logPath) sim.configureLoggerFromCli(logPath, args.get('level') as string | undefined);
    const metricsPath = args.get('metrics-path') as string | undefined;
    if (metricsPath) sim.configureMetricsFromCli(metricsPath);
  } catch (err) {
    die(EXIT_GENERIC, (err as Error).message);
  }
  sim.log('Info', `Running Firecracker v${version}`);
  if (!serialInput) {
    sim.log('Warning', `Serial input is not wired: stdin is a ${kind}, not a TTY or a FIFO.`);
  }

  const metadata = args.get('metadata') as string | undefined;
  if (metadata) {
    try {
      sim.setMmdsData(JSON.parse(readFileSync(sim.hostPath(metadata), 'utf8')));
    } catch (err) {
      die(EXIT_BAD_CONFIGURATION, `Unable to load the MMDS metadata: ${(err as Error).message}`);
    }
  }
  if (configFile) {
    try {
      sim.applyConfigFile(JSON.parse(readFileSync(sim.hostPath(configFile), 'utf8')));
    } catch (err) {
      const msg = err instanceof Fault ? err.message : (err as Error).message;
      die(EXIT_BAD_CONFIGURATION, `Building VMM configured from cmdline json failed: ${msg}`);
    }
  }

  if (serialInput) {
    let partial = '';
    process.stdin.on('data', (chunk: Buffer) => {
      partial += chunk.toString('utf8');
      let nl = partial.indexOf('\n');
      while (nl >= 0) {
        sim.consoleInput(partial.slice(0, nl).replace(/\r$/, ''));
        partial = partial.slice(nl + 1);
        nl = partial.indexOf('\n');
      }
    });
    process.stdin.on('error', () => {});
  }

  process.once('SIGTERM', () => {
    journalExit({ signal: 'SIGTERM' });
    // Die by the signal, as Firecracker (which does not handle SIGTERM) does.
    process.kill(process.pid, 'SIGTERM');
  });

  if (noApi) {
    // The guest keeps the process alive; without an API nothing else would.
    setInterval(() => {}, 1 << 30);
    return;
  }
  const apiSock = sim.hostPath((args.get('api-sock') as string | undefined) ?? '/run/firecracker.socket');
  if (existsSync(apiSock)) {
    die(EXIT_GENERIC, `Failed to open the API socket at: ${apiSock}. Check that it is not already used.`);
  }

  // Firecracker's API thread handles one request at a time.
  let queue: Promise<void> = Promise.resolve();
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    const declared = Number(req.headers['content-length'] ?? 0);
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > sim.opts.payloadLimit) tooLarge = true;
      else chunks.push(c);
    });
    req.on('end', () => {
      queue = queue.then(() => {
        let refused: SimResponse | undefined;
        if (req.headers['transfer-encoding']) {
          refused = {
            status: 400,
            body: { fault_message: 'Invalid header. Reason: Transfer-Encoding is not supported.' },
          };
        } else if (tooLarge || declared > sim.opts.payloadLimit) {
          refused = sim.payloadTooLarge(Math.max(size, declared));
        }
        const path = (req.url ?? '/').split('?')[0]!;
        const body = refused ? '' : Buffer.concat(chunks).toString('utf8');
        const response = sim.handle(req.method ?? 'GET', path, body, refused);
        const headers: Record<string, string> = { Server: 'Firecracker API', Connection: 'keep-alive' };
        const text = response.body === undefined ? undefined : JSON.stringify(response.body);
        if (text !== undefined) {
          headers['Content-Type'] = 'application/json';
          headers['Content-Length'] = String(Buffer.byteLength(text));
        }
        if (response.after) res.once('finish', response.after);
        res.writeHead(response.status, headers);
        res.end(text);
      });
    });
  });
  server.on('error', (err) => die(EXIT_GENERIC, `Error creating the HTTP server: ${err.message}`));
  server.listen(sim.socketName(apiSock));
}

main();
