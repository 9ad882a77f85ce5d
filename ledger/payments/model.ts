import { derivedId } from '../../lib/derived-id.js';
import type { Metadata } from '../model.js';

/** A payment and its steps as stored (ledger/migrations/0006_payments.sql). Amounts are minor units. */

export type PaymentStatus = 'processing' | 'requires_capture' | 'succeeded' | 'canceled' | 'declined' | 'partially_refunded' | 'refunded';
export type CaptureMethod = 'automatic' | 'manual';
export type OperationKind = 'authorize' | 'capture' | 'cancel' | 'refund';
export type OperationStatus = 'processing' | 'succeeded' | 'failed';
export type RiskOutcome = 'scored' | 'fail_open' | 'fail_closed';

export interface RiskAssessment {
  outcome: RiskOutcome;
  scorePpm: number;
  /** approve, review or decline. */
  decision: string;
  reasons: string[];
  modelVersion: string;
}

export interface PaymentRow {
  id: string;
  merchantId: string;
  idempotencyKey: string | null;
  amount: bigint;
  currency: string;
  captureMethod: CaptureMethod;
  sourceKind: 'account' | 'card';
  sourceAccountId: string;
  cardFingerprint: string | null;
  cardCountry: string | null;
  cardType: string | null;
  merchantCategory: string | null;
  destinationAccountId: string;
  customerId: string | null;
  deviceId: string | null;
  ipCountry: string | null;
  status: PaymentStatus;
  amountCaptured: bigint;
  amountRefunded: bigint;
  feeBps: number;
  fee: bigint;
  declineCode: string | null;
  declineReason: string | null;
  risk: RiskAssessment;
  metadata: Metadata;
  /** Events emitted so far. */
  version: bigint;
  /** Nanoseconds since the Unix epoch. */
  createdAt: bigint;
}

export interface OperationRow {
  id: string;
  paymentId: string;
  merchantId: string;
  kind: OperationKind;
  amount: bigint;
  fee: bigint;
  status: OperationStatus;
  failureCode: string | null;
  idempotencyKey: string | null;
  metadata: Metadata;
  createdAt: bigint;
}

/**
 * Ledger account codes of the accounts payments and settlement create (merchant-created accounts use their own
 * codes).
 */
export const AccountCode = { merchantBalance: 2, cardClearing: 3, platformRevenue: 4, payoutClearing: 5 } as const;
/** Ledger transfer codes of the transfers payments and settlement make. */
export const TransferCode = { payment: 10, fee: 11, refund: 12, payout: 13 } as const;

export type PlatformAccount = 'card_clearing' | 'fee_revenue' | 'payout_clearing';

/** The platform's own account of a purpose in a currency: one per currency, the same id everywhere. */
export function platformAccountId(purpose: PlatformAccount, currency: string): string {
  return derivedId('platform', `${purpose}:${currency}`);
}

/** A merchant's balance account in a currency, where its payments are credited unless they name another. */
export function merchantBalanceAccountId(merchantId: string, currency: string): string {
  return derivedId(`balance:${merchantId}`, currency);
}

/** The id of the platform fee transfer of a step (a capture): derived, so a retried step never takes it twice. */
export function feeTransferId(operationId: string): string {
  return derivedId('transfer', `${operationId}:fee`);
}

/**
 * The platform fee of a captured amount: basis points, rounded up (never more than the amount: fee_bps is at most
 * 10,000). Rounded down, every amount below 10,000 / fee_bps (40 at 250 bps) paid no fee at all: a merchant that
 * splits its charges that small pays none.
 */
export function feeOf(amount: bigint, feeBps: number): bigint {
  return (amount * BigInt(feeBps) + 9_999n) / 10_000n;
}

/** Status after refunds: refunded once everything captured went back. */
export function statusAfterRefund(amountCaptured: bigint, amountRefunded: bigint): PaymentStatus {
  return amountRefunded === amountCaptured ? 'refunded' : 'partially_refunded';
}

export function nowNanos(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}
