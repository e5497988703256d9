/**
 * The agent's `/metrics` in the Prometheus text format: per-VM CPU, memory, disk and network
 * of the VMs this host runs, its VMM processes and VM states, and the host's capacity and use.
 * Everything is read at scrape time (nothing runs between scrapes); per-VM series carry the VM
 * id, which is bounded by what one host runs.
 */
import { statfs } from 'node:fs/promises';
import os from 'node:os';
import { Counter, Gauge, Registry } from 'prom-client';
import type { RunningVmm } from '../agent/vm-runtime';
import { readHostUsage } from '../host/host-usage';
import { measureVm, type VmUsage } from './vm-usage';

const MiB = 1024 * 1024;

export interface AgentMetricsSource {
  /** VMs whose VMM runs. */
  running(): RunningVmm[];
  /** How many VMs are in each reported state. */
  states(): Map<string, number>;
  /** TAPs by VM id (empty without host networking). */
  taps(): Promise<Map<string, Array<{ nicIndex: number; tap: string }>>>;
  /** What the host offers the scheduler (after the configured caps). */
  capacity(): Promise<{ vcpu: number; mem_mib: number; disk_mib: number }>;
  /** The state directory: its file system is the one VM disks fill. */
  stateDir: string;
}

type Labels<T extends string> = Partial<Record<T, string | number>>;

/** A counter read from elsewhere at each scrape: its series are replaced, not incremented. */
function setCounter<T extends string>(c: Counter<T>, rows: Array<[Labels<T>, number]>): void {
  c.reset();
  for (const [labels, v] of rows) if (Number.isFinite(v) && v >= 0) c.inc(labels, v);
}

function setGauge<T extends string>(g: Gauge<T>, rows: Array<[Labels<T>, number]>): void {
  g.reset();
  for (const [labels, v] of rows) if (Number.isFinite(v)) g.set(labels, v);
}

/**
 * @example
 * const metrics = new AgentMetrics(source);
 * reply.type(metrics.contentType).send(await metrics.scrape());
 */
export class AgentMetrics {
  readonly registry = new Registry();
  private readonly vmCpu: Counter<'vm_id' | 'vmm'>;
  private readonly vmRss: Gauge<'vm_id' | 'vmm'>;
  private readonly vmMemory: Gauge<'vm_id'>;
  private readonly vmVcpus: Gauge<'vm_id'>;
  private readonly diskReadBytes: Counter<'vm_id' | 'drive'>;
  private readonly diskWrittenBytes: Counter<'vm_id' | 'drive'>;
  private readonly diskReads: Counter<'vm_id' | 'drive'>;
  private readonly diskWrites: Counter<'vm_id' | 'drive'>;
  private readonly netRxBytes: Counter<'vm_id' | 'nic'>;
  private readonly netTxBytes: Counter<'vm_id' | 'nic'>;
  private readonly netRxPackets: Counter<'vm_id' | 'nic'>;
  private readonly netTxPackets: Counter<'vm_id' | 'nic'>;
  private readonly vms: Gauge<'state'>;
  private readonly vmmProcesses: Gauge<'vmm'>;
  private readonly hostCpus: Gauge;
  private readonly hostCpuSeconds: Counter<'mode'>;
  private readonly hostMemory: Gauge;
  private readonly hostMemoryAvailable: Gauge;
  private readonly hostDisk: Gauge;
  private readonly hostDiskFree: Gauge;
  private readonly hostVmVcpus: Gauge;
  private readonly hostVmMemory: Gauge;
  private readonly scrapeSeconds: Gauge;

  constructor(private readonly source: AgentMetricsSource) {
    const r = [this.registry];
    const counter = <T extends string>(name: string, help: string, labelNames: T[]) =>
      new Counter<T>({ name, help, labelNames, registers: r });
    const gauge = <T extends string>(name: string, help: string, labelNames: T[] = []) =>
      new Gauge<T>({ name, help, labelNames, registers: r });
    this.vmCpu = counter('nqvm_vm_cpu_seconds_total', 'CPU time of the VM process (user + system)', [
      'vm_id',
      'vmm',
    ]);
    this.vmRss = gauge('nqvm_vm_memory_rss_bytes', 'Resident memory of the VM process', ['vm_id', 'vmm']);
    this.vmMemory = gauge('nqvm_vm_memory_bytes', 'Memory the VM was given', ['vm_id']);
    this.vmVcpus = gauge('nqvm_vm_vcpus', 'vCPUs the VM was given', ['vm_id']);
    this.diskReadBytes = counter('nqvm_vm_disk_read_bytes_total', 'Bytes the guest read from a drive', [
      'vm_id',
      'drive',
    ]);
    this.diskWrittenBytes = counter('nqvm_vm_disk_written_bytes_total', 'Bytes the guest wrote to a drive', [
      'vm_id',
      'drive',
    ]);
    this.diskReads = counter('nqvm_vm_disk_reads_total', 'Read requests the guest made on a drive', [
      'vm_id',
      'drive',
    ]);
    this.diskWrites = counter('nqvm_vm_disk_writes_total', 'Write requests the guest made on a drive', [
      'vm_id',
      'drive',
    ]);
    this.netRxBytes = counter(
      'nqvm_vm_network_receive_bytes_total',
      'Bytes the guest received on a NIC (sent by its TAP)',
      ['vm_id', 'nic'],
    );
    this.netTxBytes = counter(
      'nqvm_vm_network_transmit_bytes_total',
      'Bytes the guest sent on a NIC (received by its TAP)',
      ['vm_id', 'nic'],
    );
    this.netRxPackets = counter('nqvm_vm_network_receive_packets_total', 'Packets the guest received', [
      'vm_id',
      'nic',
    ]);
    this.netTxPackets = counter('nqvm_vm_network_transmit_packets_total', 'Packets the guest sent', [
      'vm_id',
      'nic',
    ]);
    this.vms = gauge('nqvm_agent_vms', 'VMs this agent holds, by reported state', ['state']);
    this.vmmProcesses = gauge('nqvm_agent_vmm_processes', 'Running VMM processes, by VMM', ['vmm']);
    this.hostCpus = gauge('nqvm_host_cpus', 'vCPUs the host offers (after NQVM_AGENT_MAX_VCPU)');
    this.hostCpuSeconds = counter('nqvm_host_cpu_seconds_total', "Time the host's CPUs spent, by mode", [
      'mode',
    ]);
    this.hostMemory = gauge(
      'nqvm_host_memory_bytes',
      'Memory the host offers (after NQVM_AGENT_MAX_MEM_MIB)',
    );
    this.hostMemoryAvailable = gauge('nqvm_host_memory_available_bytes', 'MemAvailable of the host');
    this.hostDisk = gauge('nqvm_host_disk_bytes', 'Size of the file system holding VM disks (after caps)');
    this.hostDiskFree = gauge('nqvm_host_disk_free_bytes', 'Free space of the file system holding VM disks');
    this.hostVmVcpus = gauge('nqvm_host_vm_vcpus', 'vCPUs given to the VMs running on the host');
    this.hostVmMemory = gauge('nqvm_host_vm_memory_bytes', 'Memory given to the VMs running on the host');
    this.scrapeSeconds = gauge('nqvm_agent_scrape_duration_seconds', 'Time the last scrape took to measure');
    // prom-client's default metrics break Prometheus's naming rules (gauges named *_total): the agent's own two.
    new Counter({
      name: 'nqvm_agent_process_cpu_seconds_total',
      help: 'CPU time of the agent process (user + system)',
      registers: r,
      collect() {
        const u = process.cpuUsage();
        this.reset();
        this.inc((u.user + u.system) / 1e6);
      },
    });
    new Gauge({
      name: 'nqvm_agent_process_resident_memory_bytes',
      help: 'Resident memory of the agent process',
      registers: r,
      collect() {
        this.set(process.memoryUsage.rss());
      },
    });
  }

  get contentType(): string {
    return this.registry.contentType;
  }

  /** Measures everything now and answers the exposition text. */
  async scrape(): Promise<string> {
    const started = process.hrtime.bigint();
    const running = this.source.running();
    const taps = await this.source
      .taps()
      .catch(() => new Map<string, Array<{ nicIndex: number; tap: string }>>());
    const [usages, host, capacity, fsInfo] = await Promise.all([
      Promise.all(running.map((vm) => measureVm(vm, taps.get(vm.vmId) ?? []))),
      readHostUsage(),
      this.source.capacity(),
      statfs(this.source.stateDir),
    ]);
    this.setVms(usages.filter((u): u is VmUsage => u !== null));
    setGauge(
      this.vms,
      [...this.source.states()].map(([state, n]) => [{ state }, n]),
    );
    const vmms = new Map<string, number>();
    for (const u of usages) if (u) vmms.set(u.vmm, (vmms.get(u.vmm) ?? 0) + 1);
    setGauge(
      this.vmmProcesses,
      ['qemu', 'firecracker'].map((vmm) => [{ vmm }, vmms.get(vmm) ?? 0]),
    );
    this.hostCpus.set(capacity.vcpu);
    setCounter(
      this.hostCpuSeconds,
      host.cpu ? Object.entries(host.cpu).map(([mode, s]) => [{ mode }, s]) : [],
    );
    this.hostMemory.set(Math.min(capacity.mem_mib * MiB, os.totalmem()));
    this.hostMemoryAvailable.set(host.memory.availableBytes);
    this.hostDisk.set(capacity.disk_mib * MiB);
    this.hostDiskFree.set(Math.min(Number(fsInfo.bavail) * Number(fsInfo.bsize), capacity.disk_mib * MiB));
    this.hostVmVcpus.set(running.reduce((n, vm) => n + vm.vcpu, 0));
    this.hostVmMemory.set(running.reduce((n, vm) => n + vm.memMib * MiB, 0));
    this.scrapeSeconds.set(Number(process.hrtime.bigint() - started) / 1e9);
    return this.registry.metrics();
  }

  private setVms(usages: VmUsage[]): void {
    setCounter(
      this.vmCpu,
      usages.map((u) => [{ vm_id: u.vmId, vmm: u.vmm }, u.cpuSeconds]),
    );
    setGauge(
      this.vmRss,
      usages.map((u) => [{ vm_id: u.vmId, vmm: u.vmm }, u.rssBytes]),
    );
    setGauge(
      this.vmMemory,
      usages.map((u) => [{ vm_id: u.vmId }, u.memMib * MiB]),
    );
    setGauge(
      this.vmVcpus,
      usages.map((u) => [{ vm_id: u.vmId }, u.vcpu]),
    );
    const disks = usages.flatMap((u) => (u.disks ?? []).map((d) => ({ vm_id: u.vmId, drive: d.drive, d })));
    setCounter(
      this.diskReadBytes,
      disks.map((x) => [{ vm_id: x.vm_id, drive: x.drive }, x.d.readBytes]),
    );
    setCounter(
      this.diskWrittenBytes,
      disks.map((x) => [{ vm_id: x.vm_id, drive: x.drive }, x.d.writeBytes]),
    );
    setCounter(
      this.diskReads,
      disks.map((x) => [{ vm_id: x.vm_id, drive: x.drive }, x.d.readOps]),
    );
    setCounter(
      this.diskWrites,
      disks.map((x) => [{ vm_id: x.vm_id, drive: x.drive }, x.d.writeOps]),
    );
    const nics = usages.flatMap((u) => u.nics.map((n) => ({ vm_id: u.vmId, nic: n.nic, n })));
    setCounter(
      this.netRxBytes,
      nics.map((x) => [{ vm_id: x.vm_id, nic: x.nic }, x.n.rxBytes]),
    );
    setCounter(
      this.netTxBytes,
      nics.map((x) => [{ vm_id: x.vm_id, nic: x.nic }, x.n.txBytes]),
    );
    setCounter(
      this.netRxPackets,
      nics.map((x) => [{ vm_id: x.vm_id, nic: x.nic }, x.n.rxPackets]),
    );
    setCounter(
      this.netTxPackets,
      nics.map((x) => [{ vm_id: x.vm_id, nic: x.nic }, x.n.txPackets]),
    );
  }
}
