/**
 * One dnsmasq per network that asks for DHCP or DNS, bound to that network's bridge only. Its
 * configuration, pid file and lease file live in the network's folder under the agent's state
 * directory. dnsmasq drops to an unprivileged user after reading its configuration, so static
 * leases are part of the configuration and a change restarts it (leases survive in the file).
 */
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatIpv4, type Ipv4Cidr, netmask, parseIpv4 } from '@nqvm/api/ipv4';
import type { HostRunner } from './host-runner';
import { IFNAME, MAC } from './names';

export interface DnsmasqSettings {
  bridge: string;
  gateway: string;
  cidr: Ipv4Cidr;
  dhcp: boolean;
  dhcpRange?: { start: string; end: string };
  /** Advertise the gateway as the VMs' router (nat). */
  router: boolean;
  dns: boolean;
  /** Upstream resolvers; none: the host's /etc/resolv.conf. */
  dnsServers?: readonly string[];
  staticLeases: ReadonlyArray<{ mac: string; ip: string }>;
}

const LEASE_TIME = '12h';

export function dnsmasqFiles(dir: string): { conf: string; pid: string; leases: string } {
  return {
    conf: path.join(dir, 'dnsmasq.conf'),
    pid: path.join(dir, 'dnsmasq.pid'),
    leases: path.join(dir, 'dnsmasq.leases'),
  };
}

function checked(value: string, ok: boolean, what: string): string {
  if (!ok || /[\s#,]/.test(value))
    throw new Error(`refusing ${what} ${JSON.stringify(value)} in dnsmasq.conf`);
  return value;
}

const ipv4 = (v: string) => checked(v, parseIpv4(v) !== null, 'address');

/**
 * The configuration file of one network's dnsmasq.
 *
 * @example
 * dnsmasqConf('/var/lib/nqvm/agent/network/<id>', { bridge: 'nqb...', gateway: '10.0.0.1', ... });
 */
export function dnsmasqConf(dir: string, s: DnsmasqSettings): string {
  const files = dnsmasqFiles(dir);
  const lines = [
    '# Written by nqvm for one network; rewritten on every change.',
    `interface=${checked(s.bridge, IFNAME.test(s.bridge), 'interface')}`,
    'except-interface=lo',
    'bind-interfaces',
    `listen-address=${ipv4(s.gateway)}`,
    `pid-file=${files.pid}`,
    'no-hosts',
  ];
  if (s.dhcp) {
    const mask = netmask(s.cidr.prefix);
    lines.push(
      `dhcp-leasefile=${files.leases}`,
      s.dhcpRange
        ? `dhcp-range=${ipv4(s.dhcpRange.start)},${ipv4(s.dhcpRange.end)},${mask},${LEASE_TIME}`
        : `dhcp-range=${formatIpv4(s.cidr.network)},static,${mask},${LEASE_TIME}`,
      'dhcp-authoritative',
      // Leases follow the MAC, as the reservations do: clones of one snapshot send the same
      // client identifier (a DUID made from their common machine-id) from different MACs.
      'dhcp-ignore-clid',
      s.router ? `dhcp-option=option:router,${ipv4(s.gateway)}` : 'dhcp-option=option:router',
      s.dns ? `dhcp-option=option:dns-server,${ipv4(s.gateway)}` : 'dhcp-option=option:dns-server',
      ...s.staticLeases.map((l) => `dhcp-host=${checked(l.mac, MAC.test(l.mac), 'MAC')},${ipv4(l.ip)}`),
    );
  }
  if (s.dns) {
    lines.push('domain-needed', 'bogus-priv');
    if (s.dnsServers && s.dnsServers.length > 0) {
      lines.push('no-resolv', ...s.dnsServers.map((d) => `server=${ipv4(d)}`));
    }
  } else {
    lines.push('port=0');
  }
  return `${lines.join('\n')}\n`;
}

/** Pids of the dnsmasq processes started with exactly this configuration file. */
export async function dnsmasqPids(confPath: string): Promise<number[]> {
  const wanted = `dnsmasq\0--conf-file=${confPath}\0`;
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmdline = await readFile(`/proc/${entry}/cmdline`, 'latin1').catch(() => '');
    if (cmdline === wanted || cmdline === `/usr/sbin/${wanted}`) pids.push(Number(entry));
  }
  return pids;
}

async function gone(pid: number): Promise<boolean> {
  const stat = await readFile(`/proc/${pid}/stat`, 'latin1').catch(() => null);
  return stat === null || stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
}

async function stopPid(pid: number): Promise<void> {
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  for (let i = 0; i < 100; i++) {
    if (await gone(pid)) return;
    await sleep(20);
  }
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // Ended between the check and the kill.
  }
}

/**
 * Makes the network's dnsmasq run `conf`: starts it, restarts it when the configuration changed,
 * leaves it alone otherwise. Answers what it did.
 */
export async function ensureDnsmasq(
  host: HostRunner,
  dir: string,
  conf: string,
): Promise<'started' | 'restarted' | 'unchanged'> {
  const files = dnsmasqFiles(dir);
  const current = await readFile(files.conf, 'utf8').catch(() => null);
  const pids = await dnsmasqPids(files.conf);
  if (current === conf && pids.length === 1) return 'unchanged';
  for (const pid of pids) await stopPid(pid);
  await writeFile(files.conf, conf, { mode: 0o644 });
  // dnsmasq checks its settings, binds, forks, and exits 0 once the daemon runs (or fails loudly).
  await host.run('dnsmasq', [`--conf-file=${files.conf}`]);
  return pids.length > 0 ? 'restarted' : 'started';
}

/** Stops the network's dnsmasq; answers whether one ran. Keeps the lease file. */
export async function stopDnsmasq(dir: string): Promise<boolean> {
  const files = dnsmasqFiles(dir);
  const pids = await dnsmasqPids(files.conf);
  for (const pid of pids) await stopPid(pid);
  await rm(files.pid, { force: true });
  return pids.length > 0;
}

/** `mac -> ip` of the leases in a dnsmasq lease file (`expiry mac ip name clientid`). */
export function parseLeases(text: string): Map<string, string> {
  const leases = new Map<string, string>();
  for (const line of text.split('\n')) {
    const [, mac, ip] = line.trim().split(/\s+/);
    if (mac && ip && MAC.test(mac.toLowerCase()) && parseIpv4(ip) !== null) leases.set(mac.toLowerCase(), ip);
  }
  return leases;
}
