/** The manager's configuration from the environment (unit tests; no datastore). */
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, defaultDataDir, loadManagerConfig, managerConfigDoc } from '../src/config';

function configError(env: Record<string, string>): ConfigError {
  try {
    loadManagerConfig(env);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error(`no ConfigError for ${JSON.stringify(env)}`);
}

describe('loadManagerConfig', () => {
  it('has safe defaults: loopback bind, embedded SQLite in the data dir, retention, info logs', () => {
    const c = loadManagerConfig({});
    const dataDir = defaultDataDir({});
    expect(c).toMatchObject({
      databaseUrl: `sqlite:${path.join(dataDir, 'nqvm.db')}`,
      bind: { host: '127.0.0.1', port: 8080 },
      imageRoot: path.join(dataDir, 'images'),
      allowImagePaths: false,
      imageFetchAllow: [],
      dataDir,
      adminPassword: undefined,
      tls: undefined,
      operationRetentionDays: 30,
      auditRetentionDays: 365,
      heartbeatIntervalS: 5,
      sessionTtlHours: 12,
      logLevel: 'info',
    });
    expect(path.isAbsolute(dataDir)).toBe(true);
  });

  it('reads every variable', () => {
    const c = loadManagerConfig({
      DATABASE_URL: 'postgres://nqvm@db.example:5432/nqvm',
      MANAGER_BIND: '[::1]:9443',
      MANAGER_IMAGE_ROOT: '/srv/images',
      MANAGER_ALLOW_IMAGE_PATHS: 'yes',
      NQVM_IMAGE_FETCH_ALLOW: '127.0.0.1, 10.0.0.0/8,images.lan',
      NQVM_DATA_DIR: 'relative/data',
      NQVM_ADMIN_PASSWORD: 'a-strong-one',
      NQVM_TLS_CERT: '/etc/nqvm/cert.pem',
      NQVM_TLS_KEY: '/etc/nqvm/key.pem',
      NQVM_OPERATION_RETENTION_DAYS: '7',
      NQVM_AUDIT_RETENTION_DAYS: '90',
      NQVM_HEARTBEAT_INTERVAL_S: '2',
      NQVM_SESSION_TTL_HOURS: '1',
      NQVM_LOG_LEVEL: 'debug',
    });
    expect(c).toMatchObject({
      databaseUrl: 'postgres://nqvm@db.example:5432/nqvm',
      bind: { host: '::1', port: 9443 },
      imageRoot: '/srv/images',
      allowImagePaths: true,
      imageFetchAllow: ['127.0.0.1', '10.0.0.0/8', 'images.lan'],
      dataDir: path.resolve('relative/data'),
      adminPassword: 'a-strong-one',
      tls: { certFile: '/etc/nqvm/cert.pem', keyFile: '/etc/nqvm/key.pem' },
      operationRetentionDays: 7,
      auditRetentionDays: 90,
      heartbeatIntervalS: 2,
      sessionTtlHours: 1,
      logLevel: 'debug',
    });
    expect(loadManagerConfig({ MANAGER_BIND: '0.0.0.0:0' }).bind).toEqual({ host: '0.0.0.0', port: 0 });
    expect(loadManagerConfig({ DATABASE_URL: 'sqlite:/tmp/x.db' }).databaseUrl).toBe('sqlite:/tmp/x.db');
    expect(loadManagerConfig({ DATABASE_URL: 'postgresql://h/db' }).databaseUrl).toBe('postgresql://h/db');
  });

  it.each([
    'localhost',
    '127.0.0.1',
    '127.0.0.1:99999',
    ':8080',
    '127.0.0.1:abc',
    'a b:80',
    '127.0.0.1:8080 ',
    'http://127.0.0.1:8080',
  ])('a bad MANAGER_BIND (%j) throws a ConfigError naming it', (bind) => {
    const e = configError({ MANAGER_BIND: bind });
    expect(e.variable).toBe('MANAGER_BIND');
    expect(e.message).toContain('MANAGER_BIND');
  });

  it.each(['mysql://db/nqvm', 'sqlite', 'postgres:/db', 'nqvm.db', ''])(
    'a bad DATABASE_URL (%j) throws a ConfigError naming it',
    (url) => {
      const e = configError({ DATABASE_URL: url });
      expect(e.variable).toBe('DATABASE_URL');
      expect(e.message).toContain('DATABASE_URL');
    },
  );

  it('a TLS certificate without its key (or the reverse) throws a ConfigError naming the missing one', () => {
    const noKey = configError({ NQVM_TLS_CERT: '/etc/nqvm/cert.pem' });
    expect(noKey.variable).toBe('NQVM_TLS_KEY');
    expect(noKey.message).toContain('NQVM_TLS_KEY');
    expect(noKey.message).toContain('NQVM_TLS_CERT');
    const noCert = configError({ NQVM_TLS_KEY: '/etc/nqvm/key.pem' });
    expect(noCert.variable).toBe('NQVM_TLS_CERT');
  });

  it.each([
    ['NQVM_ADMIN_PASSWORD', 'short'],
    ['NQVM_OPERATION_RETENTION_DAYS', '0'],
    ['NQVM_OPERATION_RETENTION_DAYS', 'thirty'],
    ['NQVM_AUDIT_RETENTION_DAYS', '-1'],
    ['NQVM_HEARTBEAT_INTERVAL_S', '1.5'],
    ['NQVM_SESSION_TTL_HOURS', ''],
    ['NQVM_LOG_LEVEL', 'loud'],
    ['MANAGER_ALLOW_IMAGE_PATHS', 'maybe'],
    ['NQVM_IMAGE_FETCH_ALLOW', '127.0.0.1,http://images.lan'],
    ['NQVM_IMAGE_FETCH_ALLOW', '10.0.0.0/40'],
  ])('a bad %s (%j) throws a ConfigError naming it', (variable, value) => {
    const e = configError({ [variable]: value });
    expect(e.variable).toBe(variable);
    expect(e.message).toContain(variable);
    expect(e.name).toBe('ConfigError');
  });

  it('the README table documents every variable the manager reads', () => {
    const documented = managerConfigDoc.flatMap(([v]) => v.split(' / '));
    for (const v of [
      'DATABASE_URL',
      'MANAGER_BIND',
      'MANAGER_IMAGE_ROOT',
      'MANAGER_ALLOW_IMAGE_PATHS',
      'NQVM_IMAGE_FETCH_ALLOW',
      'NQVM_DATA_DIR',
      'NQVM_ADMIN_PASSWORD',
      'NQVM_TLS_CERT',
      'NQVM_TLS_KEY',
      'NQVM_OPERATION_RETENTION_DAYS',
      'NQVM_AUDIT_RETENTION_DAYS',
      'NQVM_HEARTBEAT_INTERVAL_S',
      'NQVM_SESSION_TTL_HOURS',
      'NQVM_LOG_LEVEL',
    ]) {
      expect(documented).toContain(v);
    }
    expect(managerConfigDoc.find(([v]) => v === 'MANAGER_BIND')?.[1]).toBe('127.0.0.1:8080');
  });
});
