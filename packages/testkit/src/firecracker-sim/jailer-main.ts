/**
 * Entry point of the `jailer` simulator. It parses the real jailer arguments, builds
 * `<chroot-base>/<exec-file name>/<id>/root/`, copies the exec file there and records the
 * cgroup settings; it neither chroots nor drops privileges. The wrapper script (binary.ts) then
 * execs the plan this writes, so Firecracker keeps the jailer's pid and stdio as with the real
 * jailer (without --daemonize).
 */
import { chmodSync, copyFileSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { isSimVersion } from './spec';

const EXIT_ARG_PARSING = 153;

function die(message: string, code = 1): never {
  process.stderr.write(`Jailer error: ${message}\n`);
  process.exit(code);
}

const VALUE_FLAGS = new Set([
  'id',
  'exec-file',
  'uid',
  'gid',
  'chroot-base-dir',
  'netns',
  'cgroup',
  'cgroup-version',
  'parent-cgroup',
  'resource-limit',
  'plan-file',
]);
const BOOL_FLAGS = new Set(['daemonize', 'new-pid-ns', 'version', 'help']);
const REPEATABLE = new Set(['cgroup', 'resource-limit']);

const quote = (s: string): string => `'${s.replaceAll("'", `'\\''`)}'`;

function main(): void {
  const version = process.env.FC_SIM_VERSION ?? '';
  if (!isSimVersion(version)) die(`FC_SIM_VERSION must be a simulated version, got "${version}"`);
  const argv = process.argv.slice(2);
  const sep = argv.indexOf('--');
  const own = sep >= 0 ? argv.slice(0, sep) : argv;
  const fcArgs = sep >= 0 ? argv.slice(sep + 1) : [];
  const single = new Map<string, string | true>();
  const multi: Record<string, string[]> = { cgroup: [], 'resource-limit': [] };
  for (let i = 0; i < own.length; i++) {
    const arg = own[i]!;
    const name = arg.startsWith('--') ? arg.slice(2) : '';
    if (VALUE_FLAGS.has(name)) {
      const value = own[++i];
      if (value === undefined) die(`Missing value for argument ${arg}`, EXIT_ARG_PARSING);
      if (REPEATABLE.has(name)) multi[name]!.push(value);
      else if (single.has(name)) die(`Argument ${arg} given more than once`, EXIT_ARG_PARSING);
      else single.set(name, value);
    } else if (BOOL_FLAGS.has(name)) single.set(name, true);
    else die(`Found argument '${arg}' which wasn't expected`, EXIT_ARG_PARSING);
  }
  const planFile = single.get('plan-file') as string | undefined;
  // The plan removes itself first: the wrapper execs it and never comes back.
  const writePlan = (script: string) => {
    if (planFile) writeFileSync(planFile, `rm -f -- ${quote(planFile)}\n${script}`);
  };
  if (single.has('version') || single.has('help')) {
    process.stdout.write(`Jailer v${version}\n`);
    writePlan('exit 0\n');
    return;
  }
  const required = (name: string): string => {
    const v = single.get(name);
    if (typeof v !== 'string') die(`Missing required argument --${name}`, EXIT_ARG_PARSING);
    return v;
  };
  const id = required('id');
  if (!/^[a-zA-Z0-9-]{1,64}$/.test(id)) die(`Invalid instance ID: ${id}`);
  const execFile = required('exec-file');
  const uid = Number(required('uid'));
  const gid = Number(required('gid'));
  if (!Number.isInteger(uid) || uid < 0) die(`Invalid uid: ${single.get('uid')}`);
  if (!Number.isInteger(gid) || gid < 0) die(`Invalid gid: ${single.get('gid')}`);
  try {
    if (!statSync(execFile).isFile()) die(`${execFile} is not a file`);
  } catch {
    die(`Failed to canonicalize path ${execFile}: No such file or directory (os error 2)`);
  }
  const execName = basename(execFile);
  if (!execName.includes('firecracker')) {
    die(`Invalid filename. The filename of \`--exec-file\` option must contain "firecracker": ${execName}`);
  }
  const cgroupVersion = (single.get('cgroup-version') as string | undefined) ?? '1';
  if (cgroupVersion !== '1' && cgroupVersion !== '2') die(`Invalid cgroup version: ${cgroupVersion}`);
  const cgroups: Record<string, string> = {};
  for (const c of multi.cgroup!) {
    const m = /^([a-z0-9_]+\.[a-z0-9_.]+)=(.+)$/.exec(c);
    if (!m) die(`Invalid format for cgroup: ${c}`);
    cgroups[m[1]!] = m[2]!;
  }
  const netns = single.get('netns') as string | undefined;
  if (netns !== undefined && !existsSync(netns)) die(`Failed to open the netns file ${netns}`);
  const base = (single.get('chroot-base-dir') as string | undefined) ?? '/srv/jailer';
  const instanceDir = join(base, execName, id);
  const root = join(instanceDir, 'root');
  mkdirSync(join(root, 'dev', 'net'), { recursive: true });
  // Stand-ins for the device nodes the jailer creates with mknod.
  for (const dev of ['dev/kvm', 'dev/net/tun']) writeFileSync(join(root, dev), '');
  const jailedExec = join(root, execName);
  copyFileSync(execFile, jailedExec);
  chmodSync(jailedExec, 0o755);
  const now = BigInt(Date.now()) * 1000n;
  const cpuUs = Math.round(process.cpuUsage().user + process.cpuUsage().system);
  const finalArgs = [
    ...fcArgs,
    '--id',
    id,
    '--start-time-us',
    String(now),
    '--start-time-cpu-us',
    String(cpuUs),
    '--parent-cpu-time-us',
    String(cpuUs),
  ];
  writeFileSync(
    join(instanceDir, 'jailer.json'),
    JSON.stringify(
      {
        version,
        id,
        execFile,
        uid,
        gid,
        chrootBaseDir: base,
        root,
        netns: netns ?? null,
        daemonize: single.has('daemonize'),
        newPidNs: single.has('new-pid-ns'),
        cgroupVersion: Number(cgroupVersion),
        parentCgroup: (single.get('parent-cgroup') as string | undefined) ?? null,
        cgroups,
        resourceLimits: multi['resource-limit'],
        firecrackerArgs: finalArgs,
      },
      null,
      2,
    ),
  );
  const exec = [jailedExec, ...finalArgs].map(quote).join(' ');
  const lines = [
    `cd -- ${quote(root)} || exit 1`,
    `FC_SIM_ROOT=${quote(root)}`,
    'export FC_SIM_ROOT',
    // --daemonize sends Firecracker's stdio to /dev/null and leaves the jailer's pid.
    single.has('daemonize') ? `${exec} </dev/null >/dev/null 2>&1 &` : `exec ${exec}`,
    '',
  ];
  writePlan(lines.join('\n'));
}

main();
