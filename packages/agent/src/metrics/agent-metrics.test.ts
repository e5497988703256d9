/**
 * The agent's /metrics: per-VM series read from a real process (CPU, RSS, the network counters
 * of its namespace), the host's capacity and use, a clean exposition by promtool's rules, and
 * the route's auth (manager signature or metrics token, nothing else).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import dgram from 'node:dgram';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseExposition, promtoolProblems, sampleValue } from '@nqvm/testkit/prometheus';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Agent } from '../agent/agent';
import { FakeDriver } from '../agent/fake-driver';
import { managerKeys, SignedAgentClient, startStandaloneAgent, tempDir } from '../agent/testing';
import type { RunningVmm } from '../agent/vm-runtime';
import type { DiskUsage, VmHandle } from '../drivers/types';
import { AgentMetrics } from './agent-metrics';

const METRICS_TOKEN = 'metrics-token-for-tests-0123456789';

describe('AgentMetrics on a real process', () => {
  let busy: ChildProcess;
  const vmId = randomUUID();
  let disk: DiskUsage = { drive: 'root', readBytes: 4096, writeBytes: 0, readOps: 1, writeOps: 0 };
  let metrics: AgentMetrics;

  beforeAll(async () => {
    // Stands in for a VMM process: it burns CPU, so its CPU seconds must rise between scrapes.
    busy = spawn(process.execPath, ['-e', 'for(;;){}'], { stdio: 'ignore' });
    await sleep(200);
    const vm: RunningVmm = {
      vmId,
      vmm: 'qemu',
      state: 'running',
      handle: { record: { pid: busy.pid! } } as VmHandle,
      driver: { diskUsage: async () => [disk] } as unknown as RunningVmm['driver'],
      vcpu: 2,
      memMib: 256,
    };
    metrics = new AgentMetrics({
      running: () => [vm],
      states: () => new Map([['running', 1]]),
      // The process's own loopback stands in for a TAP: the kernel counts both the same way.
      taps: async () => new Map([[vmId, [{ nicIndex: 0, tap: 'lo' }]]]),
      capacity: async () => ({ vcpu: 3, mem_mib: 1024, disk_mib: 2048 }),
      stateDir: tempDir(),
    });
  });
  afterAll(() => busy?.kill('SIGKILL'));

  it('exposes per-VM and host series whose values move, in a format promtool accepts', async () => {
    const first = await metrics.scrape();
    expect(promtoolProblems(first)).toBeNull();
    const a = parseExposition(first);
    const cpu0 = sampleValue(a, 'nqvm_vm_cpu_seconds_total', { vm_id: vmId, vmm: 'qemu' })!;
    const rx0 = sampleValue(a, 'nqvm_vm_network_receive_bytes_total', { vm_id: vmId, nic: 'eth0' })!;
    const txp0 = sampleValue(a, 'nqvm_vm_network_transmit_packets_total', { vm_id: vmId, nic: 'eth0' })!;
    expect(a.types.get('nqvm_vm_cpu_seconds_total')).toBe('counter');
    expect(sampleValue(a, 'nqvm_vm_memory_rss_bytes', { vm_id: vmId })).toBeGreaterThan(1024 * 1024);
    expect(sampleValue(a, 'nqvm_vm_memory_bytes', { vm_id: vmId })).toBe(256 * 1024 * 1024);
    expect(sampleValue(a, 'nqvm_vm_vcpus', { vm_id: vmId })).toBe(2);
    expect(sampleValue(a, 'nqvm_vm_disk_read_bytes_total', { vm_id: vmId, drive: 'root' })).toBe(4096);
    expect(sampleValue(a, 'nqvm_agent_vmm_processes', { vmm: 'qemu' })).toBe(1);
    expect(sampleValue(a, 'nqvm_agent_vms', { state: 'running' })).toBe(1);
    expect(sampleValue(a, 'nqvm_host_cpus')).toBe(3);
    expect(sampleValue(a, 'nqvm_host_memory_bytes')).toBe(1024 * 1024 * 1024);
    expect(sampleValue(a, 'nqvm_host_vm_vcpus')).toBe(2);
    expect(sampleValue(a, 'nqvm_host_memory_available_bytes')).toBeGreaterThan(0);
    expect(sampleValue(a, 'nqvm_host_cpu_seconds_total', { mode: 'idle' })).toBeGreaterThan(0);
    expect(sampleValue(a, 'nqvm_agent_process_cpu_seconds_total')).toBeGreaterThan(0);

    // 100 datagrams of 1000 bytes over loopback, and 1 MiB more written to the drive.
    const sock = dgram.createSocket('udp4');
    for (let i = 0; i < 100; i++)
      await new Promise<void>((r) => sock.send(Buffer.alloc(1000), 9, '127.0.0.1', () => r()));
    sock.close();
    disk = { ...disk, writeBytes: 1024 * 1024, writeOps: 8 };
    await sleep(300);

    const b = parseExposition(await metrics.scrape());
    expect(sampleValue(b, 'nqvm_vm_cpu_seconds_total', { vm_id: vmId })!).toBeGreaterThan(cpu0);
    expect(sampleValue(b, 'nqvm_vm_network_receive_bytes_total', { vm_id: vmId })!).toBeGreaterThanOrEqual(
      rx0 + 100_000,
    );
    expect(sampleValue(b, 'nqvm_vm_network_transmit_packets_total', { vm_id: vmId })!).toBeGreaterThanOrEqual(
      txp0 + 100,
    );
    expect(sampleValue(b, 'nqvm_vm_disk_written_bytes_total', { vm_id: vmId, drive: 'root' })).toBe(
      1024 * 1024,
    );
    expect(sampleValue(b, 'nqvm_vm_disk_writes_total', { vm_id: vmId, drive: 'root' })).toBe(8);
  });

  it('drops the series of a VM whose VMM is gone', async () => {
    busy.kill('SIGKILL');
    await new Promise((r) => busy.once('exit', r));
    const e = parseExposition(await metrics.scrape());
    expect(e.samples.filter((s) => s.labels.vm_id === vmId)).toEqual([]);
    expect(sampleValue(e, 'nqvm_agent_vmm_processes', { vmm: 'qemu' })).toBe(0);
  });
});

describe('GET /metrics on the agent', () => {
  const keys = managerKeys();
  let agent: Agent;
  let signed: SignedAgentClient;

  beforeAll(async () => {
    ({ agent } = await startStandaloneAgent({
      stateDir: tempDir(),
      drivers: [new FakeDriver('qemu')],
      publicKeyPem: keys.publicKeyPem,
      env: { NQVM_AGENT_METRICS_TOKEN: METRICS_TOKEN },
    }));
    signed = new SignedAgentClient(agent.url, keys.privateKey);
  });
  afterAll(async () => {
    await agent?.close();
  });

  it('answers the manager (signed) and the metrics token with the text format', async () => {
    const bySignature = await signed.call('GET', '/metrics');
    expect(bySignature.status).toBe(200);
    expect(bySignature.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = bySignature.bytes.toString('utf8');
    expect(promtoolProblems(text)).toBeNull();
    expect(sampleValue(parseExposition(text), 'nqvm_host_cpus')).toBeGreaterThan(0);
    const byToken = await fetch(`${agent.url}/metrics`, {
      headers: { authorization: `Bearer ${METRICS_TOKEN}` },
    });
    expect(byToken.status).toBe(200);
    expect(parseExposition(await byToken.text()).types.get('nqvm_host_cpu_seconds_total')).toBe('counter');
  });

  it('refuses a scrape without credentials or with a wrong token, and the token elsewhere', async () => {
    const anonymous = await fetch(`${agent.url}/metrics`);
    expect(anonymous.status).toBe(401);
    expect(await anonymous.text()).not.toContain('nqvm_');
    const wrong = await fetch(`${agent.url}/metrics`, {
      headers: { authorization: 'Bearer not-the-token-0000000' },
    });
    expect(wrong.status).toBe(401);
    const elsewhere = await fetch(`${agent.url}/v1/vms`, {
      headers: { authorization: `Bearer ${METRICS_TOKEN}` },
    });
    expect(elsewhere.status).toBe(401);
  });
});
