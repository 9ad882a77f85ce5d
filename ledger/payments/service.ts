import { context } from '@opentelemetry/api';
import { currencyOf } from '../../lib/currency.js';
import { ValidationError } from '../../lib/errors.js';
import { serveCall, unary } from '../../lib/grpc.js';
import type { Logger } from '../../lib/logger.js';
import {
  CaptureMethod,
  CreatePaymentRequest,
  PaymentServiceService,
  PaymentStatus,
  RiskOutcome,
  type CreatePaymentOutcome,
  type Payment,
  type PaymentServiceServer,
  type Refund,
} from '../../proto/gen/payments/v1/payments.js';
import { MAX_BALANCE } from '../model.js';
import { hasControlCharacters, parseId, parseMetadata } from '../validation.js';
import type { CreatePaymentInput, PaymentFlows } from './flows.js';
import type { OperationRow, PaymentRow } from './model.js';
import { contextOf, linkTo } from '../../observability/tracing.js';
import { CARD_TYPES, isCardTypeOrNone } from '../../lib/card-types.js';

/** Items of one CreatePayments call. */
export const MAX_PAYMENTS_PER_CALL = 1_000;
/** Time kept before a CreatePayments call's deadline to encode and send the answers of the items done. */
const ANSWER_MARGIN_MS = 50;
const CREATE_PAYMENT_PATH = PaymentServiceService.createPayment.path.replace(/^\//, '');

/** payments.v1.PaymentService: request validation and conversion around PaymentFlows. */
export function createPaymentService(flows: PaymentFlows, logger: Logger): PaymentServiceServer {
  const createOne = async (request: CreatePaymentRequest) => paymentToProto(await flows.createPayment(parseCreatePayment(request)));
  return {
    createPayment: unary(logger, 'CreatePayment', async (request) => ({ payment: await createOne(request) })),

    createPayments: unary(logger, 'CreatePayments', async (request, call) => {
      if (request.payments.length === 0 || request.payments.length > MAX_PAYMENTS_PER_CALL) throw new ValidationError('payments', `1-${MAX_PAYMENTS_PER_CALL} payments`);
      // Each item is served as its own CreatePayment call would be: its span in its caller's trace (linked to
      // this call's), its metric sample, its own answer. Concurrently: the flows coalesce their statements.
      // One slow item must not cost the others their answers: an item not done shortly before the call's
      // deadline is answered DEADLINE_EXCEEDED alone (the caller retries it with its key), the rest as they are.
      const batch = linkTo(context.active());
      const deadline = Number(call.getDeadline());
      const answerBy = Number.isFinite(deadline) ? deadline - ANSWER_MARGIN_MS : undefined;
      const outcomes = await Promise.all(
        request.payments.map((item) =>
          serveCall(logger, CREATE_PAYMENT_PATH, 'CreatePayment', contextOf(item.traceparent), batch, () => createOne(item.request ?? CreatePaymentRequest.fromPartial({})), answerBy),
        ),
      );
      return {
        outcomes: outcomes.map((o): CreatePaymentOutcome => ({ result: 'response' in o ? { $case: 'payment', value: o.response } : { $case: 'error', value: o.failure } })),
      };
    }),

    capturePayment: unary(logger, 'CapturePayment', async (request) => ({
      payment: paymentToProto(await flows.capture(parseId(request.merchantId, 'merchant_id'), parseId(request.paymentId, 'payment_id'), parseAmount(request.amount, 'amount', true))),
    })),

    cancelPayment: unary(logger, 'CancelPayment', async (request) => ({
      payment: paymentToProto(await flows.cancel(parseId(request.merchantId, 'merchant_id'), parseId(request.paymentId, 'payment_id'))),
    })),

    getPayment: unary(logger, 'GetPayment', async (request) => ({
      payment: paymentToProto(await flows.getPayment(parseId(request.merchantId, 'merchant_id'), parseId(request.paymentId, 'payment_id'))),
    })),

    listPayments: unary(logger, 'ListPayments', async (request) => {
      if (request.limit > 100) throw new ValidationError('limit', 'at most 100');
      if (request.startingAfter && request.endingBefore) throw new ValidationError('ending_before', 'give starting_after or ending_before, not both');
      const page = await flows.listPayments(
        parseId(request.merchantId, 'merchant_id'),
        request.limit || 10,
        request.startingAfter ? parseId(request.startingAfter, 'starting_after') : null,
        request.endingBefore ? parseId(request.endingBefore, 'ending_before') : null,
      );
      return { payments: page.payments.map(paymentToProto), hasMore: page.hasMore };
    }),

    createRefund: unary(logger, 'CreateRefund', async (request) => ({
      refund: refundToProto(
        await flows.refund(
          parseId(request.merchantId, 'merchant_id'),
          parseId(request.paymentId, 'payment_id'),
          parseAmount(request.amount, 'amount', true),
          parseText(request.idempotencyKey, 'idempotency_key', 255),
          parseMetadata(request.metadata, 'metadata'),
        ),
        await flows.getPayment(parseId(request.merchantId, 'merchant_id'), parseId(request.paymentId, 'payment_id')),
      ),
    })),

    getRefund: unary(logger, 'GetRefund', async (request) => {
      const merchantId = parseId(request.merchantId, 'merchant_id');
      const refund = await flows.getRefund(merchantId, parseId(request.refundId, 'refund_id'));
      return { refund: refundToProto(refund, await flows.getPayment(merchantId, refund.paymentId)) };
    }),
  };
}

const COUNTRY = /^[A-Z]{2}$/;

function parseAmount(amount: bigint, field: string, zeroMeansAll = false): bigint {
  if (amount === 0n && zeroMeansAll) return 0n;
  if (amount <= 0n) throw new ValidationError(field, 'must be a positive integer of minor units', 'amount_invalid');
  if (amount > MAX_BALANCE) throw new ValidationError(field, `must be at most ${MAX_BALANCE}`, 'amount_too_large');
  return amount;
}

function parseText(value: string, field: string, max: number, pattern?: RegExp): string {
  if (value.length > max) throw new ValidationError(field, `at most ${max} characters`);
  if (hasControlCharacters(value)) throw new ValidationError(field, 'control characters are not allowed');
  if (pattern && value !== '' && !pattern.test(value)) throw new ValidationError(field, `must match ${pattern.source}`);
  return value;
}

function parseCreatePayment(r: CreatePaymentRequest): CreatePaymentInput {
  const source = r.source?.kind;
  if (!source) throw new ValidationError('source', 'an account or a card is required');
  if (r.captureMethod !== CaptureMethod.CAPTURE_METHOD_AUTOMATIC && r.captureMethod !== CaptureMethod.CAPTURE_METHOD_MANUAL) {
    throw new ValidationError('capture_method', 'automatic or manual');
  }
  let parsedSource: CreatePaymentInput['source'];
  if (source.$case === 'accountId') {
    parsedSource = { kind: 'account', accountId: parseId(source.value, 'source.account') };
  } else {
    const card = source.value;
    if (card.token === '') throw new ValidationError('source.card.token', 'required');
    if (card.fingerprint === '') throw new ValidationError('source.card.fingerprint', 'required');
    if (!COUNTRY.test(card.country)) throw new ValidationError('source.card.country', 'an ISO 3166-1 alpha-2 code (two capital letters)');
    if (!isCardTypeOrNone(card.type)) throw new ValidationError('source.card.type', CARD_TYPES.join(', '));
    parsedSource = {
      kind: 'card',
      token: parseText(card.token, 'source.card.token', 200),
      fingerprint: parseText(card.fingerprint, 'source.card.fingerprint', 200),
      country: card.country,
      type: card.type,
    };
  }
  return {
    merchantId: parseId(r.merchantId, 'merchant_id'),
    idempotencyKey: parseText(r.idempotencyKey, 'idempotency_key', 255),
    amount: parseAmount(r.amount, 'amount'),
    currency: currencyOf(r.currency).code,
    source: parsedSource,
    destinationAccountId: parseId(r.destinationAccountId, 'destination_account_id', { optional: true }),
    captureMethod: r.captureMethod === CaptureMethod.CAPTURE_METHOD_AUTOMATIC ? 'automatic' : 'manual',
    metadata: parseMetadata(r.metadata, 'metadata'),
    deviceId: parseText(r.deviceId, 'device_id', 200),
    ipCountry: parseText(r.ipCountry, 'ip_country', 2, COUNTRY),
    customerId: parseText(r.customerId, 'customer_id', 200),
  };
}

const STATUS: Record<PaymentRow['status'], PaymentStatus> = {
  processing: PaymentStatus.PAYMENT_STATUS_PROCESSING,
  requires_capture: PaymentStatus.PAYMENT_STATUS_REQUIRES_CAPTURE,
  succeeded: PaymentStatus.PAYMENT_STATUS_SUCCEEDED,
  canceled: PaymentStatus.PAYMENT_STATUS_CANCELED,
  declined: PaymentStatus.PAYMENT_STATUS_DECLINED,
  partially_refunded: PaymentStatus.PAYMENT_STATUS_PARTIALLY_REFUNDED,
  refunded: PaymentStatus.PAYMENT_STATUS_REFUNDED,
};

const RISK_OUTCOME: Record<PaymentRow['risk']['outcome'], RiskOutcome> = {
  scored: RiskOutcome.RISK_OUTCOME_SCORED,
  fail_open: RiskOutcome.RISK_OUTCOME_FAIL_OPEN,
  fail_closed: RiskOutcome.RISK_OUTCOME_FAIL_CLOSED,
};

export function paymentToProto(p: PaymentRow): Payment {
  return {
    id: p.id,
    merchantId: p.merchantId,
    amount: p.amount,
    currency: p.currency,
    amountCaptured: p.amountCaptured,
    amountRefunded: p.amountRefunded,
    status: STATUS[p.status],
    declineCode: p.declineCode ?? '',
    declineReason: p.declineReason ?? '',
    createdAt: p.createdAt,
    captureMethod: p.captureMethod === 'automatic' ? CaptureMethod.CAPTURE_METHOD_AUTOMATIC : CaptureMethod.CAPTURE_METHOD_MANUAL,
    source: {
      kind:
        p.sourceKind === 'account'
          ? { $case: 'accountId', value: p.sourceAccountId }
          : { $case: 'card', value: { token: '', fingerprint: p.cardFingerprint ?? '', country: p.cardCountry ?? '', type: p.cardType ?? '' } },
    },
    destinationAccountId: p.destinationAccountId,
    fee: p.fee,
    risk: { outcome: RISK_OUTCOME[p.risk.outcome], scorePpm: p.risk.scorePpm, decision: p.risk.decision, reasons: p.risk.reasons, modelVersion: p.risk.modelVersion },
    metadata: p.metadata,
    customerId: p.customerId ?? '',
  };
}

function refundToProto(op: OperationRow, payment: PaymentRow): Refund {
  return {
    id: op.id,
    merchantId: op.merchantId,
    paymentId: op.paymentId,
    amount: op.amount,
    currency: payment.currency,
    status: op.status,
    createdAt: op.createdAt,
    metadata: op.metadata,
  };
}
