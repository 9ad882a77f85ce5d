import { randomUUID } from 'node:crypto';
import type { PoolClient, Queryable } from '../lib/db.js';
import { invariant } from '../lib/errors.js';
import { SETTLEMENT_OUTBOX_SHARD, nextOutboxSequence } from '../ledger/outbox.js';
import { traceparentOf } from '../observability/tracing.js';
import { EventBatch } from '../proto/gen/events/v1/events.js';
import type { Schedule } from './windows.js';

/** Settlement's SQL, in one place (settlement/migrations/0009_settlement.sql). Amounts are minor units. */

export type EntryKind = 'capture' | 'fee' | 'refund';
export type BatchStatus = 'payout_pending' | 'paid' | 'payout_failed';

export interface PayoutAccount {
  name: string;
  iban: string;
  bic: string | null;
}

export interface Profile {
  schedule: Schedule;
  payout: PayoutAccount | null;
}

/** A money movement on a settled account, as an event described it. */
export interface Entry {
  transferId: string;
  kind: EntryKind;
  amount: bigint;
  paymentId: string;
  eventId: string;
  occurredAt: bigint;
  effectiveAt: bigint;
}

export interface ConsumedEvent {
  eventId: string;
  type: string;
  paymentId: string;
  operationId: string;
  accountId: string;
  merchantId: string;
  currency: string;
  amount: bigint;
  fee: bigint;
  feeTransferId: string | null;
  occurredAt: bigint;
  /** Paid by card (money the platform holds), not from a wallet account of the merchant: see settler.ts. */
  cardFunded: boolean;
}

export interface SettledAccount {
  accountId: string;
  merchantId: string;
  currency: string;
  closedThrough: bigint;
  carried: bigint;
}

export interface Batch {
  id: string;
  merchantId: string;
  accountId: string;
  currency: string;
  windowStart: bigint;
  windowEnd: bigint;
  grossCaptured: bigint;
  refunds: bigint;
  fees: bigint;
  lineCount: number;
  net: bigint;
  carriedIn: bigint;
  available: bigint;
  payout: bigint;
  carriedOut: bigint;
  /** Of a positive carriedOut, what was held back for the merchant's debt on its other accounts in the currency. */
  heldForDebt: bigint;
  /**
   * What the ledger did not move of `payout`, the payout decided when the batch was made (the account's balance fell
   * before the payout: a refund meanwhile); carried to the account's next batch. 0 until the payout is made.
   */
  payoutShort: bigint;
  payoutTransferId: string;
  status: BatchStatus;
  failureCode: string | null;
}

/** How an entry moves the account's balance: captures credit it, fees and refunds debit it. */
export function signedAmount(kind: EntryKind, amount: bigint): bigint {
  return kind === 'capture' ? amount : -amount;
}

/** The payout the ledger moved (the merchant's bank is paid this): the payout decided, less what it did not move. */
export function movedPayout(b: Pick<Batch, 'payout' | 'payoutShort'>): bigint {
  return b.payout - b.payoutShort;
}

// --- profiles --------------------------------------------------------------------------------------------

export async function findProfile(db: Queryable, merchantId: string): Promise<Profile | null> {
  const r = await db.query({
    name: 'stl-profile',
    text: 'SELECT kind, time_zone, cutoff_minute, interval_minutes, payout_name, payout_iban, payout_bic FROM settlement_profiles WHERE merchant_id = $1',
    values: [merchantId],
  });
  const row = r.rows[0];
  if (!row) return null;
  return {
    schedule: scheduleFromRow(row),
    payout: row.payout_iban ? { name: row.payout_name, iban: row.payout_iban, bic: row.payout_bic } : null,
  };
}

function scheduleFromRow(row: Record<string, unknown>): Schedule {
  return row.kind === 'interval'
    ? { kind: 'interval', minutes: row.interval_minutes as number }
    : { kind: 'daily', timeZone: row.time_zone as string, cutoffMinute: row.cutoff_minute as number };
}

export async function saveProfile(db: Queryable, merchantId: string, profile: Profile): Promise<void> {
  const s = profile.schedule;
  await db.query(
    `INSERT INTO settlement_profiles (merchant_id, kind, time_zone, cutoff_minute, interval_minutes, payout_name, payout_iban, payout_bic)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (merchant_id) DO UPDATE SET kind = excluded.kind, time_zone = excluded.time_zone, cutoff_minute = excluded.cutoff_minute,
       interval_minutes = excluded.interval_minutes, payout_name = excluded.payout_name, payout_iban = excluded.payout_iban,
       payout_bic = excluded.payout_bic, updated_at = now()`,
    [
      merchantId,
      s.kind,
      s.kind === 'daily' ? s.timeZone : 'UTC',
      s.kind === 'daily' ? s.cutoffMinute : 0,
      s.kind === 'interval' ? s.minutes : null,
      profile.payout?.name ?? null,
      profile.payout?.iban ?? null,
      profile.payout?.bic ?? null,
    ],
  );
}

// --- consuming -------------------------------------------------------------------------------------------

/**
 * The account's state, creating it at `firstWindowStart` when this is its first movement. Read in the event's
 * transaction: a window closing concurrently conflicts with it (SERIALIZABLE), so an entry is either in the
 * batch or effective after it, never lost between the two.
 */
export async function openAccount(tx: PoolClient, accountId: string, merchantId: string, currency: string, firstWindowStart: bigint): Promise<SettledAccount> {
  const r = await tx.query({
    name: 'stl-open-account',
    text: `WITH created AS (
             INSERT INTO settlement_accounts (account_id, merchant_id, currency, closed_through) VALUES ($1, $2, $3, $4)
             ON CONFLICT (account_id) DO NOTHING RETURNING merchant_id, currency, closed_through, carried
           )
           SELECT merchant_id, currency, closed_through, carried FROM created
           UNION ALL
           SELECT merchant_id, currency, closed_through, carried FROM settlement_accounts WHERE account_id = $1 AND NOT EXISTS (SELECT 1 FROM created)`,
    values: [accountId, merchantId, currency, firstWindowStart],
  });
  const row = r.rows[0];
  invariant(row, `settlement account ${accountId} neither created nor found`);
  return { accountId, merchantId: row.merchant_id, currency: row.currency, closedThrough: row.closed_through, carried: row.carried };
}

/** Records a consumed event in the journal and its movements as entries (a movement already known is kept once). */
export type EntryInput = Pick<Entry, 'transferId' | 'kind' | 'amount'>;

export async function recordEvent(tx: PoolClient, event: ConsumedEvent, effectiveAt: bigint, entries: readonly EntryInput[]): Promise<void> {
  await tx.query({
    name: 'stl-record-event',
    text: `WITH journal AS (
             INSERT INTO settlement_events (event_id, type, payment_id, operation_id, account_id, amount, fee, fee_transfer_id, occurred_at, effective_at, card_funded)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $14) ON CONFLICT (event_id) DO NOTHING
           )
           INSERT INTO settlement_entries (transfer_id, account_id, kind, amount, payment_id, event_id, occurred_at, effective_at)
           SELECT t, $5, k, a, $3, $1, $9, $10 FROM unnest($11::uuid[], $12::text[], $13::int8[]) AS e(t, k, a)
           ON CONFLICT (transfer_id) DO NOTHING`,
    values: [
      event.eventId,
      event.type,
      event.paymentId,
      event.operationId,
      event.accountId,
      event.amount,
      event.fee,
      event.feeTransferId,
      event.occurredAt,
      effectiveAt,
      entries.map((e) => e.transferId),
      entries.map((e) => e.kind),
      entries.map((e) => String(e.amount)),
      event.cardFunded,
    ],
  });
}

// --- closing ---------------------------------------------------------------------------------------------

export async function settledAccounts(db: Queryable, merchantId?: string, currency?: string): Promise<(SettledAccount & { profile: Profile | null })[]> {
  const r = await db.query(
    `SELECT a.account_id, a.merchant_id, a.currency, a.closed_through, a.carried,
            p.kind, p.time_zone, p.cutoff_minute, p.interval_minutes
     FROM settlement_accounts a LEFT JOIN settlement_profiles p ON p.merchant_id = a.merchant_id
     WHERE ($1::uuid IS NULL OR a.merchant_id = $1) AND ($2::text IS NULL OR a.currency = $2)
     ORDER BY a.account_id`,
    [merchantId ?? null, currency ?? null],
  );
  return r.rows.map((row) => ({
    accountId: row.account_id,
    merchantId: row.merchant_id,
    currency: row.currency,
    closedThrough: row.closed_through,
    carried: row.carried,
    profile: row.kind ? { schedule: scheduleFromRow(row), payout: null } : null,
  }));
}

export async function lockAccount(tx: PoolClient, accountId: string): Promise<SettledAccount | null> {
  const r = await tx.query('SELECT merchant_id, currency, closed_through, carried FROM settlement_accounts WHERE account_id = $1 FOR UPDATE', [accountId]);
  const row = r.rows[0];
  return row ? { accountId, merchantId: row.merchant_id, currency: row.currency, closedThrough: row.closed_through, carried: row.carried } : null;
}

/** Puts every unbatched entry of the account effective before `cut` into the batch; returns them. */
export async function takeEntries(tx: PoolClient, accountId: string, cut: bigint, batchId: string): Promise<{ kind: EntryKind; amount: bigint }[]> {
  const r = await tx.query(
    `UPDATE settlement_entries SET batch_id = $3 WHERE account_id = $1 AND batch_id IS NULL AND effective_at < $2 RETURNING kind, amount`,
    [accountId, cut, batchId],
  );
  return r.rows.map((row) => ({ kind: row.kind, amount: row.amount }));
}

/**
 * What the merchant owes on its settled accounts in the account's currency other than `account` (0 when, together,
 * they owe it nothing): what they carry (a debt is negative, a shortfall or an amount held back positive) plus
 * their entries not yet in a batch that are effective before `cut`. Positive amounts count: money held back or
 * owed on one account already covers that much of a debt on another (each close holds back only the net debt).
 */
export async function debtElsewhere(tx: PoolClient, account: Pick<SettledAccount, 'accountId' | 'merchantId' | 'currency'>, cut: bigint): Promise<bigint> {
  const r = await tx.query(
    `SELECT (coalesce((SELECT sum(carried) FROM settlement_accounts WHERE merchant_id = $1 AND currency = $2 AND account_id <> $3), 0)
          + coalesce((SELECT sum(CASE WHEN e.kind = 'capture' THEN e.amount ELSE -e.amount END)
                      FROM settlement_entries e JOIN settlement_accounts a ON a.account_id = e.account_id
                      WHERE a.merchant_id = $1 AND a.currency = $2 AND e.account_id <> $3 AND e.batch_id IS NULL AND e.effective_at < $4), 0))::INT8 AS position`,
    [account.merchantId, account.currency, account.accountId, cut],
  );
  const position = r.rows[0].position as bigint;
  return position < 0n ? -position : 0n;
}

export async function advanceAccount(tx: PoolClient, accountId: string, closedThrough: bigint, carried: bigint): Promise<void> {
  const r = await tx.query('UPDATE settlement_accounts SET closed_through = $2, carried = $3 WHERE account_id = $1', [accountId, closedThrough, carried]);
  invariant(r.rowCount === 1, `settlement account ${accountId} vanished`);
}

const BATCH_COLUMNS = `id, merchant_id, account_id, currency, window_start, window_end, gross_captured, refunds, fees, line_count, net,
  carried_in, available, payout, carried_out, held_for_debt, payout_short, payout_transfer_id, status, failure_code`;

export async function insertBatch(tx: PoolClient, b: Batch): Promise<void> {
  await tx.query({
    name: 'stl-insert-batch',
    text: `INSERT INTO settlement_batches (${BATCH_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)`,
    values: [
      b.id,
      b.merchantId,
      b.accountId,
      b.currency,
      b.windowStart,
      b.windowEnd,
      b.grossCaptured,
      b.refunds,
      b.fees,
      b.lineCount,
      b.net,
      b.carriedIn,
      b.available,
      b.payout,
      b.carriedOut,
      b.heldForDebt,
      b.payoutShort,
      b.payoutTransferId,
      b.status,
      b.failureCode,
    ],
  });
}

function batchFromRow(r: Record<string, unknown>): Batch {
  return {
    id: r.id as string,
    merchantId: r.merchant_id as string,
    accountId: r.account_id as string,
    currency: r.currency as string,
    windowStart: r.window_start as bigint,
    windowEnd: r.window_end as bigint,
    grossCaptured: r.gross_captured as bigint,
    refunds: r.refunds as bigint,
    fees: r.fees as bigint,
    lineCount: r.line_count as number,
    net: r.net as bigint,
    carriedIn: r.carried_in as bigint,
    available: r.available as bigint,
    payout: r.payout as bigint,
    carriedOut: r.carried_out as bigint,
    heldForDebt: r.held_for_debt as bigint,
    payoutShort: r.payout_short as bigint,
    payoutTransferId: r.payout_transfer_id as string,
    status: r.status as BatchStatus,
    failureCode: (r.failure_code as string | null) ?? null,
  };
}

export async function findBatch(db: Queryable, id: string): Promise<Batch | null> {
  const r = await db.query({ name: 'stl-find-batch', text: `SELECT ${BATCH_COLUMNS} FROM settlement_batches WHERE id = $1`, values: [id] });
  return r.rows[0] ? batchFromRow(r.rows[0]) : null;
}

/**
 * Where the batches of the account and currency before `batch` end (the latest window_end at or before its
 * window_start), or null for its first batch. Empty windows the closer skipped lie between that and the
 * batch's window_start.
 */
export async function previousBatchEnd(db: Queryable, batch: Pick<Batch, 'accountId' | 'currency' | 'windowStart'>): Promise<bigint | null> {
  const r = await db.query(`SELECT max(window_end) AS previous_end FROM settlement_batches WHERE account_id = $1 AND currency = $2 AND window_end <= $3`, [
    batch.accountId,
    batch.currency,
    batch.windowStart,
  ]);
  return (r.rows[0]?.previous_end as bigint | null) ?? null;
}

/**
 * What the account should have carried into `batch`: what its previous batch (of the account and currency)
 * carried out, plus the payouts the ledger refused or moved short of since that batch was made (their amount, or
 * the part not moved, is carried to the account's next batch: markPayoutFailed and markPaid, whose updated_at is
 * when the ledger answered), 0 before its first batch. Both write the account row (SERIALIZABLE), so a refusal
 * committed before a batch is in it.
 */
export async function carriedInto(db: Queryable, batch: Pick<Batch, 'id' | 'accountId' | 'currency' | 'windowStart'>): Promise<{ previousId: string | null; carried: bigint }> {
  const r = await db.query(
    `WITH previous AS (
       SELECT id, carried_out, created_at FROM settlement_batches WHERE account_id = $2 AND currency = $3 AND window_end <= $4 ORDER BY window_end DESC LIMIT 1
     )
     SELECT (SELECT id FROM previous) AS previous_id,
            coalesce((SELECT carried_out FROM previous), 0) + coalesce((
              SELECT sum(CASE WHEN f.status = 'payout_failed' THEN f.payout ELSE f.payout_short END) FROM settlement_batches f, settlement_batches b
              WHERE b.id = $1 AND f.account_id = $2 AND (f.status = 'payout_failed' OR f.payout_short > 0) AND f.updated_at < b.created_at
                AND ((SELECT created_at FROM previous) IS NULL OR f.updated_at >= (SELECT created_at FROM previous))
            ), 0)::INT8 AS carried`,
    [batch.id, batch.accountId, batch.currency, batch.windowStart],
  );
  return { previousId: (r.rows[0]?.previous_id as string | null) ?? null, carried: r.rows[0]?.carried as bigint };
}

/**
 * A page of a merchant's batches, newest first: those after `anchor` (exclusive), or with `endingBefore` the ones
 * just before it (the previous page), read from the anchor upwards and presented newest first.
 */
export async function listBatches(db: Queryable, merchantId: string, limit: number, anchor: Batch | null, endingBefore = false): Promise<{ batches: Batch[]; hasMore: boolean }> {
  const [compare, order] = endingBefore ? ['>', 'ASC'] : ['<', 'DESC'];
  const r = await db.query(
    `SELECT ${BATCH_COLUMNS} FROM settlement_batches
     WHERE merchant_id = $1 AND ($2::int8 IS NULL OR (window_end, id) ${compare} ($2, $3::uuid))
     ORDER BY window_end ${order}, id ${order} LIMIT $4`,
    [merchantId, anchor?.windowEnd ?? null, anchor?.id ?? null, limit + 1],
  );
  const batches = r.rows.slice(0, limit).map(batchFromRow);
  return { batches: endingBefore ? batches.reverse() : batches, hasMore: r.rows.length > limit };
}

/** Batches whose payout was not confirmed for `olderThanMs` (the closer stopped between batch and payout). */
export async function pendingPayouts(db: Queryable, olderThanMs: number): Promise<Batch[]> {
  const r = await db.query(
    `SELECT ${BATCH_COLUMNS} FROM settlement_batches WHERE status = 'payout_pending' AND updated_at < now() - ($1::INT8 * INTERVAL '1 millisecond') ORDER BY updated_at LIMIT 100`,
    [olderThanMs],
  );
  return r.rows.map(batchFromRow);
}

/** The account's batches whose payout is not confirmed: their payout transfers may or may not be in the ledger. */
export async function outstandingPayouts(tx: PoolClient, accountId: string): Promise<{ payout: bigint; payoutTransferId: string }[]> {
  const r = await tx.query(`SELECT payout, payout_transfer_id FROM settlement_batches WHERE account_id = $1 AND status = 'payout_pending'`, [accountId]);
  return r.rows.map((row) => ({ payout: row.payout as bigint, payoutTransferId: row.payout_transfer_id as string }));
}

/** A payout not made, or the part of it not moved, is owed again: the account's next batch carries it in (carriedInto). */
async function carryToNextBatch(tx: PoolClient, accountId: string, amount: bigint): Promise<void> {
  await tx.query('UPDATE settlement_accounts SET carried = carried + $2 WHERE account_id = $1', [accountId, amount]);
}

/**
 * The ledger moved `moved` of the batch's payout: the batch is paid. Less than decided (the account's balance fell
 * before the payout), the part not moved is the batch's payout_short, carried to the account's next batch as a
 * refused payout is (carriedInto).
 */
export async function markPaid(tx: PoolClient, batch: Batch, moved: bigint): Promise<void> {
  invariant(moved > 0n && moved <= batch.payout, `batch ${batch.id}: the ledger moved ${moved} of a payout of ${batch.payout}`);
  const short = batch.payout - moved;
  const r = await tx.query({
    name: 'stl-mark-paid',
    text: `UPDATE settlement_batches SET status = 'paid', payout_short = $2, updated_at = now() WHERE id = $1 AND status = 'payout_pending'`,
    values: [batch.id, short],
  });
  if (r.rowCount === 1 && short > 0n) await carryToNextBatch(tx, batch.accountId, short);
}

/** The ledger refused the payout: the batch says why, and its amount is carried to the account's next batch. */
export async function markPayoutFailed(tx: PoolClient, batch: Batch, failureCode: string): Promise<void> {
  const r = await tx.query(`UPDATE settlement_batches SET status = 'payout_failed', failure_code = $2, updated_at = now() WHERE id = $1 AND status = 'payout_pending'`, [batch.id, failureCode]);
  if (r.rowCount === 1) await carryToNextBatch(tx, batch.accountId, batch.payout);
}

/** The batch's lines in a stable order: when they happened, then by transfer id. */
export async function batchEntries(db: Queryable, batchId: string): Promise<Entry[]> {
  const r = await db.query(
    `SELECT transfer_id, kind, amount, payment_id, event_id, occurred_at, effective_at FROM settlement_entries WHERE batch_id = $1 ORDER BY occurred_at, transfer_id`,
    [batchId],
  );
  return r.rows.map((row) => ({
    transferId: row.transfer_id,
    kind: row.kind,
    amount: row.amount,
    paymentId: row.payment_id,
    eventId: row.event_id,
    occurredAt: row.occurred_at,
    effectiveAt: row.effective_at,
  }));
}

// --- events ----------------------------------------------------------------------------------------------

/** settlement.batch.created into the outbox, in the batch's transaction (relayed by the settlement process). */
export async function writeBatchCreated(tx: PoolClient, b: Batch, occurredAt: bigint): Promise<void> {
  const batchId = randomUUID();
  const payload = EventBatch.encode({
    batchId,
    shard: 0,
    events: [
      {
        eventId: randomUUID(),
        type: 'settlement.batch.created',
        aggregateId: b.accountId,
        sequence: 0n,
        occurredAt,
        traceparent: traceparentOf(),
        payload: {
          $case: 'settlementBatch',
          value: {
            batchId: b.id,
            merchantId: b.merchantId,
            accountId: b.accountId,
            currency: b.currency,
            windowStart: b.windowStart,
            windowEnd: b.windowEnd,
            grossCaptured: b.grossCaptured,
            refunds: b.refunds,
            fees: b.fees,
            net: b.net,
            payout: b.payout,
            carriedOut: b.carriedOut,
            payoutTransferId: b.payoutTransferId,
            lineCount: b.lineCount,
          },
        },
      },
    ],
  }).finish();
  // Sequence: time-ordered, not dense (no shared counter row), as for payment events.
  await tx.query({
    name: 'stl-outbox',
    text: 'INSERT INTO outbox (shard, sequence, batch_id, part, event_count, payload, traceparent) VALUES ($1, $2, $3, 0, 1, $4, $5)',
    values: [SETTLEMENT_OUTBOX_SHARD, nextOutboxSequence(), batchId, Buffer.from(payload), traceparentOf()],
  });
}

// --- reconciliation --------------------------------------------------------------------------------------

export interface JournalEvent {
  eventId: string;
  type: string;
  paymentId: string;
  operationId: string;
  amount: bigint;
  fee: bigint;
  feeTransferId: string | null;
  cardFunded: boolean;
}

/** The events consumed for the account that were effective in [start, end). */
export async function journalEvents(db: Queryable, accountId: string, start: bigint, end: bigint): Promise<JournalEvent[]> {
  const r = await db.query(
    `SELECT event_id, type, payment_id, operation_id, amount, fee, fee_transfer_id, card_funded FROM settlement_events
     WHERE account_id = $1 AND effective_at >= $2 AND effective_at < $3 ORDER BY occurred_at, event_id`,
    [accountId, start, end],
  );
  return r.rows.map((row) => ({
    eventId: row.event_id,
    type: row.type,
    paymentId: row.payment_id,
    operationId: row.operation_id,
    amount: row.amount,
    fee: row.fee,
    feeTransferId: row.fee_transfer_id,
    cardFunded: row.card_funded,
  }));
}

/** Which of these transfers are the captures or refunds of wallet-paid payments settlement consumed (not paid out). */
export async function walletMovements(db: Queryable, transferIds: readonly string[]): Promise<Set<string>> {
  if (transferIds.length === 0) return new Set();
  const r = await db.query('SELECT operation_id FROM settlement_events WHERE operation_id = ANY($1::uuid[]) AND NOT card_funded', [transferIds]);
  return new Set(r.rows.map((row) => row.operation_id as string));
}

/** Which of these transfers have an entry (in any batch, or still open), in which batch, and from which event. */
export async function entriesOf(db: Queryable, transferIds: readonly string[]): Promise<Map<string, { batchId: string | null; amount: bigint; kind: EntryKind; eventId: string }>> {
  if (transferIds.length === 0) return new Map();
  const r = await db.query(`SELECT transfer_id, batch_id, amount, kind, event_id FROM settlement_entries WHERE transfer_id = ANY($1::uuid[])`, [transferIds]);
  return new Map(r.rows.map((row) => [row.transfer_id as string, { batchId: row.batch_id, amount: row.amount, kind: row.kind, eventId: row.event_id }]));
}

/** Payout transfer ids of every batch of the account (a payout in the ledger that no batch made is unexpected). */
export async function payoutTransferIds(db: Queryable, accountId: string): Promise<Set<string>> {
  const r = await db.query(`SELECT payout_transfer_id FROM settlement_batches WHERE account_id = $1 AND payout > 0`, [accountId]);
  return new Set(r.rows.map((row) => row.payout_transfer_id as string));
}
