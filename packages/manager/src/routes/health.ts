import { Health } from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';

export function healthRoutes(app: App, s: Services): void {
  app.get(
    '/healthz',
    {
      config: { access: 'public' },
      schema: { tags: ['system'], summary: 'Liveness', response: { 200: Health } },
    },
    async () => ({ status: 'ok' as const, version: s.version }),
  );
}
