import { EventEmitter } from 'node:events';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ConsoleCloseCode,
  ConsoleCloseReason,
  closeConsoleSocket,
  consoleCloseCodeOf,
  consoleShouldReconnect,
  parseConsoleClientMessage,
  startConsoleKeepAlive,
} from './console-protocol';

/** A peer that answers pings only while `answering`, as a live or a dead client would. */
class Peer extends EventEmitter {
  answering = true;
  pings = 0;
  terminated = false;
  readyState = 1;
  closes: Array<[number, string]> = [];

  ping(): void {
    this.pings++;
    if (this.answering) queueMicrotask(() => this.emit('pong'));
  }

  terminate(): void {
    this.terminated = true;
    this.readyState = 3;
    this.emit('close');
  }

  close(code: number, reason: string): void {
    this.closes.push([code, reason]);
    this.readyState = 2;
  }
}

describe('console protocol', () => {
  it('parses client messages, ignores unknown types and refuses malformed ones', () => {
    expect(parseConsoleClientMessage('{"type":"resize","cols":80,"rows":24}')).toEqual({
      type: 'resize',
      cols: 80,
      rows: 24,
    });
    expect(parseConsoleClientMessage('{"type":"take"}')).toEqual({ type: 'take' });
    expect(parseConsoleClientMessage('{"type":"paste-mode","on":true}')).toBe('ignored');
    for (const bad of ['', 'take', '[]', '{"cols":1}', '{"type":"resize","cols":0,"rows":24}', 'null'])
      expect(parseConsoleClientMessage(bad), bad).toBe('invalid');
  });

  it('maps every close reason to a code, and tells clients when to reconnect', () => {
    for (const reason of ConsoleCloseReason.options) {
      const code = consoleCloseCodeOf(reason);
      const reconnect = consoleShouldReconnect(code);
      const ended = ['vm-stopped', 'vm-deleted', 'vm-not-running', 'protocol-error'].includes(reason);
      expect(reconnect, reason).toBe(!ended);
    }
    expect(consoleCloseCodeOf('agent-restart')).toBe(ConsoleCloseCode.reconnect);
    expect(consoleShouldReconnect(1006)).toBe(true);
  });

  describe('keep-alive', () => {
    beforeEach(() => vi.useFakeTimers());
    afterEach(() => vi.useRealTimers());

    it('keeps a peer that answers and drops one that stops answering within two intervals', async () => {
      const peer = new Peer();
      startConsoleKeepAlive(peer, 20_000);
      for (let i = 0; i < 5; i++) await vi.advanceTimersByTimeAsync(20_000);
      expect(peer.pings).toBe(5);
      expect(peer.terminated).toBe(false);
      peer.answering = false;
      await vi.advanceTimersByTimeAsync(20_000);
      expect(peer.terminated).toBe(false);
      await vi.advanceTimersByTimeAsync(20_000);
      expect(peer.terminated).toBe(true);
      await vi.advanceTimersByTimeAsync(60_000);
      expect(peer.pings).toBe(6);
    });

    it('cuts a connection whose peer does not finish the closing handshake', async () => {
      const peer = new Peer();
      closeConsoleSocket(peer, 4001, 'slow-consumer', 2_000);
      expect(peer.closes).toEqual([[4001, 'slow-consumer']]);
      await vi.advanceTimersByTimeAsync(1_999);
      expect(peer.terminated).toBe(false);
      await vi.advanceTimersByTimeAsync(1);
      expect(peer.terminated).toBe(true);
    });
  });
});
