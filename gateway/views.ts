import { currencyOfLedger } from '../lib/currency.js';
import { InternalError } from '../lib/errors.js';
import type { Account as LedgerAccount, Transfer as LedgerTransfer } from '../proto/gen/ledger/v1/ledger.js';
import { CaptureMethod, PaymentStatus, RiskOutcome, type Payment, type Refund } from '../proto/gen/payments/v1/payments.js';
import { BatchStatus, type SettlementBatch } from '../proto/gen/settlement/v1/settlement.js';

/** gRPC objects as the REST API shows them (snake_case, integers of minor units, RFC 3339 times). */

/** A bigint as a JSON number; an amount beyond 2^53-1 (none is accepted as input) cannot be written exactly and is refused. */
export function jsonInt(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER) || value < -BigInt(Number.MAX_SAFE_INTEGER)) throw new InternalError(`amount ${value} beyond what JSON carries exactly`);
  return Number(value);
}

/** Nanoseconds since the epoch as RFC 3339 (milliseconds precision). */
export function rfc3339(nanos: bigint): string {
  return new Date(Number(nanos / 1_000_000n)).toISOString();
}

export function currencyCode(ledger: number): string {
  const currency = currencyOfLedger(ledger);
  if (!currency) throw new InternalError(`ledger ${ledger} is not an ISO 4217 currency`);
  return currency.code;
}

export function accountView(a: LedgerAccount) {
  const flags = [
    ...(a.flags?.debitsMustNotExceedCredits ? ['debits_must_not_exceed_credits'] : []),
    ...(a.flags?.creditsMustNotExceedDebits ? ['credits_must_not_exceed_debits'] : []),
    ...(a.flags?.history ? ['history'] : []),
    ...(a.flags?.closed ? ['closed'] : []),
  ];
  return {
    id: a.id,
    object: 'account' as const,
    currency: currencyCode(a.ledger),
    code: a.code,
    flags,
    balances: balancesView(a),
    metadata: a.metadata,
    created: rfc3339(a.timestamp),
  };
}

/** Balances stay bigints: the response serializer writes them as exact JSON integers, beyond 2^53-1 too. */
export function balancesView(b: { debitsPending: bigint; debitsPosted: bigint; creditsPending: bigint; creditsPosted: bigint }) {
  return { debits_pending: b.debitsPending, debits_posted: b.debitsPosted, credits_pending: b.creditsPending, credits_posted: b.creditsPosted };
}

const PENDING_STATUS = { 1: 'pending', 2: 'posted', 3: 'voided', 4: 'expired' } as const;

export function transferView(t: LedgerTransfer) {
  const status = t.flags?.pending ? (PENDING_STATUS[t.pendingState as 1 | 2 | 3 | 4] ?? 'pending') : t.flags?.voidPendingTransfer ? 'voided' : 'posted';
  return {
    id: t.id,
    object: 'transfer' as const,
    debit_account_id: t.debitAccountId,
    credit_account_id: t.creditAccountId,
    amount: jsonInt(t.amount),
    currency: currencyCode(t.ledger),
    pending_id: t.pendingId || null,
    status,
    timeout_seconds: t.timeout,
    metadata: t.metadata,
    created: rfc3339(t.timestamp),
  };
}

type PaymentStatusName = 'requires_capture' | 'succeeded' | 'canceled' | 'declined' | 'partially_refunded' | 'refunded' | 'processing';
const PAYMENT_STATUS: Record<PaymentStatus, PaymentStatusName> = {
  [PaymentStatus.PAYMENT_STATUS_UNSPECIFIED]: 'processing',
  [PaymentStatus.PAYMENT_STATUS_PROCESSING]: 'processing',
  [PaymentStatus.PAYMENT_STATUS_REQUIRES_CAPTURE]: 'requires_capture',
  [PaymentStatus.PAYMENT_STATUS_SUCCEEDED]: 'succeeded',
  [PaymentStatus.PAYMENT_STATUS_CANCELED]: 'canceled',
  [PaymentStatus.PAYMENT_STATUS_DECLINED]: 'declined',
  [PaymentStatus.PAYMENT_STATUS_PARTIALLY_REFUNDED]: 'partially_refunded',
  [PaymentStatus.PAYMENT_STATUS_REFUNDED]: 'refunded',
  [PaymentStatus.UNRECOGNIZED]: 'processing',
};

const RISK_OUTCOME: Record<RiskOutcome, string> = {
  [RiskOutcome.RISK_OUTCOME_UNSPECIFIED]: 'scored',
  [RiskOutcome.RISK_OUTCOME_SCORED]: 'scored',
  [RiskOutcome.RISK_OUTCOME_FAIL_OPEN]: 'fail_open',
  [RiskOutcome.RISK_OUTCOME_FAIL_CLOSED]: 'fail_closed',
  [RiskOutcome.UNRECOGNIZED]: 'scored',
};

export function paymentView(p: Payment) {
  const source = p.source?.kind;
  return {
    id: p.id,
    object: 'payment' as const,
    amount: jsonInt(p.amount),
    amount_captured: jsonInt(p.amountCaptured),
    amount_refunded: jsonInt(p.amountRefunded),
    currency: p.currency,
    status: PAYMENT_STATUS[p.status],
    capture_method: p.captureMethod === CaptureMethod.CAPTURE_METHOD_AUTOMATIC ? ('automatic' as const) : ('manual' as const),
    source:
      source?.$case === 'card'
        ? { type: 'card' as const, card: { fingerprint: source.value.fingerprint, country: source.value.country, type: source.value.type || null } }
        : { type: 'account' as const, account: source?.$case === 'accountId' ? source.value : '' },
    destination_account_id: p.destinationAccountId,
    fee: jsonInt(p.fee),
    decline_code: p.declineCode || null,
    risk: {
      outcome: RISK_OUTCOME[p.risk?.outcome ?? RiskOutcome.RISK_OUTCOME_UNSPECIFIED],
      // Probability-like, 0..1, from parts per million.
      score: (p.risk?.scorePpm ?? 0) / 1_000_000,
      decision: p.risk?.decision ?? '',
      reasons: p.risk?.reasons ?? [],
      model_version: p.risk?.modelVersion ?? '',
    },
    metadata: p.metadata,
    customer: p.customerId || null,
    created: rfc3339(p.createdAt),
  };
}

export function refundView(r: Refund) {
  return {
    id: r.id,
    object: 'refund' as const,
    payment: r.paymentId,
    amount: jsonInt(r.amount),
    currency: r.currency,
    status: r.status,
    metadata: r.metadata,
    created: rfc3339(r.createdAt),
  };
}

const SETTLEMENT_STATUS: Partial<Record<BatchStatus, 'payout_pending' | 'paid' | 'payout_failed'>> = {
  [BatchStatus.BATCH_STATUS_PAYOUT_PENDING]: 'payout_pending',
  [BatchStatus.BATCH_STATUS_PAID]: 'paid',
  [BatchStatus.BATCH_STATUS_PAYOUT_FAILED]: 'payout_failed',
};

export function settlementView(b: SettlementBatch) {
  const status = SETTLEMENT_STATUS[b.status];
  if (!status) throw new InternalError(`settlement ${b.id} has no status`);
  return {
    id: b.id,
    object: 'settlement' as const,
    merchant: b.merchantId,
    account: b.accountId,
    currency: b.currency,
    window_start: rfc3339(b.windowStart),
    window_end: rfc3339(b.windowEnd),
    gross_captured: jsonInt(b.grossCaptured),
    refunds: jsonInt(b.refunds),
    fees: jsonInt(b.fees),
    net: jsonInt(b.net),
    carried_in: jsonInt(b.carriedIn),
    available: jsonInt(b.available),
    payout: jsonInt(b.payout),
    carried_out: jsonInt(b.carriedOut),
    shortfall: jsonInt(b.shortfall),
    held_for_debt: jsonInt(b.heldForDebt),
    payout_short: jsonInt(b.payoutShort),
    payout_transfer: b.payoutTransferId,
    line_count: b.lineCount,
    status,
    failure_code: b.failureCode || null,
  };
}
