/**
 * The guest agent's wire protocol, spoken over one byte stream in both directions
 * (virtio-serial, vsock, or a unix socket in tests). The C agent (native/nqvm-guest-agent.c)
 * holds the same constants: change both together.
 *
 * Frame: `u32 BE length` (of everything after these 4 bytes) | `u8 type` | `u32 BE channel` |
 * payload (at most 64 KiB). Channel 0 is the session; an exec uses the channel the host picks
 * (non-zero, unique per connection). "TLV" is a sequence of `u8 tag | u32 BE len | bytes`.
 * A bigger frame or an unknown type from the host is a protocol error: the guest resets the
 * session as if the host had disconnected.
 *
 * Session (channel 0): the guest sends HELLO whenever it (re)opens its transport or accepts a
 * connection; the host sends AUTH at connect and after every HELLO; the guest answers AUTH_OK
 * (its info) or ERROR AUTH_FAILED, and until then answers every other frame with ERROR
 * AUTH_REQUIRED. SET_TOKEN replaces the guest's token (clones of a snapshot) and is answered
 * with AUTH_OK. PING is echoed as PONG.
 *
 * Exec (channel N): EXEC (TLV: argv elements in order, env "K=V", cwd, user, tty rows/cols,
 * stdin) is answered with STARTED (u32 pid), or ERROR EXEC_FAILED followed by EXIT kind 2.
 * The host sends STDIN / STDIN_EOF / SIGNAL (u32, to the process group) / RESIZE (u16 rows,
 * u16 cols); the guest sends STDOUT / STDERR (a tty's output is all STDOUT), then EXIT
 * (u8 kind | i32 value), after which the channel is free. The guest queues at most 1 MiB per
 * channel towards the host and stops reading the child while over.
 *
 * Container mode (channel 0): LOG (u64 ms | u8 stream | one line without its newline),
 * WORKLOAD_STARTED (u32 pid | u64 ms), WORKLOAD_EXIT (u8 kind | i32 value | u64 ms); the host
 * answers the exit with EXIT_ACK, and can send STOP (u32 signal | u32 timeout s). While no host
 * is authenticated the guest keeps up to 1 MiB of these (oldest log lines dropped, with a note)
 * and sends them after the next AUTH_OK.
 */
import { GuestAgentError } from './errors';

export const PROTOCOL_VERSION = '1';
/** `u32 length | u8 type | u32 channel` */
export const FRAME_HEADER_BYTES = 9;
export const MAX_PAYLOAD_BYTES = 65536;
export const TOKEN_MIN_LENGTH = 16;
export const TOKEN_MAX_LENGTH = 128;
/** The guest holds at most this much output per channel before it stops reading the child. */
export const CHANNEL_OUTPUT_LIMIT_BYTES = 1024 * 1024;
export const MAX_EXEC_CHANNELS = 64;
/** Name of the virtio-serial port the agent looks for with `--device auto`. */
export const VIRTIO_PORT_NAME = 'org.nqvm.agent';

export const FrameType = {
  Hello: 0x01,
  Auth: 0x02,
  AuthOk: 0x03,
  Error: 0x04,
  SetToken: 0x05,
  Ping: 0x06,
  Pong: 0x07,
  Exec: 0x10,
  Started: 0x11,
  Stdin: 0x12,
  StdinEof: 0x13,
  Stdout: 0x14,
  Stderr: 0x15,
  Exit: 0x16,
  Signal: 0x17,
  Resize: 0x18,
  Log: 0x20,
  WorkloadStarted: 0x21,
  WorkloadExit: 0x22,
  ExitAck: 0x23,
  Stop: 0x24,
} as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const HelloTag = { Version: 1, Mode: 2 } as const;
export const InfoTag = { Version: 1, Mode: 2, Hostname: 3, UptimeS: 4, Pid: 5 } as const;
export const ErrorTag = { Code: 1, Message: 2 } as const;
export const ExecTag = { Arg: 1, Env: 2, Cwd: 3, User: 4, Tty: 5, Stdin: 6 } as const;

const EXIT_KINDS = ['exited', 'signal', 'unstartable'] as const;
export type ExitKind = (typeof EXIT_KINDS)[number];
const LOG_STREAMS = { 1: 'stdout', 2: 'stderr', 3: 'nqvm' } as const;
export type LogStream = (typeof LOG_STREAMS)[keyof typeof LOG_STREAMS];

export interface Frame {
  type: number;
  channel: number;
  payload: Buffer;
}

function protocolError(message: string): GuestAgentError {
  return new GuestAgentError('PROTOCOL', message);
}

export function encodeFrame(type: number, channel: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD_BYTES)
    throw new RangeError(`payload of ${payload.length} bytes is over ${MAX_PAYLOAD_BYTES}`);
  const frame = Buffer.allocUnsafe(FRAME_HEADER_BYTES + payload.length);
  frame.writeUInt32BE(payload.length + 5, 0);
  frame.writeUInt8(type, 4);
  frame.writeUInt32BE(channel, 5);
  payload.copy(frame, FRAME_HEADER_BYTES);
  return frame;
}

/** Cuts a byte stream into frames; chunks may split frames anywhere. */
export class FrameDecoder {
  private pending: Buffer = Buffer.alloc(0);

  /** @throws GuestAgentError PROTOCOL on a frame length out of range; the stream is then unusable. */
  push(chunk: Buffer): Frame[] {
    const buf = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    const frames: Frame[] = [];
    let off = 0;
    while (buf.length - off >= 4) {
      const length = buf.readUInt32BE(off);
      if (length < 5 || length > 5 + MAX_PAYLOAD_BYTES) throw protocolError(`frame of ${length} bytes`);
      if (buf.length - off < 4 + length) break;
      frames.push({
        type: buf.readUInt8(off + 4),
        channel: buf.readUInt32BE(off + 5),
        // A copy: the chunk's memory is not kept alive by one small frame.
        payload: Buffer.from(buf.subarray(off + FRAME_HEADER_BYTES, off + 4 + length)),
      });
      off += 4 + length;
    }
    this.pending = Buffer.from(buf.subarray(off));
    return frames;
  }
}

export interface Tlv {
  tag: number;
  value: Buffer;
}

export function encodeTlv(entries: ReadonlyArray<readonly [number, Buffer | string]>): Buffer {
  const parts: Buffer[] = [];
  for (const [tag, v] of entries) {
    const value = typeof v === 'string' ? Buffer.from(v) : v;
    const head = Buffer.allocUnsafe(5);
    head.writeUInt8(tag, 0);
    head.writeUInt32BE(value.length, 1);
    parts.push(head, value);
  }
  return Buffer.concat(parts);
}

export function decodeTlv(payload: Buffer): Tlv[] {
  const out: Tlv[] = [];
  let off = 0;
  while (off < payload.length) {
    if (payload.length - off < 5) throw protocolError('truncated TLV header');
    const tag = payload.readUInt8(off);
    const len = payload.readUInt32BE(off + 1);
    if (payload.length - off - 5 < len) throw protocolError(`TLV ${tag} is truncated`);
    out.push({ tag, value: payload.subarray(off + 5, off + 5 + len) });
    off += 5 + len;
  }
  return out;
}

function tlvString(tlvs: Tlv[], tag: number): string {
  return tlvs.find((t) => t.tag === tag)?.value.toString() ?? '';
}

export interface ExecRequest {
  argv: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string;
  tty?: { rows: number; cols: number };
  /** STDIN frames will follow; without it the child's stdin is /dev/null. */
  stdin?: boolean;
}

export function encodeExec(req: ExecRequest): Buffer {
  if (req.argv.length === 0) throw new RangeError('argv is empty');
  const entries: [number, Buffer | string][] = req.argv.map((a) => [ExecTag.Arg, a]);
  for (const [k, v] of Object.entries(req.env ?? {})) entries.push([ExecTag.Env, `${k}=${v}`]);
  if (req.cwd !== undefined) entries.push([ExecTag.Cwd, req.cwd]);
  if (req.user !== undefined) entries.push([ExecTag.User, req.user]);
  if (req.tty) entries.push([ExecTag.Tty, encodeSize(req.tty.rows, req.tty.cols)]);
  if (req.stdin) entries.push([ExecTag.Stdin, Buffer.alloc(0)]);
  return encodeTlv(entries);
}

/** RESIZE, and the tty entry of EXEC: u16 rows | u16 cols. */
export function encodeSize(rows: number, cols: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt16BE(rows, 0);
  b.writeUInt16BE(cols, 2);
  return b;
}

export function encodeU32(value: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(value, 0);
  return b;
}

export function encodeStop(signal: number, timeoutS: number): Buffer {
  return Buffer.concat([encodeU32(signal), encodeU32(timeoutS)]);
}

export interface AgentInfo {
  version: string;
  mode: 'serve' | 'container';
  hostname: string;
  uptimeS: number;
  pid: number;
}

export function encodeInfo(info: AgentInfo): Buffer {
  return encodeTlv([
    [InfoTag.Version, info.version],
    [InfoTag.Mode, info.mode],
    [InfoTag.Hostname, info.hostname],
    [InfoTag.UptimeS, String(info.uptimeS)],
    [InfoTag.Pid, String(info.pid)],
  ]);
}

export function decodeInfo(payload: Buffer): AgentInfo {
  const tlvs = decodeTlv(payload);
  const mode = tlvString(tlvs, InfoTag.Mode);
  return {
    version: tlvString(tlvs, InfoTag.Version),
    mode: mode === 'container' ? 'container' : 'serve',
    hostname: tlvString(tlvs, InfoTag.Hostname),
    uptimeS: Number(tlvString(tlvs, InfoTag.UptimeS)),
    pid: Number(tlvString(tlvs, InfoTag.Pid)),
  };
}

export function encodeError(code: string, message: string): Buffer {
  return encodeTlv([
    [ErrorTag.Code, code],
    [ErrorTag.Message, message],
  ]);
}

export function decodeError(payload: Buffer): { code: string; message: string } {
  const tlvs = decodeTlv(payload);
  return { code: tlvString(tlvs, ErrorTag.Code), message: tlvString(tlvs, ErrorTag.Message) };
}

export interface ExitStatus {
  kind: ExitKind;
  /** The exit code, the signal number, or (unstartable) 127 / 126. */
  value: number;
}

function exitKind(byte: number): ExitKind {
  const kind = EXIT_KINDS[byte];
  if (!kind) throw protocolError(`unknown exit kind ${byte}`);
  return kind;
}

export function encodeExit(status: ExitStatus): Buffer {
  const b = Buffer.allocUnsafe(5);
  b.writeUInt8(EXIT_KINDS.indexOf(status.kind), 0);
  b.writeInt32BE(status.value, 1);
  return b;
}

export function decodeExit(payload: Buffer): ExitStatus {
  if (payload.length !== 5) throw protocolError(`EXIT of ${payload.length} bytes`);
  return { kind: exitKind(payload.readUInt8(0)), value: payload.readInt32BE(1) };
}

export interface LogRecord {
  /** Unix time in ms (the guest's CLOCK_REALTIME). */
  ts: number;
  stream: LogStream;
  /** One line without its newline. */
  data: Buffer;
}

export function encodeLog(record: LogRecord): Buffer {
  const head = Buffer.allocUnsafe(9);
  head.writeBigUInt64BE(BigInt(record.ts), 0);
  const code = Object.entries(LOG_STREAMS).find(([, name]) => name === record.stream)?.[0];
  head.writeUInt8(Number(code), 8);
  return Buffer.concat([head, record.data]);
}

export function decodeLog(payload: Buffer): LogRecord {
  if (payload.length < 9) throw protocolError(`LOG of ${payload.length} bytes`);
  const stream = LOG_STREAMS[payload.readUInt8(8) as keyof typeof LOG_STREAMS];
  if (!stream) throw protocolError(`unknown log stream ${payload.readUInt8(8)}`);
  return { ts: Number(payload.readBigUInt64BE(0)), stream, data: payload.subarray(9) };
}

export function decodeWorkloadStarted(payload: Buffer): { pid: number; ts: number } {
  if (payload.length !== 12) throw protocolError(`WORKLOAD_STARTED of ${payload.length} bytes`);
  return { pid: payload.readUInt32BE(0), ts: Number(payload.readBigUInt64BE(4)) };
}

export function decodeWorkloadExit(payload: Buffer): ExitStatus & { ts: number } {
  if (payload.length !== 13) throw protocolError(`WORKLOAD_EXIT of ${payload.length} bytes`);
  return {
    kind: exitKind(payload.readUInt8(0)),
    value: payload.readInt32BE(1),
    ts: Number(payload.readBigUInt64BE(5)),
  };
}
