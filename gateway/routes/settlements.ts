import type { FastifyRequest } from 'fastify';
import { AppError, ValidationError } from '../../lib/errors.js';
import type { Gateway, RouteContext } from '../app.js';
import { COMMON_ERRORS, IdParams, Reconciliation, Settlement, SettlementCloseBody, ListQuery, listOf, textBody } from '../schemas.js';
import { jsonInt, settlementView } from '../views.js';
import { objectId } from './ids.js';

/** A path's id naming no settlement of the caller's is 404; a list's cursor naming none is 400, as every list's. */
const settlementNotFound = (field: string) =>
  field === 'id' ? new AppError('not_found', 'resource_missing', 'No such settlement', { field }) : new ValidationError(field, 'no such settlement', 'resource_missing');

/**
 * The settlement service names its parameters after its request: say them as the REST API does. A settlement not
 * found is the one the route named in `settlementField` (its path's id, or the list's cursor).
 */
function restError(error: unknown, settlementField: string): unknown {
  if (!(error instanceof AppError)) return error;
  if (error.kind === 'not_found') return error.code === 'merchant_not_found' ? new AppError('not_found', 'resource_missing', 'No such merchant', { field: 'merchant' }) : settlementNotFound(settlementField);
  // A settlement id the service refuses to look up (the nil UUID) names no settlement either.
  if (error.kind === 'invalid_argument' && error.details.field === 'batch_id') return settlementNotFound(settlementField);
  if (error.details.field === 'merchant_id') return new AppError(error.kind, error.code, error.message, { ...error.details, field: 'merchant' });
  return error;
}

/**
 * Settlements (settlement/README.md): merchants read their own; the platform admin closes windows on demand,
 * reads any settlement, its bank payout file and its reconciliation.
 */
export function settlementRoutes(app: Gateway, ctx: RouteContext): void {
  const { backends } = ctx;
  const settle = <T>(work: Promise<T>, settlementField = 'id'): Promise<T> => work.catch((error: unknown) => Promise.reject(restError(error, settlementField)));
  /** The admin sees every merchant's settlements; a merchant only its own (others are not found). */
  const scopeOf = (request: FastifyRequest) => (request.caller?.kind === 'admin' ? '' : ctx.merchantOf(request));

  app.post(
    '/v1/settlements/close',
    { schema: { description: "Platform admin key only: closes the merchant's open settlement window in the currency now, before its scheduled end.", body: SettlementCloseBody, response: { 200: listOf(Settlement), ...COMMON_ERRORS } } },
    async (request) => {
      ctx.requireAdmin(request);
      const { batches } = await settle(backends.settle((c) => c.closeWindow, { merchantId: request.body.merchant.toLowerCase(), currency: request.body.currency }, false));
      return { object: 'list' as const, data: batches.map(settlementView), has_more: false, url: '/v1/settlements/close' };
    },
  );

  app.get('/v1/settlements', { schema: { querystring: ListQuery, response: { 200: listOf(Settlement), ...COMMON_ERRORS } } }, async (request) => {
    const { limit = 10, starting_after, ending_before } = request.query;
    const page = await settle(
      backends.settle((c) => c.listBatches, { merchantId: ctx.merchantOf(request), limit, startingAfter: starting_after ?? '', endingBefore: ending_before ?? '' }, true),
      ending_before ? 'ending_before' : 'starting_after',
    );
    return { object: 'list' as const, data: page.batches.map(settlementView), has_more: page.hasMore, url: '/v1/settlements' };
  });

  app.get('/v1/settlements/:id', { schema: { params: IdParams, response: { 200: Settlement, ...COMMON_ERRORS } } }, async (request) => {
    const id = objectId(request.params.id, settlementNotFound);
    const { batch } = await settle(backends.settle((c) => c.getBatch, { id, merchantId: scopeOf(request) }, true));
    return settlementView(batch!);
  });

  app.get(
    '/v1/settlements/:id/report.csv',
    { schema: { description: 'The settlement report: one line per capture, fee and refund, then the totals (see settlement/README.md).', params: IdParams, response: { 200: textBody('text/csv', 'RFC 4180 CSV with a header row'), ...COMMON_ERRORS } } },
    async (request, reply) => {
      const id = objectId(request.params.id, settlementNotFound);
      const { csv } = await settle(backends.settle((c) => c.getReport, { batchId: id, merchantId: scopeOf(request) }, true));
      return reply.type('text/csv; charset=utf-8').header('content-disposition', `attachment; filename="settlement-${id}.csv"`).send(csv);
    },
  );

  app.get(
    '/v1/settlements/:id/payout_file',
    { schema: { description: 'Platform admin key only: the payout as an ISO 20022 pain.001.001.09 credit transfer initiation for the bank.', params: IdParams, response: { 200: textBody('application/xml', 'pain.001.001.09'), ...COMMON_ERRORS } } },
    async (request, reply) => {
      ctx.requireAdmin(request);
      const id = objectId(request.params.id, settlementNotFound);
      const { xml } = await settle(backends.settle((c) => c.getPayoutFile, { batchId: id, merchantId: '' }, true));
      return reply.type('application/xml; charset=utf-8').send(xml);
    },
  );

  app.get(
    '/v1/settlements/:id/reconciliation',
    { schema: { description: 'Platform admin key only: the settlement compared with the ledger and the events consumed; every discrepancy with its ids.', params: IdParams, response: { 200: Reconciliation, ...COMMON_ERRORS } } },
    async (request) => {
      ctx.requireAdmin(request);
      const id = objectId(request.params.id, settlementNotFound);
      const r = await settle(backends.settle((c) => c.reconcile, { batchId: id, merchantId: '' }, true));
      return {
        object: 'reconciliation' as const,
        settlement: settlementView(r.batch!),
        lines_checked: r.linesChecked,
        ledger_transfers_checked: r.ledgerTransfersChecked,
        events_checked: r.eventsChecked,
        discrepancies: r.discrepancies.map((d) => ({ kind: d.kind, detail: d.detail, ids: d.ids, expected: jsonInt(d.expected), actual: jsonInt(d.actual) })),
      };
    },
  );
}
