/**
 * `nqvm container ...`: OCI images run as their own microVMs, with docker's verbs and flags
 * (`run`, `ps`, `logs`, `exec`, `stop`, `rm`, ...). Names or ids wherever a container is taken.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import type { Container, ContainerCreate, ContainerStats } from '@nqvm/api/containers';
import { Command, Option } from 'commander';
import type { z } from 'zod';
import { type ApiClient, ApiError } from '../client/api';
import {
  age,
  formatBytes,
  formatMib,
  type Printer,
  printData,
  printItem,
  printList,
  stateColour,
  UsageError,
} from '../client/output';
import { readStdinLine } from '../client/prompt';
import {
  action,
  KINDS,
  type OperationLike,
  printAccepted,
  reportError,
  resolveId,
  session,
  waitOperation,
} from '../client/session';
import { addExecCommand, parseEnv } from './exec';
import { collect, parseLabels, parseMib, waitOptions } from './vm';

type ContainerBody = z.input<typeof ContainerCreate>;

interface ContainerAction {
  container: Container;
  operation: OperationLike;
}

/** What `container ps` shows without -a: containers whose process runs (or is about to). */
const LIVE = new Set<Container['status']>(['starting', 'running', 'paused']);

/**
 * `-p HOST:CONTAINER[/tcp|udp]` as a port of the API.
 *
 * @example
 * parsePublish('5353:53/udp') // { host_port: 5353, container_port: 53, protocol: 'udp' }
 */
export function parsePublish(text: string): {
  host_port: number;
  container_port: number;
  protocol: 'tcp' | 'udp';
} {
  const m = /^(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/.exec(text);
  const host = Number(m?.[1]);
  const inner = Number(m?.[2]);
  if (!m || host < 1 || host > 65_535 || inner < 1 || inner > 65_535) {
    throw new UsageError(`-p is HOST_PORT:CONTAINER_PORT[/tcp|udp], e.g. 8080:80, not "${text}"`);
  }
  return { host_port: host, container_port: inner, protocol: (m[3] as 'tcp' | 'udp' | undefined) ?? 'tcp' };
}

/**
 * `--entrypoint` as an argv: a JSON array of strings, or else one word (as docker takes it);
 * an empty value clears the image's entrypoint.
 *
 * @example
 * parseEntrypoint('["/bin/sh", "-c"]') // ['/bin/sh', '-c']
 * parseEntrypoint('/docker-entrypoint.sh') // ['/docker-entrypoint.sh']
 */
export function parseEntrypoint(text: string): string[] {
  if (text === '') return [];
  if (!text.trimStart().startsWith('[')) return [text];
  let argv: unknown;
  try {
    argv = JSON.parse(text);
  } catch {
    argv = null;
  }
  if (!Array.isArray(argv) || !argv.every((a) => typeof a === 'string')) {
    throw new UsageError(`--entrypoint must be one word or a JSON array of strings, not ${text}`);
  }
  return argv as string[];
}

/** docker's `--restart no` is nqvm's `never`. */
export function parseRestart(text: string | undefined): 'never' | 'on-failure' | 'always' | undefined {
  if (text === undefined) return undefined;
  if (text === 'no' || text === 'never') return 'never';
  if (text === 'on-failure' || text === 'always') return text;
  throw new UsageError(`--restart must be never (or no), on-failure or always, not "${text}"`);
}

/** A name for a container run without --name: its image's repository and a random suffix. */
export function defaultName(image: string, suffix = randomBytes(2).toString('hex')): string {
  const repository = image.split('@')[0]?.split('/').pop()?.split(':')[0] ?? '';
  const base = repository
    .replace(/[^a-zA-Z0-9_.-]/g, '-')
    .replace(/^[^a-zA-Z0-9]+/, '')
    .slice(0, 50);
  return `${base || 'container'}-${suffix}`;
}

export interface RunFlags {
  name?: string;
  env: string[];
  publish: string[];
  entrypoint?: string;
  workdir?: string;
  user?: string;
  cpus?: string;
  memory?: string;
  restart?: string;
  label: string[];
}

/**
 * The ContainerCreate body of `container run IMAGE [ARGS...]` (the network and registry
 * credentials are added by the caller, which resolves and reads them).
 */
export function runBody(
  image: string,
  args: string[],
  f: RunFlags,
  env: NodeJS.ProcessEnv = process.env,
): ContainerBody {
  const cpus = f.cpus === undefined ? undefined : Number(f.cpus);
  if (cpus !== undefined && (!Number.isInteger(cpus) || cpus < 1)) {
    throw new UsageError(`--cpus must be a whole number of CPUs, not "${f.cpus}"`);
  }
  return {
    name: f.name ?? defaultName(image),
    image,
    command: f.entrypoint === undefined ? undefined : parseEntrypoint(f.entrypoint),
    args: args.length ? args : undefined,
    env: parseEnv(f.env, env),
    working_dir: f.workdir,
    user: f.user,
    ports: f.publish.map(parsePublish),
    vcpu: cpus,
    mem_mib: f.memory === undefined ? undefined : parseMib(f.memory, '--memory'),
    restart_policy: parseRestart(f.restart),
    labels: parseLabels(f.label),
  };
}

function ports(c: Container): string {
  return c.ports.map((p) => `${p.host_port}->${p.container_port}/${p.protocol}`).join(',');
}

function printContainer(print: Printer, c: Container): void {
  printItem(print, c, [
    ['id', c.id],
    ['name', c.name],
    ['image', c.image],
    ['digest', c.image_digest],
    ['status', c.status],
    ['exit code', c.exit_code],
    ['restarts', c.restart_count],
    ['command', c.effective_command ? JSON.stringify(c.effective_command) : null],
    ['env', Object.keys(c.env).length ? c.env : null],
    ['workdir', c.working_dir],
    ['user', c.user],
    ['ports', ports(c) || null],
    ['vcpu', c.vcpu],
    ['memory', formatMib(c.mem_mib)],
    ['restart', c.restart_policy],
    ['ip', c.ip],
    ['host', c.host_id],
    ['vm state', c.vm_state],
    ['labels', Object.keys(c.labels).length ? c.labels : null],
    ['last error', c.last_error],
    ['started', c.started_at],
    ['finished', c.finished_at],
    ['created', c.created_at],
  ]);
}

/** A log line `<RFC3339> <stream> <text>` in parts; a line of another shape is stdout text. */
export function parseLogLine(line: string): { at: string | null; stream: string; text: string } {
  const m = /^(\S+) (stdout|stderr|nqvm) (.*)$/s.exec(line);
  return m
    ? { at: m[1] ?? null, stream: m[2] ?? 'stdout', text: m[3] ?? '' }
    : { at: null, stream: 'stdout', text: line };
}

/**
 * Prints a container's log (stdout lines on stdout, the rest on stderr), following it with
 * `follow` until the container stops; `onResponse` sees the stream (to end it early).
 */
async function printLogs(
  api: ApiClient,
  id: string,
  opts: { follow?: boolean; tail?: number; timestamps?: boolean },
  onResponse?: (res: IncomingMessage) => void,
): Promise<void> {
  const res = await api.stream(`/api/v1/containers/${id}/logs`, {
    tail: opts.tail,
    follow: opts.follow ? 'true' : undefined,
    timestamps: 'true',
  });
  onResponse?.(res);
  res.setEncoding('utf8');
  const write = (line: string) => {
    const l = parseLogLine(line);
    const text = `${opts.timestamps && l.at ? `${l.at} ` : ''}${l.text}\n`;
    (l.stream === 'stdout' ? process.stdout : process.stderr).write(text);
  };
  let rest = '';
  try {
    for await (const chunk of res) {
      const lines = (rest + (chunk as string)).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) write(line);
    }
  } catch (err) {
    // Ended on purpose (onResponse's destroy) is not an error.
    if (!res.destroyed) throw err;
  }
  if (rest) write(rest);
}

/** The container once its status says the process ended, or null if it runs (again) after `waitMs`. */
async function ended(api: ApiClient, id: string, waitMs: number): Promise<Container | null> {
  const deadline = Date.now() + waitMs;
  for (;;) {
    const c = await api.get<Container>(`/api/v1/containers/${id}`);
    if (c.status === 'exited' || c.status === 'failed') return c;
    if (Date.now() > deadline) return null;
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * `run` without -d: its output until the process ends, then its exit code. Ctrl-C stops the
 * container (as docker forwards the signal); a second Ctrl-C leaves it running and returns.
 */
async function runAttached(api: ApiClient, c: Container): Promise<number> {
  let interrupts = 0;
  let stream: IncomingMessage | null = null;
  const onSigint = () => {
    interrupts++;
    if (interrupts === 1) {
      process.stderr.write(`nqvm: stopping ${c.name} (Ctrl-C again to leave it running)\n`);
      api.post(`/api/v1/containers/${c.id}/stop`, {}).catch((err: unknown) => reportError(err));
    } else {
      stream?.destroy();
    }
  };
  process.on('SIGINT', onSigint);
  try {
    for (let first = true; ; first = false) {
      // After a restart only the new lines: the earlier ones are printed already.
      await printLogs(api, c.id, { follow: true, tail: first ? undefined : 0 }, (res) => {
        stream = res;
      });
      if (interrupts > 1) {
        process.stderr.write(`nqvm: ${c.name} runs on (nqvm container logs -f ${c.name})\n`);
        return 130;
      }
      const done = await ended(api, c.id, 5_000);
      if (!done) continue;
      if (done.last_error) process.stderr.write(`nqvm: ${done.name}: ${done.last_error}\n`);
      if (done.exit_code !== null) return done.exit_code;
      throw new ApiError(0, 'CONTAINER_FAILED', `${done.name} ${done.status} without an exit code`);
    }
  } finally {
    process.off('SIGINT', onSigint);
  }
}

export function containerCommand(): Command {
  const container = new Command('container')
    .description('OCI images run as microVMs, docker style')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm container run -d --name web -p 8080:80 docker.io/library/nginx:1.27
  $ nqvm container ps
  $ nqvm container logs -f web
  $ nqvm container exec -it web -- sh
  $ nqvm container stop web && nqvm container rm web`,
    );

  waitOptions(
    container
      .command('run')
      .argument('<image>', 'an OCI reference, e.g. docker.io/library/alpine:3.20')
      .argument('[args...]', "replace the image's command (after --)")
      .description('create and start a container; without -d, print its output and exit with its code')
      .option('--name <name>', 'container name (default: the image name and a random suffix)')
      .option('-d, --detach', 'print the id once it runs, and return')
      .option(
        '-e, --env <name=value>',
        'an environment variable; NAME alone passes its value here',
        collect,
        [],
      )
      .option(
        '-p, --publish <host:container>',
        'publish a port: HOST:CONTAINER[/udp] (repeatable)',
        collect,
        [],
      )
      .option('--entrypoint <cmd>', "replace the image's entrypoint: one word, or a JSON argv")
      .option('-w, --workdir <dir>', 'working directory (an absolute path)')
      .option('-u, --user <user>', 'user, uid, user:group or uid:gid')
      .option('--cpus <n>', 'virtual CPUs (default 1)')
      .option('--memory <size>', 'memory, e.g. 512M (default 256M)')
      .addOption(
        new Option('--restart <policy>', 'restart policy (default never)').choices([
          'never',
          'no',
          'on-failure',
          'always',
        ]),
      )
      .option('--network <network>', 'network of its NIC (name or id; default: the default network)')
      .option('--registry-user <user>', 'pull as this registry user (with --registry-password-stdin)')
      .option('--registry-password-stdin', 'read the registry password from standard input (used once)')
      .option('-l, --label <key=value>', 'label (repeatable)', collect, [])
      .addHelpText(
        'after',
        `
The image is pulled by the manager (once per digest) and runs as its own microVM. Without -d
the CLI waits until it runs, prints its output as it comes and exits with its exit code;
Ctrl-C stops it (twice: leave it running). --no-wait prints it as soon as it is accepted.

Examples:
  $ nqvm container run docker.io/library/alpine:3.20 -- echo hello
  $ nqvm container run -d --name web -p 8080:80 docker.io/library/nginx:1.27
  $ nqvm container run --entrypoint '["/bin/sh","-c"]' alpine:3.20 -- 'env; ls /'
  $ echo "$PW" | nqvm container run --registry-user ci --registry-password-stdin registry.local:5000/app:v2`,
      ),
  ).action(
    action(async (image: string, args: string[], opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      if (opts.registryPasswordStdin && !opts.registryUser) {
        throw new UsageError('--registry-password-stdin needs --registry-user');
      }
      if (opts.registryUser && !opts.registryPasswordStdin) {
        throw new UsageError('--registry-user needs --registry-password-stdin (a password is never a flag)');
      }
      const body = runBody(image, args, opts);
      if (opts.network) body.network_id = await resolveId(api, KINDS.network, opts.network);
      if (opts.registryUser) {
        const password = await readStdinLine();
        if (!password) throw new UsageError('no registry password on standard input');
        body.registry_credentials = { username: opts.registryUser, password };
      }
      const res = await api.post<ContainerAction>('/api/v1/containers', body);
      if (!opts.wait) {
        printAccepted(print, res, [res.operation], () => process.stdout.write(`${res.container.id}\n`));
        return;
      }
      await waitOperation(api, res.operation, {
        timeoutS: Number(opts.timeout),
        label: `starting ${body.name}`,
      });
      const c = await api.get<Container>(`/api/v1/containers/${res.container.id}`);
      if (opts.detach) {
        if (print.format === 'table') process.stdout.write(`${c.id}\n`);
        else printData(print, c);
        return;
      }
      process.exitCode = await runAttached(api, c);
    }),
  );

  container
    .command('ps')
    .alias('list')
    .alias('ls')
    .description('list running containers (all of them with -a)')
    .option('-a, --all', 'also the created, exited and failed ones')
    .addHelpText('after', '\nExamples:\n  $ nqvm container ps\n  $ nqvm container ps -a -o json')
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const items = await api.all<Container>('/api/v1/containers');
        const shown = opts.all ? items : items.filter((c) => LIVE.has(c.status));
        printList(print, shown, shown, [
          { header: 'NAME', value: (c) => c.name },
          { header: 'STATUS', value: (c) => c.status, colour: stateColour },
          { header: 'IMAGE', value: (c) => c.image },
          { header: 'PORTS', value: ports },
          { header: 'IP', value: (c) => c.ip },
          { header: 'EXIT', value: (c) => c.exit_code },
          { header: 'CREATED', value: (c) => age(c.created_at) },
        ]);
      }),
    );

  container
    .command('logs')
    .argument('<container>', 'name or id')
    .description("print a container's output (stdout on stdout, stderr on stderr)")
    .option('-f, --follow', 'keep printing new lines until it stops')
    .option('-n, --tail <lines>', 'only the last lines')
    .option('-t, --timestamps', 'start each line with its time (RFC 3339)')
    .addHelpText(
      'after',
      '\nExamples:\n  $ nqvm container logs web --tail 100\n  $ nqvm container logs -f -t web',
    )
    .action(
      action(async (name: string, opts, cmd: Command) => {
        const { api } = await session(cmd);
        const tail = opts.tail === undefined ? undefined : Number(opts.tail);
        if (tail !== undefined && !(Number.isInteger(tail) && tail >= 0)) {
          throw new UsageError(`--tail must be a number of lines, not "${opts.tail}"`);
        }
        const id = await resolveId(api, KINDS.container, name);
        await printLogs(api, id, { follow: opts.follow, tail, timestamps: opts.timestamps });
      }),
    );

  addExecCommand(container, KINDS.container);

  const lifecycle: Array<[string, string, string]> = [
    ['start', 'start a created or exited container', 'starting'],
    ['restart', 'stop a container and start it again', 'restarting'],
    ['pause', 'pause a container (its vCPUs stop; memory stays)', 'pausing'],
    ['resume', 'resume a paused container', 'resuming'],
  ];
  for (const [verb, description, label] of lifecycle) {
    waitOptions(
      container
        .command(verb)
        .argument('<container>', 'name or id')
        .description(description)
        .addHelpText('after', `\nExample:\n  $ nqvm container ${verb} web`),
    ).action(
      action(async (name: string, opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.container, name);
        const res = await api.post<ContainerAction>(`/api/v1/containers/${id}/${verb}`, {});
        await finishContainer(api, print, res, opts, `${label} ${name}`);
      }),
    );
  }

  waitOptions(
    container
      .command('stop')
      .argument('<container>', 'name or id')
      .description('stop a container: SIGTERM to its process, SIGKILL after --time seconds')
      .option('--time <s>', 'seconds it gets to exit after SIGTERM', '10')
      .addHelpText(
        'after',
        '\nExamples:\n  $ nqvm container stop web\n  $ nqvm container stop web --time 0   # SIGKILL at once',
      ),
  ).action(
    action(async (name: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const id = await resolveId(api, KINDS.container, name);
      const res = await api.post<ContainerAction>(`/api/v1/containers/${id}/stop`, {
        timeout_s: Number(opts.time),
      });
      await finishContainer(api, print, res, opts, `stopping ${name}`);
    }),
  );

  waitOptions(
    container
      .command('rm')
      .alias('delete')
      .argument('<container>', 'name or id')
      .description('delete a container and its disk (refused while it runs, unless -f)')
      .option('-f, --force', 'delete it even if it runs')
      .addHelpText('after', '\nExamples:\n  $ nqvm container rm web\n  $ nqvm container rm -f web'),
  ).action(
    action(async (name: string, opts, cmd: Command) => {
      const { api, print } = await session(cmd);
      const id = await resolveId(api, KINDS.container, name);
      const res = await api.delete<{ operation?: OperationLike } | null>(`/api/v1/containers/${id}`, {
        force: opts.force ? 'true' : undefined,
      });
      if (!opts.wait && res?.operation) {
        printAccepted(print, res, [res.operation], () => undefined);
        return;
      }
      if (res?.operation) {
        await waitOperation(api, res.operation, {
          timeoutS: Number(opts.timeout),
          label: `deleting ${name}`,
        });
      }
      process.stderr.write(`deleted container ${name}\n`);
    }),
  );

  container
    .command('inspect')
    .alias('show')
    .argument('<container>', 'name or id')
    .description('show one container')
    .addHelpText(
      'after',
      '\nExamples:\n  $ nqvm container inspect web\n  $ nqvm container inspect web -o json',
    )
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.container, name);
        printContainer(print, await api.get<Container>(`/api/v1/containers/${id}`));
      }),
    );

  container
    .command('stats')
    .argument('<container>', 'name or id')
    .description("a container's resource use: its VMM on the host, and memory and load inside")
    .addHelpText('after', '\nExamples:\n  $ nqvm container stats web\n  $ nqvm container stats web -o json')
    .action(
      action(async (name: string, _opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const id = await resolveId(api, KINDS.container, name);
        const s = await api.get<ContainerStats>(`/api/v1/containers/${id}/stats`);
        const g = s.guest;
        printItem(print, s, [
          ['status', s.status],
          ['cpu time', s.host ? `${s.host.cpu_seconds.toFixed(2)} s` : null],
          ['vmm rss', s.host ? formatBytes(s.host.rss_bytes) : null],
          [
            'memory',
            g
              ? `${formatBytes(g.mem_total_bytes - g.mem_available_bytes)} used of ${formatBytes(g.mem_total_bytes)}`
              : null,
          ],
          ['load (1m)', g?.load_1m],
          ['processes', g?.processes],
          ['uptime', g ? `${Math.round(g.uptime_s)} s` : null],
          ['at', s.at],
        ]);
      }),
    );
  return container;
}

/** Prints the container once its operation ended, or at once (with the operation) under --no-wait. */
async function finishContainer(
  api: ApiClient,
  print: Printer,
  res: ContainerAction,
  opts: { wait: boolean; timeout: string },
  label: string,
): Promise<void> {
  if (!opts.wait) {
    printAccepted(print, res, [res.operation], () => printContainer(print, res.container));
    return;
  }
  await waitOperation(api, res.operation, { timeoutS: Number(opts.timeout), label });
  printContainer(print, await api.get<Container>(`/api/v1/containers/${res.container.id}`));
}
