import { NqvmError } from '@nqvm/api';
import { z } from 'zod';
import { roleAtLeast } from '../auth/roles';
import type { BusEvent } from '../events/bus';
import type { App } from '../http/app-type';
import type { Services } from '../services';

const KEEPALIVE_MS = 15_000;

export function eventRoutes(app: App, s: Services): void {
  // Open streams never finish on their own: end them when the server closes, or close() waits forever.
  const streams = new Set<() => void>();
  app.addHook('preClose', async () => {
    for (const end of [...streams]) end();
  });
  app.get(
    '/api/v1/events',
    {
      config: { access: 'viewer' },
      schema: {
        tags: ['events'],
        summary: 'Server-Sent Events: every change you may see',
        description:
          'Each event: `event: <type>` (e.g. vm.updated, operation.updated), `id: <seq>`, `data: <resource as its GET returns it>`. ' +
          'Reconnect with the Last-Event-ID header (or ?last_event_id=) to replay what you missed.',
        querystring: z.object({ last_event_id: z.coerce.number().int().min(0).optional() }),
      },
    },
    async (req, reply) => {
      const p = req.principal;
      if (p.kind !== 'user') throw new NqvmError('UNAUTHENTICATED');
      const visible = (e: BusEvent) =>
        roleAtLeast(p.role, e.minRole) || (e.ownerId !== null && e.ownerId === p.userId);
      const headerId = Number(req.headers['last-event-id']);
      const after = Number.isInteger(headerId) && headerId >= 0 ? headerId : req.query.last_event_id;

      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      res.write('retry: 2000\n\n');

      let lastSent = after ?? 0;
      const queue: BusEvent[] = [];
      let replaying = after !== undefined;
      const send = (e: BusEvent) => {
        if (e.seq <= lastSent || !visible(e)) return;
        lastSent = e.seq;
        res.write(`id: ${e.seq}\nevent: ${e.type}\ndata: ${JSON.stringify(e.data)}\n\n`);
        // Replayed events are old by design: only live ones measure how far the stream lags.
        if (!replaying) s.metrics.eventDelivered(e);
      };
      const unsubscribe = s.bus.subscribe((e) => (replaying ? queue.push(e) : send(e)));
      const keepalive = setInterval(() => res.write(': keep-alive\n\n'), KEEPALIVE_MS);
      const closed = s.metrics.streamOpened();
      const end = () => {
        closed();
        clearInterval(keepalive);
        unsubscribe();
        streams.delete(end);
        if (!res.writableEnded) res.end();
      };
      streams.add(end);
      req.raw.on('close', end);
      if (replaying) {
        for (;;) {
          const batch = await s.bus.since(lastSent, 1000);
          batch.forEach(send);
          if (batch.length < 1000) break;
        }
        replaying = false;
        queue.splice(0).forEach(send);
      }
    },
  );
}
