import { randomUUID } from 'node:crypto';
import { statement, type Pool, type PoolClient, type Queryable } from '../../lib/db.js';
import { ValidationError, invariant } from '../../lib/errors.js';
import { EventBatch } from '../../proto/gen/events/v1/events.js';
import { PAYMENT_OUTBOX_SHARD_BASE, nextOutboxSequence } from '../outbox.js';
import { shardOf } from '../router.js';
import { traceparentOf } from '../../observability/tracing.js';
import { feeTransferId, type OperationRow, type OperationStatus, type PaymentRow } from './model.js';

/** The payments' SQL, in one place: merchants and account ownership, payments, operations, payment events. */

export interface Merchant {
  id: string;
  feeBps: number;
  category: string;
}

export interface AccountOwner {
  merchantId: string;
  currency: string;
  purpose: 'wallet' | 'balance' | 'custom';
}

export async function accountOwner(db: Queryable, accountId: string): Promise<AccountOwner | null> {
  const r = await db.query({ name: 'pay-account-owner', text: 'SELECT merchant_id, currency, purpose FROM merchant_accounts WHERE account_id = $1', values: [accountId] });
  const row = r.rows[0];
  return row ? { merchantId: row.merchant_id, currency: row.currency, purpose: row.purpose } : null;
}

/**
 * Records that the merchant owns its (derived) balance account of a currency; repeating it changes nothing. The
 * id is derived from the merchant's: any other owner means the id was claimed by someone else, and crediting the
 * merchant's payments to it would pay them, so that is an invariant break, not a state to continue from.
 */
export async function recordBalanceAccount(db: Queryable, merchantId: string, accountId: string, currency: string): Promise<void> {
  await db.query({
    name: 'pay-record-balance-account',
    text: `INSERT INTO merchant_accounts (account_id, merchant_id, currency, purpose) VALUES ($1, $2, $3, 'balance') ON CONFLICT (account_id) DO NOTHING`,
    values: [accountId, merchantId, currency],
  });
  const owner = await accountOwner(db, accountId);
  invariant(owner?.merchantId === merchantId && owner.purpose === 'balance' && owner.currency === currency, `balance account ${accountId} of merchant ${merchantId} is recorded as ${JSON.stringify(owner)}`);
}

const PAYMENT_COLUMNS = `id, merchant_id, idempotency_key, amount, currency, capture_method, source_kind, source_account_id, card_fingerprint,
  card_country, destination_account_id, customer_id, device_id, ip_country, status, amount_captured, amount_refunded, fee_bps, fee,
  decline_code, decline_reason, risk_outcome, risk_score_ppm, risk_decision, risk_reasons, risk_model_version, metadata, version, created_at,
  card_type, merchant_category`;

function paymentFromRow(r: Record<string, unknown>): PaymentRow {
  return {
    id: r['id'] as string,
    merchantId: r['merchant_id'] as string,
    idempotencyKey: r['idempotency_key'] as string | null,
    amount: r['amount'] as bigint,
    currency: r['currency'] as string,
    captureMethod: r['capture_method'] as PaymentRow['captureMethod'],
    sourceKind: r['source_kind'] as PaymentRow['sourceKind'],
    sourceAccountId: r['source_account_id'] as string,
    cardFingerprint: r['card_fingerprint'] as string | null,
    cardCountry: r['card_country'] as string | null,
    cardType: r['card_type'] as string | null,
    merchantCategory: r['merchant_category'] as string | null,
    destinationAccountId: r['destination_account_id'] as string,
    customerId: r['customer_id'] as string | null,
    deviceId: r['device_id'] as string | null,
    ipCountry: r['ip_country'] as string | null,
    status: r['status'] as PaymentRow['status'],
    amountCaptured: r['amount_captured'] as bigint,
    amountRefunded: r['amount_refunded'] as bigint,
    feeBps: r['fee_bps'] as number,
    fee: r['fee'] as bigint,
    declineCode: r['decline_code'] as string | null,
    declineReason: r['decline_reason'] as string | null,
    risk: {
      outcome: r['risk_outcome'] as PaymentRow['risk']['outcome'],
      scorePpm: r['risk_score_ppm'] as number,
      decision: r['risk_decision'] as string,
      reasons: r['risk_reasons'] as string[],
      modelVersion: r['risk_model_version'] as string,
    },
    metadata: r['metadata'] as Record<string, string>,
    version: r['version'] as bigint,
    createdAt: r['created_at'] as bigint,
  };
}

/**
 * For each (merchant, payment id) asked: the merchant and, if it exists and is this merchant's, the payment.
 * All in one round trip (concurrent payment creations ask together), answers in the order asked.
 */
export async function loadMerchantsWithPayments(
  db: Queryable,
  asked: readonly { merchantId: string; paymentId: string }[],
): Promise<{ merchant: Merchant | null; payment: PaymentRow | null }[]> {
  const r = await db.query({
    name: 'pay-merchants-payments',
    text: `SELECT v.ord AS asked_index, m.id AS merchant_key, m.fee_bps AS merchant_fee_bps, m.category AS merchant_category_now, p.*
           FROM unnest($1::uuid[], $2::uuid[]) WITH ORDINALITY AS v(merchant_id, payment_id, ord)
           JOIN merchants m ON m.id = v.merchant_id
           LEFT JOIN payments p ON p.id = v.payment_id AND p.merchant_id = m.id`,
    values: [asked.map((a) => a.merchantId), asked.map((a) => a.paymentId)],
  });
  const answers: { merchant: Merchant | null; payment: PaymentRow | null }[] = asked.map(() => ({ merchant: null, payment: null }));
  for (const row of r.rows) {
    answers[Number(row.asked_index) - 1] = {
      merchant: { id: row.merchant_key, feeBps: row.merchant_fee_bps, category: row.merchant_category_now },
      payment: row.id ? paymentFromRow(row) : null,
    };
  }
  return answers;
}

/** The payment if it belongs to `merchantId` (another merchant's payment is "not there"). */
export async function findPayment(db: Queryable, merchantId: string, paymentId: string): Promise<PaymentRow | null> {
  const r = await db.query({ name: 'pay-find', text: `SELECT ${PAYMENT_COLUMNS} FROM payments WHERE id = $1 AND merchant_id = $2`, values: [paymentId, merchantId] });
  return r.rows[0] ? paymentFromRow(r.rows[0]) : null;
}

function paymentValues(p: PaymentRow): unknown[] {
  return [
    p.id, p.merchantId, p.idempotencyKey, p.amount, p.currency, p.captureMethod, p.sourceKind, p.sourceAccountId, p.cardFingerprint,
    p.cardCountry, p.destinationAccountId, p.customerId, p.deviceId, p.ipCountry, p.status, p.amountCaptured, p.amountRefunded, p.feeBps, p.fee,
    p.declineCode, p.declineReason, p.risk.outcome, p.risk.scorePpm, p.risk.decision, JSON.stringify(p.risk.reasons), p.risk.modelVersion,
    JSON.stringify(p.metadata), p.version, p.createdAt, p.cardType, p.merchantCategory,
  ];
}

function operationValues(op: OperationRow): unknown[] {
  return [op.id, op.paymentId, op.merchantId, op.kind, op.amount, op.fee, op.status, op.failureCode, op.idempotencyKey, JSON.stringify(op.metadata), op.createdAt];
}

/** Column types of PAYMENT_COLUMNS and OPERATION_COLUMNS, in order, for multi-row `unnest` inserts. */
const PAYMENT_TYPES = ['uuid', 'uuid', 'text', 'int8', 'text', 'text', 'text', 'uuid', 'text', 'text', 'uuid', 'text', 'text', 'text', 'text', 'int8', 'int8', 'int4', 'int8', 'text', 'text', 'text', 'int4', 'text', 'jsonb', 'text', 'jsonb', 'int8', 'int8', 'text', 'text'];
const OPERATION_TYPES = ['uuid', 'uuid', 'uuid', 'text', 'int8', 'int8', 'text', 'text', 'text', 'jsonb', 'int8'];

/** One array parameter per column; jsonb travels as text (pg's array serialization quotes every element). */
function columnArrays(rows: readonly unknown[][], types: readonly string[]): unknown[][] {
  return types.map((_, j) => rows.map((row) => (row[j] === null || row[j] === undefined ? null : typeof row[j] === 'bigint' ? String(row[j]) : row[j])));
}

const unnestOf = (types: readonly string[], offset: number) => types.map((t, j) => `$${offset + j + 1}::${t === 'jsonb' ? 'text' : t}[]`).join(', ');
const selectList = (columns: string, types: readonly string[], alias: string) =>
  columns
    .split(',')
    .map((c, j) => `${alias}.${c.trim()}${types[j] === 'jsonb' ? '::jsonb' : ''}`)
    .join(', ');

/**
 * Inserts many new payments, each with its first step, in one statement (group commit of concurrent payment
 * creations); per payment, false when its id existed already (then nothing of it is written).
 */
export async function insertPaymentsWithOperations(pool: Pool, all: readonly { payment: PaymentRow; op: OperationRow }[]): Promise<boolean[]> {
  // The same payment twice in one batch (one key, two concurrent calls): only the first is sent.
  const seen = new Set<string>();
  const items = all.filter((i) => !seen.has(i.payment.id) && seen.add(i.payment.id));
  const r = await statement(pool, {
    name: `pay-insert-many`,
    text: `WITH p AS (
             INSERT INTO payments (${PAYMENT_COLUMNS})
             SELECT ${selectList(PAYMENT_COLUMNS, PAYMENT_TYPES, 't')} FROM unnest(${unnestOf(PAYMENT_TYPES, 0)}) AS t(${PAYMENT_COLUMNS})
             ON CONFLICT DO NOTHING RETURNING id)
           INSERT INTO payment_operations (${OPERATION_COLUMNS})
           SELECT ${selectList(OPERATION_COLUMNS, OPERATION_TYPES, 'o')} FROM unnest(${unnestOf(OPERATION_TYPES, PAYMENT_TYPES.length)}) AS o(${OPERATION_COLUMNS})
           JOIN p ON p.id = o.payment_id
           RETURNING payment_id`,
    values: [...columnArrays(items.map((i) => paymentValues(i.payment)), PAYMENT_TYPES), ...columnArrays(items.map((i) => operationValues(i.op)), OPERATION_TYPES)],
  });
  const inserted = new Set(r.rows.map((row) => row.payment_id as string));
  const sent = new Set(items.map((i) => i.op));
  return all.map((i) => sent.has(i.op) && inserted.has(i.payment.id));
}

/** Inserts a new payment; false when its id exists already (a repeated idempotency key). */
export async function insertPayment(db: Queryable, p: PaymentRow): Promise<boolean> {
  const r = await db.query({
    name: 'pay-insert',
    text: `INSERT INTO payments (${PAYMENT_COLUMNS})
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31)
           ON CONFLICT DO NOTHING`,
    values: paymentValues(p),
  });
  return r.rowCount === 1;
}

export interface PaymentPage {
  payments: PaymentRow[];
  hasMore: boolean;
}

/**
 * A merchant's payments, newest first; `startingAfter` / `endingBefore` are payment ids of the merchant. Any other
 * id is refused (resource_missing), as every list of the API refuses a cursor naming nothing of the caller's: an
 * empty page would end a client's paging as if it had read everything.
 * `horizon` (PaymentFlows' creations), asked once the anchor is found, bounds the newest end: newest first without
 * an anchor, and towards newer ones (ending_before), so that a merchant polling for new payments misses none
 * committed late by a concurrent insert. Towards older ones (starting_after) a page reads below its anchor
 * whatever the horizon (an anchor above it, a payment the caller has just made, would otherwise step over
 * committed ones for good).
 */
export async function listPayments(
  db: Queryable,
  merchantId: string,
  limit: number,
  startingAfter: string | null,
  endingBefore: string | null,
  horizon?: () => Promise<bigint>,
): Promise<PaymentPage> {
  const anchorId = startingAfter ?? endingBefore;
  let anchor: { createdAt: bigint; id: string } | null = null;
  if (anchorId) {
    const a = await db.query({ name: 'pay-list-anchor', text: 'SELECT created_at, id FROM payments WHERE id = $1 AND merchant_id = $2', values: [anchorId, merchantId] });
    if (!a.rows[0]) throw new ValidationError(startingAfter ? 'starting_after' : 'ending_before', 'no such payment', 'resource_missing');
    anchor = { createdAt: a.rows[0].created_at, id: a.rows[0].id };
  }
  const newestEnd = horizon && startingAfter === null ? await horizon() : null;
  // ending_before walks towards newer payments: read ascending from the anchor, then present newest first.
  const before = endingBefore !== null;
  const values: unknown[] = [merchantId, limit + 1];
  const where = ['merchant_id = $1'];
  if (anchor) where.push(`(created_at, id) ${before ? '>' : '<'} ($${values.push(anchor.createdAt)}, $${values.push(anchor.id)})`);
  if (newestEnd !== null) where.push(`created_at <= $${values.push(newestEnd)}`);
  const order = anchor && before ? 'ASC' : 'DESC';
  const r = await db.query(`SELECT ${PAYMENT_COLUMNS} FROM payments WHERE ${where.join(' AND ')} ORDER BY created_at ${order}, id ${order} LIMIT $2`, values);
  const rows = r.rows.slice(0, limit).map(paymentFromRow);
  return { payments: before ? rows.reverse() : rows, hasMore: r.rows.length > limit };
}

const OPERATION_COLUMNS = 'id, payment_id, merchant_id, kind, amount, fee, status, failure_code, idempotency_key, metadata, created_at';

function operationFromRow(r: Record<string, unknown>): OperationRow {
  return {
    id: r['id'] as string,
    paymentId: r['payment_id'] as string,
    merchantId: r['merchant_id'] as string,
    kind: r['kind'] as OperationRow['kind'],
    amount: r['amount'] as bigint,
    fee: r['fee'] as bigint,
    status: r['status'] as OperationStatus,
    failureCode: r['failure_code'] as string | null,
    idempotencyKey: r['idempotency_key'] as string | null,
    metadata: r['metadata'] as Record<string, string>,
    createdAt: r['created_at'] as bigint,
  };
}

/** Inserts a step; false when its id exists already (the same step asked again). */
export async function insertOperation(db: Queryable, op: OperationRow): Promise<boolean> {
  const r = await db.query({
    name: 'pay-op-insert',
    text: `INSERT INTO payment_operations (${OPERATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING`,
    values: operationValues(op),
  });
  return r.rowCount === 1;
}

export async function findOperation(db: Queryable, operationId: string): Promise<OperationRow | null> {
  const r = await db.query({ name: 'pay-op-find', text: `SELECT ${OPERATION_COLUMNS} FROM payment_operations WHERE id = $1`, values: [operationId] });
  return r.rows[0] ? operationFromRow(r.rows[0]) : null;
}

export async function operationsOf(db: Queryable, paymentId: string): Promise<OperationRow[]> {
  const r = await db.query({ name: 'pay-ops-of', text: `SELECT ${OPERATION_COLUMNS} FROM payment_operations WHERE payment_id = $1 ORDER BY created_at, id`, values: [paymentId] });
  return r.rows.map(operationFromRow);
}

/**
 * Finishes many steps (each once) and reads their payments, in one statement: the map holds the steps that were
 * still processing, with their payment as it is now.
 */
export async function finishOperationsReadPayments(
  db: Queryable,
  steps: readonly { id: string; status: Exclude<OperationStatus, 'processing'>; failureCode: string | null }[],
): Promise<Map<string, PaymentRow>> {
  const r = await db.query({
    name: 'pay-ops-finish-read',
    text: `WITH d AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) AS d(id, status, failure_code)),
                op AS (UPDATE payment_operations o SET status = d.status, failure_code = d.failure_code, updated_at = now()
                       FROM d WHERE o.id = d.id AND o.status = 'processing' RETURNING o.id AS op_id, o.payment_id)
           SELECT op.op_id, ${PAYMENT_COLUMNS.split(',').map((c) => `p.${c.trim()}`).join(', ')} FROM payments p JOIN op ON p.id = op.payment_id`,
    values: [steps.map((s) => s.id), steps.map((s) => s.status), steps.map((s) => s.failureCode)],
  });
  return new Map(r.rows.map((row) => [row.op_id as string, paymentFromRow(row)]));
}

/** Writes many payments' new states, each only if still at its expected version; how many were written. */
export async function updatePayments(db: Queryable, updates: readonly { after: PaymentRow; expectedVersion: bigint }[]): Promise<number> {
  if (updates.length === 0) return 0;
  const r = await db.query({
    name: 'pay-update-many',
    text: `UPDATE payments p SET status = d.status, amount_captured = d.amount_captured, amount_refunded = d.amount_refunded, fee = d.fee,
             decline_code = d.decline_code, decline_reason = d.decline_reason, version = d.version, updated_at = now()
           FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::text[], $8::text[], $9::int8[])
             AS d(id, expected, status, amount_captured, amount_refunded, fee, decline_code, decline_reason, version)
           WHERE p.id = d.id AND p.version = d.expected`,
    values: [
      updates.map((u) => u.after.id),
      updates.map((u) => String(u.expectedVersion)),
      updates.map((u) => u.after.status),
      updates.map((u) => String(u.after.amountCaptured)),
      updates.map((u) => String(u.after.amountRefunded)),
      updates.map((u) => String(u.after.fee)),
      updates.map((u) => u.after.declineCode),
      updates.map((u) => u.after.declineReason),
      updates.map((u) => String(u.after.version)),
    ],
  });
  return r.rowCount ?? 0;
}

/** Writes the events of many steps into the outbox: one message (row) per step. */
export async function writePaymentEventsMany(
  db: PoolClient,
  shardCount: number,
  steps: readonly { events: readonly { type: PaymentEventType; payment: PaymentRow }[]; op: OperationRow; traceparent: string }[],
): Promise<void> {
  const messages = steps.filter((s) => s.events.length > 0).map((s) => paymentEventsMessage(shardCount, s.events, s.op, s.traceparent));
  if (messages.length === 0) return;
  await db.query({
    name: 'pay-outbox-many',
    text: `INSERT INTO outbox (shard, sequence, batch_id, part, event_count, payload, traceparent)
           SELECT shard, sequence, batch_id, 0, event_count, payload, traceparent
           FROM unnest($1::int4[], $2::int8[], $3::uuid[], $4::int4[], $5::bytea[], $6::text[]) AS m(shard, sequence, batch_id, event_count, payload, traceparent)`,
    values: [messages.map((m) => m.shard), messages.map((m) => String(m.sequence)), messages.map((m) => m.batchId), messages.map((m) => m.count), messages.map((m) => m.payload), messages.map((m) => m.traceparent)],
  });
}

/** Steps left processing for longer than `olderThanMs` (their caller crashed or gave up): the resumer's work. */
export async function staleOperations(db: Queryable, olderThanMs: number, limit: number): Promise<OperationRow[]> {
  const r = await db.query({
    name: 'pay-ops-stale',
    text: `SELECT ${OPERATION_COLUMNS} FROM payment_operations
           WHERE status = 'processing' AND updated_at < now() - ($1::INT8 * INTERVAL '1 millisecond') ORDER BY updated_at LIMIT $2`,
    values: [olderThanMs, limit],
  });
  return r.rows.map(operationFromRow);
}

/** Puts a step still processing at the back of the resumer's queue (staleOperations orders by updated_at). */
export async function deferOperation(db: Queryable, operationId: string): Promise<void> {
  await db.query({ name: 'pay-op-defer', text: `UPDATE payment_operations SET updated_at = now() WHERE id = $1 AND status = 'processing'`, values: [operationId] });
}

/**
 * Payments still awaiting capture whose authorization the ledger holds no longer: its pending transfer (the
 * authorize step's id) expires before `expiredBefore` (ns). Not the payment's age: an authorization that reached
 * the ledger late (a crash before the ledger call, then a retry or the resumer) is held for its whole timeout
 * from then, and canceling it earlier voids an authorization the merchant may still capture. `createdBefore` (the
 * payment recorded at least one timeout ago, which its pending transfer never precedes) only narrows the scan to
 * the index of payments awaiting capture.
 * Not those with a cancel step already: failed (the ledger refused the void against an invariant: another cancel
 * is refused the same), or processing, which the resumer's stale steps drive, sent to the back of the line when
 * they throw (deferOperation). Either kind, taken here, could fill every page of this query for good.
 */
export async function expiredAuthorizations(db: Queryable, createdBefore: bigint, expiredBefore: bigint, limit: number): Promise<{ id: string; merchantId: string }[]> {
  const r = await db.query({
    name: 'pay-expired-authorizations',
    text: `SELECT p.id, p.merchant_id FROM payments p
             JOIN payment_operations a ON a.payment_id = p.id AND a.kind = 'authorize'
             JOIN pending_transfers t ON t.id = a.id
           WHERE p.status = 'requires_capture' AND p.created_at < $1 AND t.expires_at > 0 AND t.expires_at < $2
             AND NOT EXISTS (SELECT 1 FROM payment_operations o WHERE o.payment_id = p.id AND o.kind = 'cancel')
           ORDER BY p.created_at LIMIT $3`,
    values: [createdBefore, expiredBefore, limit],
  });
  return r.rows.map((row) => ({ id: row.id, merchantId: row.merchant_id }));
}

export type PaymentEventType = 'payment.authorized' | 'payment.captured' | 'payment.canceled' | 'payment.declined' | 'payment.refunded';

interface OutboxMessage {
  shard: number;
  sequence: bigint;
  batchId: string;
  count: number;
  payload: Buffer;
  traceparent: string;
}

/**
 * A step's payment events as one outbox message. Each event carries the payment as of that event's version.
 * The row's sequence: nextOutboxSequence (no counter row shared by concurrent payments).
 */
function paymentEventsMessage(shardCount: number, events: readonly { type: PaymentEventType; payment: PaymentRow }[], op: OperationRow, traceparent: string): OutboxMessage {
  const paymentId = events[0]!.payment.id;
  const batchId = randomUUID();
  const occurredAt = BigInt(Date.now()) * 1_000_000n;
  // Only a capture takes the fee: a step that ended otherwise (declined, canceled at an expired capture) took none.
  const feeTaken = events.some((e) => e.type === 'payment.captured') ? op.fee : 0n;
  const payload = EventBatch.encode({
    batchId,
    shard: shardOf(paymentId, shardCount),
    events: events.map(({ type, payment }) => {
      invariant(payment.version > 0n && payment.id === paymentId, 'payment events of one step carry the versions they produced');
      return {
        eventId: randomUUID(),
        type,
        aggregateId: payment.id,
        sequence: BigInt(payment.version),
        occurredAt,
        traceparent,
        payload: {
          $case: 'payment' as const,
          value: {
            paymentId: payment.id,
            merchantId: payment.merchantId,
            currency: payment.currency,
            amount: payment.amount,
            amountCaptured: payment.amountCaptured,
            amountRefunded: payment.amountRefunded,
            fee: payment.fee,
            status: payment.status,
            operationId: op.id,
            operationAmount: op.amount,
            operationFee: feeTaken,
            declineCode: payment.declineCode ?? '',
            sourceAccountId: payment.sourceAccountId,
            sourceType: payment.sourceKind,
            destinationAccountId: payment.destinationAccountId,
            customerId: payment.customerId ?? '',
            riskScorePpm: payment.risk.scorePpm,
            riskModelVersion: payment.risk.modelVersion,
            cardFingerprint: payment.cardFingerprint ?? '',
            cardCountry: payment.cardCountry ?? '',
            cardType: payment.cardType ?? '',
            deviceId: payment.deviceId ?? '',
            ipCountry: payment.ipCountry ?? '',
            merchantCategory: payment.merchantCategory ?? '',
            createdAt: payment.createdAt,
            feeTransferId: feeTaken > 0n ? feeTransferId(op.id) : '',
          },
        },
      };
    }),
  }).finish();
  return {
    shard: PAYMENT_OUTBOX_SHARD_BASE + shardOf(paymentId, shardCount),
    sequence: nextOutboxSequence(),
    batchId,
    count: events.length,
    payload: Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength),
    traceparent,
  };
}

/** Writes a step's events into the outbox, in the caller's transaction (with the state change they report). */
export async function writePaymentEvents(db: PoolClient, shardCount: number, events: readonly { type: PaymentEventType; payment: PaymentRow }[], op: OperationRow): Promise<void> {
  if (events.length === 0) return;
  const m = paymentEventsMessage(shardCount, events, op, traceparentOf());
  await db.query({
    name: 'pay-outbox',
    text: 'INSERT INTO outbox (shard, sequence, batch_id, part, event_count, payload, traceparent) VALUES ($1, $2, $3, 0, $4, $5, $6)',
    values: [m.shard, m.sequence, m.batchId, m.count, m.payload, m.traceparent],
  });
}

