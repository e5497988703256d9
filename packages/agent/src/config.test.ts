import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadAgentConfig } from './config';

describe('loadAgentConfig', () => {
  it('has defaults for everything', () => {
    const c = loadAgentConfig({ NQVM_DATA_DIR: '/tmp/nq-data' });
    expect(c.bind).toEqual({ host: '127.0.0.1', port: 9090 });
    expect(c.stateDir).toBe('/tmp/nq-data/agent');
    expect(c.bridge).toBe('fcbr0');
    expect(c.managerBase).toBeNull();
    expect(c.joinToken).toBeNull();
    expect(c.name).toBe(os.hostname());
    expect(c.advertiseUrl).toBeNull();
    expect(c.caps).toEqual({ vcpu: null, memMib: null, diskMib: null });
    expect(c.hostPrefix).toBe('nq');
    expect(c.heartbeatIntervalS).toBe(5);
  });

  it('reads every variable', () => {
    const c = loadAgentConfig({
      AGENT_BIND: '[::1]:0',
      FC_RUN_DIR: '/srv/fc',
      FC_BRIDGE: 'br-test',
      MANAGER_BASE: 'https://manager.example:8443/',
      NQVM_JOIN_TOKEN: 'nqvm_join_x~sha256:ab',
      NQVM_AGENT_NAME: 'host-1',
      NQVM_AGENT_ADVERTISE_URL: 'http://10.0.0.5:9090',
      NQVM_AGENT_MAX_VCPU: '2',
      NQVM_AGENT_MAX_MEM_MIB: '2048',
      NQVM_AGENT_MAX_DISK_MIB: '10240',
      NQVM_HOST_PREFIX: 'a1',
      QEMU_BIN: '/opt/qemu',
      FIRECRACKER_BIN: '/opt/fc',
      JAILER_BIN: '/opt/jailer',
      NQVM_HEARTBEAT_INTERVAL_S: '2',
    });
    expect(c).toMatchObject({
      bind: { host: '::1', port: 0 },
      stateDir: '/srv/fc',
      bridge: 'br-test',
      managerBase: 'https://manager.example:8443',
      joinToken: 'nqvm_join_x~sha256:ab',
      name: 'host-1',
      advertiseUrl: 'http://10.0.0.5:9090',
      caps: { vcpu: 2, memMib: 2048, diskMib: 10240 },
      hostPrefix: 'a1',
      qemuBin: '/opt/qemu',
      firecrackerBin: '/opt/fc',
      jailerBin: '/opt/jailer',
      heartbeatIntervalS: 2,
    });
  });

  it.each([
    ['AGENT_BIND', 'localhost'],
    ['AGENT_BIND', '127.0.0.1:70000'],
    ['MANAGER_BASE', 'ftp://x'],
    ['MANAGER_BASE', 'not a url'],
    ['NQVM_AGENT_NAME', '-bad'],
    ['NQVM_AGENT_MAX_VCPU', '0'],
    ['NQVM_AGENT_MAX_MEM_MIB', 'lots'],
    ['NQVM_HOST_PREFIX', 'TOOLONG'],
    ['FC_BRIDGE', 'a-bridge-name-too-long'],
    ['NQVM_HEARTBEAT_INTERVAL_S', '-1'],
  ])('names the bad variable %s=%s', (name, value) => {
    let err: unknown;
    try {
      loadAgentConfig({ [name]: value });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).variable).toBe(name);
    expect((err as Error).message).toContain(name);
  });
});
