/** Shared pieces of the agent's tests: a signing client, commands, images, waiting. */
import { generateKeyPairSync, type KeyObject, randomUUID } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { AgentImageRef, AgentVmCommand, AgentVmReport } from '@nqvm/api';
import { signManagerRequest } from '@nqvm/api';
import { pino } from 'pino';
import { type AgentConfig, loadAgentConfig } from '../config';
import type { VmmDriver } from '../drivers/types';
import { type Agent, type AgentOptions, createAgent } from './agent';

export const silentLogger = pino({ level: 'silent' });

export function tempDir(prefix = 'nqvm-agent-test-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function managerKeys(): { privateKey: KeyObject; publicKeyPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return { privateKey, publicKeyPem: publicKey.export({ format: 'pem', type: 'spki' }).toString() };
}

export function imageRef(file: string): AgentImageRef {
  return {
    id: randomUUID(),
    sha256: null,
    size_bytes: null,
    path: file,
    format: null,
    vmlinux: null,
    has_cloud_init: null,
  };
}

/** Small stand-in image files (a fake driver never reads them). */
export function fakeImages(dir: string): {
  kernel: AgentImageRef;
  initrd: AgentImageRef;
  rootfs: AgentImageRef;
} {
  const files = { kernel: 'vmlinuz', initrd: 'initrd.img', rootfs: 'rootfs.ext4' } as const;
  const out = {} as Record<keyof typeof files, AgentImageRef>;
  for (const [role, name] of Object.entries(files) as [keyof typeof files, string][]) {
    const file = path.join(dir, name);
    writeFileSync(file, Buffer.alloc(role === 'rootfs' ? 1024 * 1024 : 4096));
    out[role] = imageRef(file);
  }
  return out;
}

export function vmCommand(
  generation: number,
  desired: AgentVmCommand['desired'],
  images: { kernel: AgentImageRef; initrd?: AgentImageRef | null; rootfs?: AgentImageRef | null },
  over: Partial<Omit<AgentVmCommand, 'spec'>> & { spec?: Partial<AgentVmCommand['spec']> } = {},
): AgentVmCommand {
  return {
    generation,
    desired,
    reboot: over.reboot ?? false,
    stop: over.stop ?? { force: false, timeout_s: 5 },
    restore: over.restore ?? null,
    spec: {
      name: 'vm1',
      vcpu: 1,
      mem_mib: 128,
      vmm: null,
      kernel: images.kernel,
      initrd: images.initrd ?? null,
      rootfs: images.rootfs ?? null,
      disk_size_mib: null,
      boot_args: null,
      restart_policy: 'never',
      guest_config: null,
      volumes: [],
      nics: [],
      port_forwards: [],
      container: null,
      ...over.spec,
    },
  };
}

/** Calls an agent the way the manager does: every request signed. */
export class SignedAgentClient {
  constructor(
    readonly baseUrl: string,
    private readonly key: KeyObject,
  ) {}

  async call(method: string, pathAndQuery: string, body?: unknown, at = Date.now()) {
    const payload = body === undefined ? '' : JSON.stringify(body);
    const headers: Record<string, string> = signManagerRequest(this.key, method, pathAndQuery, payload, at);
    if (payload) headers['content-type'] = 'application/json';
    const res = await fetch(`${this.baseUrl}${pathAndQuery}`, {
      method,
      headers,
      body: payload || undefined,
    });
    const bytes = Buffer.from(await res.arrayBuffer());
    // biome-ignore lint/suspicious/noExplicitAny: tests read whatever JSON came back
    let json: any;
    try {
      json = JSON.parse(bytes.toString('utf8'));
    } catch {
      json = undefined;
    }
    return { status: res.status, json, bytes, headers: res.headers };
  }

  /** A signed GET whose body is handed over chunk by chunk until it ends. */
  async stream(pathAndQuery: string, onChunk: (text: string) => void): Promise<number> {
    const headers = signManagerRequest(this.key, 'GET', pathAndQuery, '', Date.now());
    const res = await fetch(`${this.baseUrl}${pathAndQuery}`, { headers });
    const decoder = new TextDecoder();
    const reader = res.body?.getReader();
    for (;;) {
      const next = await reader?.read();
      if (!next || next.done) break;
      onChunk(decoder.decode(next.value, { stream: true }));
    }
    return res.status;
  }

  put(id: string, cmd: AgentVmCommand) {
    return this.call('PUT', `/v1/vms/${id}`, cmd);
  }

  del(id: string) {
    return this.call('DELETE', `/v1/vms/${id}`);
  }

  list() {
    return this.call('GET', '/v1/vms');
  }
}

export async function waitFor<T>(
  what: string,
  probe: () => T | undefined | null | false | Promise<T | undefined | null | false>,
  timeoutMs = 5_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

export function reportOf(agent: Agent, id: string): AgentVmReport | undefined {
  return agent.vms().find((v) => v.id === id);
}

export function waitForState(agent: Agent, id: string, state: AgentVmReport['state'], timeoutMs = 5_000) {
  return waitFor(
    `VM ${id} to be ${state} (now ${reportOf(agent, id)?.state})`,
    () => {
      const r = reportOf(agent, id);
      return r?.state === state ? r : undefined;
    },
    timeoutMs,
  );
}

/** An agent on a free port with a fake or given driver, verifying with `publicKeyPem`, no manager. */
export async function startStandaloneAgent(opts: {
  stateDir: string;
  drivers: VmmDriver[];
  publicKeyPem: string;
  env?: Record<string, string>;
  options?: AgentOptions;
}): Promise<{ agent: Agent; config: AgentConfig }> {
  const config = loadAgentConfig({
    AGENT_BIND: '127.0.0.1:0',
    FC_RUN_DIR: opts.stateDir,
    NQVM_AGENT_NAME: 'test-agent',
    ...opts.env,
  });
  const agent = await createAgent(config, {
    drivers: opts.drivers,
    managerPublicKey: opts.publicKeyPem,
    logger: silentLogger,
    ...opts.options,
  });
  return { agent, config };
}
