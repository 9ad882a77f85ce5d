import { Type } from 'typebox';
import { randomUUID } from 'node:crypto';
import type { Gateway, RouteContext } from '../app.js';
import { ErrorSchema } from '../schemas.js';
import { sendError } from '../errors.js';
import { AppError } from '../../lib/errors.js';

const Status = Type.Object({ status: Type.String() });

export function healthRoutes(app: Gateway, { backends, pool }: RouteContext): void {
  app.get('/healthz', { schema: { security: [], response: { 200: Status } } }, async () => ({ status: 'ok' }));

  // Ready when the ledger answers (a lookup of an id nobody has) and the database does, each within a second.
  app.get('/readyz', { schema: { security: [], response: { 200: Status, 503: ErrorSchema } } }, async (_request, reply) => {
    try {
      await Promise.all([backends.ledgerCall((ledger, options) => ledger.lookupAccounts([randomUUID()], options), true), pool.query('SELECT 1')]);
      return { status: 'ready' };
    } catch (error) {
      return sendError(reply, new AppError('unavailable', 'not_ready', `not ready: ${error instanceof Error ? error.message : String(error)}`, { retryAfterSeconds: 1 }));
    }
  });
}
