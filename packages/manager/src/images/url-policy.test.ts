import os from 'node:os';
import { describe, expect, it } from 'vitest';
import { type Lookup, type PinnedAddress, parseFetchAllow, UrlPolicy } from './url-policy';

/** Stands in for DNS: names answer what the table says; any other name does not resolve. */
function dnsTable(table: Record<string, string[]>): Lookup & { asked: string[] } {
  const asked: string[] = [];
  const lookup = async (name: string): Promise<PinnedAddress[]> => {
    asked.push(name);
    const found = table[name];
    if (!found) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' });
    return found.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
  return Object.assign(lookup, { asked });
}

const HOST_AGENT = 'https://198.51.100.20:8443';
const policy = (allow = '', table: Record<string, string[]> = {}) =>
  new UrlPolicy(
    parseFetchAllow(allow),
    async () => [HOST_AGENT, 'http://agent.lan:8443'],
    dnsTable({
      'agent.lan': ['198.51.100.21'],
      ...table,
    }),
  );
/** An address of this machine that no reserved range holds (the manager's own, reachable from outside). */
const ownAddress = Object.values(os.networkInterfaces())
  .flat()
  .find((a) => a && !a.internal && a.family === 'IPv4')?.address;

describe('parseFetchAllow', () => {
  it('reads CIDRs, addresses and host names, separated by commas or spaces', () => {
    const allow = parseFetchAllow(' 10.0.0.0/8, ::1  images.LAN. 127.0.0.1,fd00::/8');
    expect(allow.entries).toEqual(['10.0.0.0/8', '::1', 'images.LAN.', '127.0.0.1', 'fd00::/8']);
    expect(allow.subnets.check('10.9.8.7', 'ipv4')).toBe(true);
    expect(allow.subnets.check('11.0.0.1', 'ipv4')).toBe(false);
    expect(allow.subnets.check('::1', 'ipv6')).toBe(true);
    expect([...allow.names]).toEqual(['images.lan']);
    expect(parseFetchAllow('').entries).toEqual([]);
  });

  it.each([
    '10.0.0.0/33',
    '::/129',
    '10.0.0.0/x',
    'http://images.lan',
    'images.lan/8',
    'a_b',
    '-x.lan',
    '1.2.3.4/8/9',
  ])('refuses %j, naming it', (entry) => {
    expect(() => parseFetchAllow(`127.0.0.1,${entry}`)).toThrow(entry);
  });
});

describe('UrlPolicy.admit (no DNS)', () => {
  it.each([
    ['http://127.0.0.1:8081/x', 'loopback'],
    ['http://127.1.2.3/x', 'loopback'],
    ['http://2130706433/x', 'loopback'],
    ['http://0x7f.0.0.1/x', 'loopback'],
    ['http://[::1]:9/x', 'loopback'],
    ['http://[::ffff:127.0.0.1]/x', 'loopback'],
    ['http://localhost:8080/x', 'loopback'],
    ['http://agent.localhost/x', 'loopback'],
    ['http://169.254.169.254/latest/meta-data/', 'link-local'],
    ['http://[fe80::1]/x', 'link-local'],
    ['http://0.0.0.0:8080/x', 'unspecified'],
    ['http://[::]/x', 'unspecified'],
    ['http://224.0.0.1/x', 'multicast'],
    ['http://[ff02::1]/x', 'multicast'],
    ['http://255.255.255.255/x', 'reserved'],
    ['https://198.51.100.20:8443/v1/health', 'host'],
  ])('refuses %s (%s) with URL_NOT_ALLOWED', async (url, reason) => {
    await expect(policy().admit(url)).rejects.toMatchObject({
      code: 'URL_NOT_ALLOWED',
      details: { reason, field: 'source.url' },
      message: expect.stringContaining('NQVM_IMAGE_FETCH_ALLOW'),
    });
  });

  it("refuses the manager's own addresses", async () => {
    expect(ownAddress, 'this machine has a non-loopback IPv4 address').toBeDefined();
    await expect(policy().admit(`http://${ownAddress}:8080/x`)).rejects.toMatchObject({
      details: { reason: 'manager' },
    });
  });

  it('lets through what the allow list names, and leaves names to the fetch', async () => {
    const lookup = dnsTable({});
    const p = new UrlPolicy(parseFetchAllow('127.0.0.0/8,169.254.169.254,localhost'), async () => [], lookup);
    await p.admit('http://127.0.0.1:8081/x');
    await p.admit('http://169.254.169.254/x');
    await p.admit('http://localhost:8080/x');
    await p.admit('https://images.example.org/rootfs.ext4');
    await expect(p.admit('http://[::1]/x')).rejects.toMatchObject({ code: 'URL_NOT_ALLOWED' });
    // With a loopback address allowed, a localhost name is left to the fetch, which resolves it.
    await new UrlPolicy(parseFetchAllow('127.0.0.1'), async () => [], lookup).admit('http://localhost/x');
    expect(lookup.asked).toEqual([]);
  });
});

describe('UrlPolicy.resolve', () => {
  it('checks every address a name resolves to', async () => {
    const p = policy('', {
      'images.example': ['198.51.100.7', '2001:db8::7'],
      'mixed.example': ['198.51.100.7', '127.0.0.1'],
      'agent-alias.example': ['198.51.100.21'],
    });
    expect(await p.resolve(new URL('https://images.example/r.ext4'))).toEqual([
      { address: '198.51.100.7', family: 4 },
      { address: '2001:db8::7', family: 6 },
    ]);
    await expect(p.resolve(new URL('https://mixed.example/r.ext4'))).rejects.toMatchObject({
      code: 'URL_NOT_ALLOWED',
      details: { reason: 'loopback' },
      message: expect.stringContaining('mixed.example resolves to 127.0.0.1, a loopback address'),
    });
    // A name of a registered host's address (the host registered under another name).
    await expect(p.resolve(new URL('http://agent-alias.example/x'))).rejects.toMatchObject({
      details: { reason: 'host' },
    });
  });

  it('names the redirect; a name that does not resolve fails the import plainly', async () => {
    const p = policy('', { 'images.example': ['198.51.100.7'] });
    await expect(
      p.resolve(new URL('http://127.0.0.1:9/x'), 'https://images.example/r'),
    ).rejects.toMatchObject({
      code: 'URL_NOT_ALLOWED',
      message: expect.stringMatching(
        /^https:\/\/images.example\/r redirects to http:\/\/127.0.0.1:9\/x, and/,
      ),
    });
    await expect(p.resolve(new URL('http://nowhere.invalid/x'))).rejects.toMatchObject({
      code: 'IMPORT_FAILED',
      message: 'the host name nowhere.invalid does not resolve',
    });
  });

  it('an allowed name is trusted whatever it resolves to; an allowed range only for its addresses', async () => {
    const p = policy('images.lan,127.0.0.2/32', {
      'images.lan': ['127.0.0.1'],
      'other.lan': ['127.0.0.1'],
      'two.lan': ['127.0.0.2'],
    });
    expect(await p.resolve(new URL('http://images.lan/x'))).toEqual([{ address: '127.0.0.1', family: 4 }]);
    expect(await p.resolve(new URL('http://two.lan/x'))).toEqual([{ address: '127.0.0.2', family: 4 }]);
    await expect(p.resolve(new URL('http://other.lan/x'))).rejects.toMatchObject({ code: 'URL_NOT_ALLOWED' });
  });
});
