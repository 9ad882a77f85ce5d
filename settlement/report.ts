import { stringify } from 'csv-stringify/sync';
import { formatMajor, currencyOf } from '../lib/currency.js';
import { movedPayout, signedAmount, type Batch, type Entry } from './store.js';

/**
 * The batch report (CSV, RFC 4180, one header row). One `line` record per movement in the batch (a capture,
 * its fee, a refund) and then `total` records. `amount` is in minor units and signed as it moves the merchant's
 * balance (captures positive, fees and refunds negative); `amount_major` is the same in major units, for people.
 * Times are RFC 3339 UTC with nanoseconds. A payout the ledger refused (payout_failed) is reported as 0 and its
 * amount as carried out, as the account carried it.
 */
export const REPORT_COLUMNS = ['record', 'batch_id', 'kind', 'payment_id', 'transfer_id', 'currency', 'amount', 'amount_major', 'occurred_at'] as const;

export function batchReportCsv(batch: Batch, lines: readonly Entry[]): string {
  const currency = currencyOf(batch.currency);
  const row = (record: string, kind: string, paymentId: string, transferId: string, amount: bigint, occurredAt: string) => [
    record,
    batch.id,
    kind,
    paymentId,
    transferId,
    batch.currency,
    amount.toString(),
    formatMajor(amount, currency),
    occurredAt,
  ];
  const records = lines.map((l) => row('line', l.kind, l.paymentId, l.transferId, signedAmount(l.kind, l.amount), rfc3339Nanos(l.occurredAt)));
  // A payout the ledger refused was not paid, and one it moved short of was paid in part: what was not paid was
  // carried to the next batch (whose carried_in it is).
  const paid = batch.status === 'payout_failed' ? 0n : movedPayout(batch);
  const totals: [string, bigint][] = [
    ['gross_captured', batch.grossCaptured],
    ['refunds', -batch.refunds],
    ['fees', -batch.fees],
    ['net', batch.net],
    ['carried_in', batch.carriedIn],
    ['payout', -paid],
    ['carried_out', batch.carriedOut + batch.payout - paid],
    // Of carried_out, what was held back for the merchant's debt on its other accounts (not a lack of balance).
    ['held_for_debt', batch.heldForDebt],
  ];
  for (const [name, amount] of totals) records.push(row('total', name, '', name === 'payout' && paid > 0n ? batch.payoutTransferId : '', amount, rfc3339Nanos(batch.windowEnd)));
  // RFC 4180: records end with CRLF (csv-stringify's default is a bare LF).
  return stringify([[...REPORT_COLUMNS], ...records], { record_delimiter: 'windows' });
}

/** 1764028800123456789n -> 2025-11-25T00:00:00.123456789Z */
export function rfc3339Nanos(ns: bigint): string {
  const seconds = ns / 1_000_000_000n;
  const fraction = (ns % 1_000_000_000n).toString().padStart(9, '0');
  return `${new Date(Number(seconds) * 1000).toISOString().slice(0, 19)}.${fraction}Z`;
}
