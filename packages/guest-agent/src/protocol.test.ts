import { describe, expect, it } from 'vitest';
import { GuestAgentError } from './errors';
import {
  decodeError,
  decodeExit,
  decodeInfo,
  decodeLog,
  decodeTlv,
  decodeWorkloadExit,
  decodeWorkloadStarted,
  ExecTag,
  encodeError,
  encodeExec,
  encodeExit,
  encodeFrame,
  encodeInfo,
  encodeLog,
  encodeTlv,
  FrameDecoder,
  FrameType,
  MAX_PAYLOAD_BYTES,
} from './protocol';

describe('frames', () => {
  it('encodes the header as u32 BE length | u8 type | u32 BE channel', () => {
    const f = encodeFrame(FrameType.Stdout, 0x01020304, Buffer.from('hi'));
    expect([...f]).toEqual([0, 0, 0, 7, 0x14, 1, 2, 3, 4, 0x68, 0x69]);
  });

  it('round-trips frames split at every byte', () => {
    const frames = [
      encodeFrame(FrameType.Hello, 0, encodeTlv([[1, '1']])),
      encodeFrame(FrameType.Stdout, 7, Buffer.alloc(MAX_PAYLOAD_BYTES, 0xab)),
      encodeFrame(FrameType.Exit, 7, encodeExit({ kind: 'signal', value: 9 })),
      encodeFrame(FrameType.Pong, 0),
    ];
    const stream = Buffer.concat(frames);
    const decoder = new FrameDecoder();
    const got = [];
    for (let i = 0; i < stream.length; i += 997) got.push(...decoder.push(stream.subarray(i, i + 997)));
    expect(got.map((f) => [f.type, f.channel, f.payload.length])).toEqual([
      [FrameType.Hello, 0, 6],
      [FrameType.Stdout, 7, MAX_PAYLOAD_BYTES],
      [FrameType.Exit, 7, 5],
      [FrameType.Pong, 0, 0],
    ]);
    expect(got[1]!.payload.every((b) => b === 0xab)).toBe(true);

    const bytewise = new FrameDecoder();
    const one = [];
    for (const b of frames[2]!) one.push(...bytewise.push(Buffer.from([b])));
    expect(one).toHaveLength(1);
    expect(decodeExit(one[0]!.payload)).toEqual({ kind: 'signal', value: 9 });
  });

  it('rejects a frame over the maximum payload, and a length too short for a header', () => {
    const big = Buffer.alloc(9);
    big.writeUInt32BE(5 + MAX_PAYLOAD_BYTES + 1, 0);
    expect(() => new FrameDecoder().push(big)).toThrow(GuestAgentError);
    expect(() => new FrameDecoder().push(big.subarray(0, 4))).toThrow(/frame of 65542 bytes/);
    const tiny = Buffer.from([0, 0, 0, 4, 1, 0, 0, 0]);
    expect(() => new FrameDecoder().push(tiny)).toThrow(/frame of 4 bytes/);
    expect(() => encodeFrame(FrameType.Stdin, 1, Buffer.alloc(MAX_PAYLOAD_BYTES + 1))).toThrow(RangeError);
  });
});

describe('payloads', () => {
  it('TLVs keep repeated tags in order and reject truncation', () => {
    const exec = encodeExec({
      argv: ['sh', '-c', 'echo $A'],
      env: { A: '1' },
      cwd: '/tmp',
      user: 'nobody',
      tty: { rows: 24, cols: 80 },
      stdin: true,
    });
    const tlvs = decodeTlv(exec);
    expect(tlvs.filter((t) => t.tag === ExecTag.Arg).map((t) => t.value.toString())).toEqual([
      'sh',
      '-c',
      'echo $A',
    ]);
    expect(tlvs.find((t) => t.tag === ExecTag.Env)?.value.toString()).toBe('A=1');
    expect([...tlvs.find((t) => t.tag === ExecTag.Tty)!.value]).toEqual([0, 24, 0, 80]);
    expect(tlvs.find((t) => t.tag === ExecTag.Stdin)?.value.length).toBe(0);
    expect(() => decodeTlv(exec.subarray(0, exec.length - 1))).toThrow(/truncated/);
    expect(() => encodeExec({ argv: [] })).toThrow(RangeError);
  });

  it('round-trips info, errors, exits and container records', () => {
    const info = { version: '1', mode: 'container' as const, hostname: 'web1', uptimeS: 12, pid: 345 };
    expect(decodeInfo(encodeInfo(info))).toEqual(info);
    expect(decodeError(encodeError('EXEC_FAILED', 'no such file: foo'))).toEqual({
      code: 'EXEC_FAILED',
      message: 'no such file: foo',
    });
    expect(decodeExit(encodeExit({ kind: 'exited', value: -1 }))).toEqual({ kind: 'exited', value: -1 });
    const ts = 1_750_000_000_123;
    const log = decodeLog(encodeLog({ ts, stream: 'nqvm', data: Buffer.from('line') }));
    expect({ ...log, data: log.data.toString() }).toEqual({ ts, stream: 'nqvm', data: 'line' });
    const started = Buffer.alloc(12);
    started.writeUInt32BE(42, 0);
    started.writeBigUInt64BE(BigInt(ts), 4);
    expect(decodeWorkloadStarted(started)).toEqual({ pid: 42, ts });
    const exit = Buffer.alloc(13);
    exit.writeUInt8(2, 0);
    exit.writeInt32BE(127, 1);
    exit.writeBigUInt64BE(BigInt(ts), 5);
    expect(decodeWorkloadExit(exit)).toEqual({ kind: 'unstartable', value: 127, ts });
    expect(() => decodeExit(Buffer.from([3, 0, 0, 0, 0]))).toThrow(/exit kind 3/);
  });
});
