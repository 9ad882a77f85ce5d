import { AppError } from '../../lib/errors.js';
import { CaptureMethod, PaymentStatus, type Payment as PaymentMessage } from '../../proto/gen/payments/v1/payments.js';
import type { Gateway, RouteContext } from '../app.js';
import { errorBody } from '../errors.js';
import { CaptureBody, COMMON_ERRORS, EmptyBody, ErrorSchema, IdParams, ListQuery, Payment, PaymentBody, Refund, RefundBody, listOf } from '../schemas.js';
import { paymentView, refundView } from '../views.js';
import { objectId } from './ids.js';

const paymentNotFound = (field: string) => new AppError('not_found', 'resource_missing', 'No such payment', { field });
const refundNotFound = (field: string) => new AppError('not_found', 'resource_missing', 'No such refund', { field });
/** The backend names fields after its request (payment_id, source.account): say them as the REST API does. */
const REST_FIELD: Record<string, string> = { payment_id: 'id', refund_id: 'id', customer_id: 'customer', idempotency_key: 'Idempotency-Key' };

function restError(error: unknown): unknown {
  if (!(error instanceof AppError)) return error;
  const field = error.details.field;
  if (error.kind === 'not_found') return new AppError('not_found', 'resource_missing', error.message, field ? { field: REST_FIELD[field] ?? field } : {});
  return field && REST_FIELD[field] ? new AppError(error.kind, error.code, error.message, { ...error.details, field: REST_FIELD[field] }) : error;
}

export function paymentRoutes(app: Gateway, ctx: RouteContext): void {
  const { backends } = ctx;
  const withRestErrors = <T>(work: Promise<T>): Promise<T> => work.catch((error: unknown) => Promise.reject(restError(error)));

  app.post(
    '/v1/payments',
    { schema: { body: PaymentBody, response: { 201: Payment, 402: ErrorSchema, ...COMMON_ERRORS } } },
    async (request, reply) => {
      const merchantId = ctx.merchantOf(request);
      const body = request.body;
      const key = request.idempotency?.key ?? '';
      const payment = await withRestErrors(
        backends.createPayment(
          {
            idempotencyKey: key,
            merchantId,
            amount: BigInt(body.amount),
            currency: body.currency,
            source: {
              kind: 'account' in body.source ? { $case: 'accountId', value: body.source.account } : { $case: 'card', value: { type: '', ...body.source.card } },
            },
            destinationAccountId: body.destination_account_id ?? '',
            captureMethod: body.capture_method === 'automatic' ? CaptureMethod.CAPTURE_METHOD_AUTOMATIC : CaptureMethod.CAPTURE_METHOD_MANUAL,
            metadata: body.metadata ?? {},
            deviceId: body.device_id ?? '',
            ipCountry: body.ip_country ?? '',
            customerId: body.customer ?? '',
          },
          // With an idempotency key the payment id derives from it: a repeat is the same payment.
          key !== '',
        ),
      );
      return sendPayment(reply, payment, 201);
    },
  );

  app.get('/v1/payments', { schema: { querystring: ListQuery, response: { 200: listOf(Payment), ...COMMON_ERRORS } } }, async (request) => {
    const merchantId = ctx.merchantOf(request);
    const { limit = 10, starting_after, ending_before } = request.query;
    const page = await withRestErrors(
      backends.payment((c) => c.listPayments, { merchantId, limit, startingAfter: starting_after ?? '', endingBefore: ending_before ?? '' }, true),
    );
    return { object: 'list' as const, data: page.payments.map(paymentView), has_more: page.hasMore, url: '/v1/payments' };
  });

  app.get('/v1/payments/:id', { schema: { params: IdParams, response: { 200: Payment, ...COMMON_ERRORS } } }, async (request) => {
    const paymentId = objectId(request.params.id, paymentNotFound);
    const { payment } = await withRestErrors(backends.payment((c) => c.getPayment, { merchantId: ctx.merchantOf(request), paymentId }, true));
    return paymentView(payment!);
  });

  // A capture or refund the ledger refuses for a lack of funds is 402 with the ledger code, as a transfer is.
  app.post('/v1/payments/:id/capture', { schema: { params: IdParams, body: CaptureBody, response: { 200: Payment, 402: ErrorSchema, ...COMMON_ERRORS } } }, async (request) => {
    const paymentId = objectId(request.params.id, paymentNotFound);
    const amount = BigInt((request.body as { amount?: number } | undefined)?.amount ?? 0);
    // One capture per payment, with an id derived from it: retrying is safe.
    const { payment } = await withRestErrors(backends.payment((c) => c.capturePayment, { merchantId: ctx.merchantOf(request), paymentId, amount }, true));
    return paymentView(payment!);
  });

  app.post('/v1/payments/:id/cancel', { schema: { params: IdParams, body: EmptyBody, response: { 200: Payment, ...COMMON_ERRORS } } }, async (request) => {
    const paymentId = objectId(request.params.id, paymentNotFound);
    const { payment } = await withRestErrors(backends.payment((c) => c.cancelPayment, { merchantId: ctx.merchantOf(request), paymentId }, true));
    return paymentView(payment!);
  });

  app.post('/v1/refunds', { schema: { body: RefundBody, response: { 201: Refund, 402: ErrorSchema, ...COMMON_ERRORS } } }, async (request, reply) => {
    const body = request.body;
    const key = request.idempotency?.key ?? '';
    const { refund } = await withRestErrors(
      backends.payment(
        (c) => c.createRefund,
        { idempotencyKey: key, merchantId: ctx.merchantOf(request), paymentId: body.payment.toLowerCase(), amount: BigInt(body.amount ?? 0), metadata: body.metadata ?? {} },
        key !== '',
      ).catch((error: unknown) => {
        // The payment named in the body is the parameter at fault.
        if (error instanceof AppError && error.kind === 'not_found') throw new AppError('not_found', 'resource_missing', 'No such payment', { field: 'payment' });
        // Here the service's payment_id is the body's payment, not the path's id (REST_FIELD).
        if (error instanceof AppError && error.details.field === 'payment_id') {
          throw new AppError(error.kind, error.code, error.message.replace(/^payment_id: /, 'payment: '), { ...error.details, field: 'payment' });
        }
        throw error;
      }),
    );
    return reply.code(201).send(refundView(refund!));
  });

  app.get('/v1/refunds/:id', { schema: { params: IdParams, response: { 200: Refund, ...COMMON_ERRORS } } }, async (request) => {
    const refundId = objectId(request.params.id, refundNotFound);
    const { refund } = await withRestErrors(backends.payment((c) => c.getRefund, { merchantId: ctx.merchantOf(request), refundId }, true));
    return refundView(refund!);
  });
}

/** A declined payment is recorded, and answered 402 with the payment in the error (as Stripe does). */
function sendPayment(reply: import('fastify').FastifyReply, payment: PaymentMessage, status: number) {
  if (payment.status !== PaymentStatus.PAYMENT_STATUS_DECLINED) return reply.code(status).send(paymentView(payment));
  const declined = new AppError('conflict', payment.declineCode || 'card_declined', payment.declineReason || 'The payment was declined');
  const body = errorBody(declined, { payment: paymentView(payment) });
  body.error.type = 'card_error';
  return reply.code(402).send(body);
}
