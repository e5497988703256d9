import { AuditEvent, AuditListQuery, listOf } from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';

export function auditRoutes(app: App, s: Services): void {
  app.get(
    '/api/v1/audit',
    {
      config: { access: 'admin' },
      schema: {
        tags: ['audit'],
        summary: 'The audit log, newest first; filters by actor, action, target, result and time',
        querystring: AuditListQuery,
        response: { 200: listOf(AuditEvent) },
      },
    },
    async (req) => s.audit.list(req.query),
  );
}
