/**
 * openUrl against real servers on 127.0.0.1, reached under names a stand-in DNS answers: the
 * connection goes where the policy checked (never resolved again), redirects are checked hop by
 * hop, and failures say nothing about what answered on a port.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type Lookup, type PinnedAddress, parseFetchAllow, UrlPolicy } from './url-policy';
import { openUrl } from './url-source';

let server: http.Server;
let port: number;
/** Paths the server was asked for, with their Host header. */
const asked: string[] = [];
/** A TCP server that is not HTTP (what an SSH daemon does), and a port nothing listens on. */
let notHttp: net.Server;
let notHttpPort: number;
let closedPort: number;

beforeAll(async () => {
  server = http.createServer((req, res) => {
    asked.push(`${req.headers.host} ${req.url}`);
    if (req.url === '/file') res.end('the bytes');
    else if (req.url === '/to-loopback')
      res.writeHead(302, { location: `http://127.0.0.1:${port}/file` }).end();
    else if (req.url === '/to-localhost')
      res.writeHead(302, { location: `http://localhost:${port}/file` }).end();
    else if (req.url === '/to-self') res.writeHead(301, { location: '/file' }).end();
    else {
      res.statusMessage = 'Internal-Admin-Console v2';
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  port = (server.address() as AddressInfo).port;
  notHttp = net.createServer((s) => s.resume().end('SSH-2.0-OpenSSH_9.2\r\n'));
  await new Promise<void>((r) => notHttp.listen(0, '127.0.0.1', r));
  notHttpPort = (notHttp.address() as AddressInfo).port;
  const probe = net.createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  closedPort = (probe.address() as AddressInfo).port;
  await new Promise((r) => probe.close(r));
});
afterAll(async () => {
  await new Promise((r) => server.close(r));
  await new Promise((r) => notHttp.close(r));
});

/** Stand-in DNS: `images.test` and `localhost` are 127.0.0.1; the system's resolver knows no `images.test`. */
function standInDns(): Lookup & { asked: string[] } {
  const names: string[] = [];
  const lookup = async (name: string): Promise<PinnedAddress[]> => {
    names.push(name);
    if (name === 'images.test' || name === 'localhost') return [{ address: '127.0.0.1', family: 4 }];
    throw new Error(`ENOTFOUND ${name}`);
  };
  return Object.assign(lookup, { asked: names });
}

const body = async (r: { body: NodeJS.ReadableStream }) => {
  let text = '';
  for await (const c of r.body) text += c.toString();
  return text;
};

describe('openUrl', () => {
  it('connects to the address the policy checked: the name is resolved once, by the policy', async () => {
    const dns = standInDns();
    const policy = new UrlPolicy(parseFetchAllow('images.test'), async () => [], dns);
    const opened = await openUrl(`http://images.test:${port}/to-self`, { maxBytes: 1 << 20, policy });
    expect(await body(opened)).toBe('the bytes');
    expect(opened.finalUrl).toBe(`http://images.test:${port}/file`);
    // `images.test` is no real name: the sockets went to the policy's answers, checked once per
    // hop, and asked nothing else (a name that answers otherwise a moment later is never asked).
    expect(dns.asked).toEqual(['images.test', 'images.test']);
    expect(asked.slice(-2)).toEqual([`images.test:${port} /to-self`, `images.test:${port} /file`]);
  });

  it('refuses a redirect to loopback, literal or by name, before asking it anything', async () => {
    const policy = new UrlPolicy(parseFetchAllow('images.test'), async () => [], standInDns());
    for (const hop of ['to-loopback', 'to-localhost']) {
      const before = asked.length;
      await expect(
        openUrl(`http://images.test:${port}/${hop}`, { maxBytes: 1 << 20, policy }),
      ).rejects.toMatchObject({
        code: 'URL_NOT_ALLOWED',
        details: { reason: 'loopback' },
        message: expect.stringContaining(`http://images.test:${port}/${hop} redirects to`),
      });
      expect(asked.slice(before)).toEqual([`images.test:${port} /${hop}`]);
    }
  });

  it('says the same of a refused port and of one a non-HTTP server answers; error statuses in standard words', async () => {
    const policy = new UrlPolicy(parseFetchAllow('127.0.0.1'), async () => [], standInDns());
    const messageOf = async (p: number, path = '/') => {
      const err = await openUrl(`http://127.0.0.1:${p}${path}`, { maxBytes: 1 << 20, policy }).catch(
        (e) => e,
      );
      expect(err).toMatchObject({ code: 'IMPORT_FAILED' });
      return (err as Error).message.replace(`:${p}/`, ':PORT/');
    };
    const refused = await messageOf(closedPort);
    expect(refused).toBe(
      'GET http://127.0.0.1:PORT/ failed: no HTTP answer (the connection was refused, closed or timed out)',
    );
    expect(await messageOf(notHttpPort)).toBe(refused);
    expect(await messageOf(port, '/missing')).toBe(
      'GET http://127.0.0.1:PORT/missing answered 404 Not Found',
    );
  });
});
