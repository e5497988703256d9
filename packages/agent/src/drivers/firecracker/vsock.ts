import { connect, type Socket } from 'node:net';
import { socketAddress } from './process';

/** The `OK <hostport>` line is short; a longer first line is not Firecracker speaking. */
const MAX_REPLY = 64;

/**
 * A host-initiated vsock connection that did not open: `unreachable` (no Firecracker socket
 * there), `refused` (Firecracker closed it without OK: nothing listens on the port in the
 * guest), `protocol` (an unexpected reply) or `timeout`.
 */
export class FirecrackerVsockError extends Error {
  readonly code = 'FIRECRACKER_VSOCK';
  constructor(
    readonly reason: 'unreachable' | 'refused' | 'protocol' | 'timeout',
    message: string,
  ) {
    super(message);
    this.name = 'FirecrackerVsockError';
  }
}

/**
 * Opens a stream to guest vsock port `port` through Firecracker's host-side socket: connects to
 * `udsPath`, sends `CONNECT <port>\n`, and resolves once Firecracker answers `OK <hostport>\n`;
 * from then on the socket carries the guest's stream. Paths longer than sun_path (deep jails)
 * are reached through their folder.
 *
 * @example
 * const sock = await connectFirecrackerVsock(record.extra.vsockPath, 1024, 2000);
 * sock.write('hello');
 */
export function connectFirecrackerVsock(udsPath: string, port: number, timeoutMs: number): Promise<Socket> {
  if (!Number.isInteger(port) || port < 0 || port > 0xffff_ffff) {
    return Promise.reject(new RangeError(`vsock port ${port} is not a 32-bit port number`));
  }
  let addr: ReturnType<typeof socketAddress>;
  try {
    addr = socketAddress(udsPath);
  } catch (err) {
    return Promise.reject(
      new FirecrackerVsockError('unreachable', `vsock ${udsPath}: ${(err as Error).message}`),
    );
  }
  return new Promise<Socket>((resolve, reject) => {
    const sock = connect(addr.path);
    let reply = Buffer.alloc(0);
    let connected = false;
    let settled = false;
    const fail = (reason: FirecrackerVsockError['reason'], message: string) => {
      if (settled) return;
      cleanup();
      sock.destroy();
      reject(new FirecrackerVsockError(reason, message));
    };
    // Paused mode ('readable'): no byte of the guest's is read past the OK line, and once the
    // listener is gone the socket behaves as a fresh one (a 'data' listener starts it).
    const onReadable = () => {
      for (let chunk: Buffer | null = sock.read(); chunk !== null; chunk = sock.read()) {
        reply = Buffer.concat([reply, chunk]);
        const nl = reply.indexOf(0x0a);
        if (nl < 0) {
          if (reply.length > MAX_REPLY) fail('protocol', `vsock port ${port}: no OK line in the reply`);
          continue;
        }
        const line = reply.subarray(0, nl).toString('latin1');
        if (!/^OK \d+$/.test(line)) {
          fail(
            'protocol',
            `vsock port ${port}: expected "OK <port>" from Firecracker, got ${JSON.stringify(line)}`,
          );
          return;
        }
        cleanup();
        // The guest may already have spoken: keep its bytes for the caller.
        const rest = reply.subarray(nl + 1);
        if (rest.length > 0) sock.unshift(rest);
        resolve(sock);
        return;
      }
    };
    const onError = (err: Error) =>
      connected
        ? fail('refused', `vsock port ${port}: ${err.message}`)
        : fail(
            'unreachable',
            `vsock ${udsPath}: cannot connect (${err.message}): is the VM running with vsock?`,
          );
    const onClose = () =>
      fail(
        'refused',
        `vsock port ${port}: Firecracker closed the connection without OK: nothing listens there in the guest`,
      );
    const timer = setTimeout(
      () => fail('timeout', `vsock port ${port}: no answer to CONNECT within ${timeoutMs} ms`),
      timeoutMs,
    );
    const cleanup = () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      addr.release();
      sock.off('readable', onReadable);
      sock.off('error', onError);
      sock.off('close', onClose);
    };
    sock.on('readable', onReadable);
    sock.on('error', onError);
    sock.on('close', onClose);
    sock.once('connect', () => {
      connected = true;
      sock.write(`CONNECT ${port}\n`);
    });
  });
}
