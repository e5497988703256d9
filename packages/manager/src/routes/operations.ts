import { IdParams, listOf, Operation, OperationListQuery, OperationWaitQuery } from '@nqvm/api';
import type { App } from '../http/app-type';
import type { Services } from '../services';

export function operationRoutes(app: App, s: Services): void {
  const tags = ['operations'];
  app.get(
    '/api/v1/operations',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'List operations, newest first',
        querystring: OperationListQuery,
        response: { 200: listOf(Operation) },
      },
    },
    async (req) => s.ops.list(req.query),
  );
  app.get(
    '/api/v1/operations/:id',
    {
      config: { access: 'viewer' },
      schema: {
        tags,
        summary: 'Get an operation; ?wait=N (<= 60) waits until it finishes or N seconds pass',
        params: IdParams,
        querystring: OperationWaitQuery,
        response: { 200: Operation },
      },
    },
    async (req) => s.ops.wait(req.params.id, req.query.wait ?? 0),
  );
  app.post(
    '/api/v1/operations/:id/cancel',
    {
      config: { access: 'operator', audit: 'operation.cancel' },
      schema: {
        tags,
        summary: 'Cancel an operation where the work can stop',
        params: IdParams,
        response: { 200: Operation },
      },
    },
    async (req) => s.ops.cancel(req.params.id),
  );
}
