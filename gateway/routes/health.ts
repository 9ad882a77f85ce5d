import { Type } from 'typebox';
import { randomUUID } from 'node:crypto';
import type { Gateway, RouteContext } from '../app.js';
import { ErrorSchema } from '../schemas.js';
import { sendError } from '../errors.js';
import { asAppError } from '../../lib/db.js';
import { AppError } from '../../lib/errors.js';

const Status = Type.Object({ status: Type.String() });

export function healthRoutes(app: Gateway, { backends, pool, logger }: RouteContext): void {
  app.get('/healthz', { schema: { security: [], response: { 200: Status } } }, async () => ({ status: 'ok' }));

  // Ready when the ledger answers (a lookup of an id nobody has) and the database does, each within a second.
  app.get('/readyz', { schema: { security: [], response: { 200: Status, 503: ErrorSchema } } }, async (_request, reply) => {
    try {
      await Promise.all([backends.ledgerCall((ledger, options) => ledger.lookupAccounts([randomUUID()], options), true), pool.query('SELECT 1')]);
      return { status: 'ready' };
    } catch (error) {
      // Said as the API says it ("database unavailable"; the ledger's errors are generic already): the driver's own
      // message names the database's address and user, not for this public route. Logged only when unexpected, as
      // errorHandler does: anyone may call this route, so an outage must not become a log line per call.
      const known = asAppError(error);
      const reason = known instanceof AppError && known.kind !== 'internal' ? known.message : 'internal error';
      if (reason === 'internal error') logger.error({ err: error }, 'readiness check failed');
      return sendError(reply, new AppError('unavailable', 'not_ready', `not ready: ${reason}`, { retryAfterSeconds: 1 }));
    }
  });
}
