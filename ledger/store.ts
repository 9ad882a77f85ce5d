import type { PoolClient, Queryable } from '../lib/db.js';
import { invariant } from '../lib/errors.js';
import type { BatchEffects, BatchState } from './engine.js';
import { TransferFlag, hasFlag, type AccountRow, type PendingRow, type PendingState, type Submission, type TransferRow } from './model.js';

/**
 * The ledger's SQL, in one place. A batch transaction: lock the shard row, read the transfers the batch names,
 * lock pending transfers then accounts in id order (one statement each), evaluate in memory, write with one
 * multi-row statement per table (`unnest`), advance the shard clock. Runs on PostgreSQL and CockroachDB.
 */

export interface ShardClock {
  lastTimestamp: bigint;
  lastSequence: bigint;
}

export async function ensureShards(db: Queryable, shards: readonly number[]): Promise<void> {
  await db.query('INSERT INTO ledger_shards (shard) SELECT unnest($1::int4[]) ON CONFLICT (shard) DO NOTHING', [shards]);
}

export async function lockShard(db: PoolClient, shard: number): Promise<ShardClock> {
  const r = await db.query({ name: 'lock-shard', text: 'SELECT last_timestamp, last_sequence FROM ledger_shards WHERE shard = $1 FOR UPDATE', values: [shard] });
  const row = r.rows[0];
  invariant(row, `shard ${shard} has no ledger_shards row (ensureShards not run)`);
  return { lastTimestamp: row.last_timestamp, lastSequence: row.last_sequence };
}

const TRANSFER_COLUMNS = 'id, debit_account_id, credit_account_id, amount, pending_id, ledger, code, flags, timeout, metadata, "timestamp"';
const ACCOUNT_COLUMNS = 'id, ledger, code, flags, debits_pending, debits_posted, credits_pending, credits_posted, metadata, "timestamp"';
const PENDING_COLUMNS = 'id, debit_account_id, credit_account_id, amount, ledger, code, expires_at, state, shard, resolved_by, resolved_at';

/** Reads and locks everything a batch can touch. Lock order everywhere: shard row, pending rows, accounts. */
export async function loadBatchState(db: PoolClient, submissions: readonly Submission[]): Promise<BatchState> {
  const transferIds = new Set<string>();
  const pendingIds = new Set<string>();
  const accountIds = new Set<string>();
  for (const s of submissions) {
    if (s.kind === 'accounts') {
      for (const a of s.events) accountIds.add(a.id);
    } else if (s.kind === 'transfers') {
      for (const t of s.events) {
        transferIds.add(t.id);
        if (t.pendingId !== '') {
          transferIds.add(t.pendingId);
          if (hasFlag(t.flags, TransferFlag.postPendingTransfer | TransferFlag.voidPendingTransfer)) pendingIds.add(t.pendingId);
        }
        if (t.debitAccountId !== '') accountIds.add(t.debitAccountId);
        if (t.creditAccountId !== '') accountIds.add(t.creditAccountId);
      }
    } else {
      for (const id of s.pendingIds) {
        pendingIds.add(id);
        transferIds.add(id);
      }
    }
  }

  const pendings = new Map<string, PendingRow>();
  if (pendingIds.size > 0) {
    const r = await db.query({
      name: 'lock-pendings',
      text: `SELECT ${PENDING_COLUMNS} FROM pending_transfers WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE`,
      values: [[...pendingIds]],
    });
    for (const row of r.rows) {
      const p = pendingFromRow(row);
      pendings.set(p.id, p);
      accountIds.add(p.debitAccountId);
      accountIds.add(p.creditAccountId);
    }
  }

  const transfers = new Map<string, TransferRow>();
  if (transferIds.size > 0) {
    const r = await db.query({ name: 'find-transfers', text: `SELECT ${TRANSFER_COLUMNS} FROM transfers WHERE id = ANY($1::uuid[])`, values: [[...transferIds]] });
    for (const row of r.rows) transfers.set(row.id, transferFromRow(row));
  }

  const accounts = new Map<string, AccountRow>();
  if (accountIds.size > 0) {
    const r = await db.query({
      name: 'lock-accounts',
      text: `SELECT ${ACCOUNT_COLUMNS} FROM accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE`,
      values: [[...accountIds]],
    });
    for (const row of r.rows) accounts.set(row.id, accountFromRow(row));
  }
  return { accounts, transfers, pendings };
}

export async function writeBatchEffects(
  db: PoolClient,
  shard: number,
  effects: BatchEffects,
  clock: ShardClock,
  outbox: { batchId: string; payload: Uint8Array } | null,
): Promise<void> {
  const { newAccounts, newTransfers, updatedAccounts, newPendings, resolvedPendings, history } = effects;
  if (newAccounts.length > 0) {
    await db.query({
      name: 'insert-accounts',
      text: `INSERT INTO accounts (${ACCOUNT_COLUMNS})
             SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::int8[], $7::int8[], $8::int8[], $9::jsonb[], $10::int8[])`,
      values: [
        newAccounts.map((a) => a.id),
        newAccounts.map((a) => a.ledger),
        newAccounts.map((a) => a.code),
        newAccounts.map((a) => a.flags),
        newAccounts.map((a) => a.debitsPending),
        newAccounts.map((a) => a.debitsPosted),
        newAccounts.map((a) => a.creditsPending),
        newAccounts.map((a) => a.creditsPosted),
        newAccounts.map((a) => jsonOrEmpty(a.metadata)),
        newAccounts.map((a) => a.timestamp),
      ],
    });
  }
  if (newTransfers.length > 0) {
    await db.query({
      name: 'insert-transfers',
      text: `INSERT INTO transfers (${TRANSFER_COLUMNS}, shard)
             SELECT *, $12::int4 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::uuid[], $6::int8[], $7::int8[], $8::int4[], $9::int8[], $10::jsonb[], $11::int8[])`,
      values: [
        newTransfers.map((t) => t.id),
        newTransfers.map((t) => t.debitAccountId),
        newTransfers.map((t) => t.creditAccountId),
        newTransfers.map((t) => t.amount),
        newTransfers.map((t) => (t.pendingId === '' ? null : t.pendingId)),
        newTransfers.map((t) => t.ledger),
        newTransfers.map((t) => t.code),
        newTransfers.map((t) => t.flags),
        newTransfers.map((t) => t.timeout),
        newTransfers.map((t) => jsonOrEmpty(t.metadata)),
        newTransfers.map((t) => t.timestamp),
        shard,
      ],
    });
  }
  if (updatedAccounts.length > 0) {
    await db.query({
      name: 'update-balances',
      text: `UPDATE accounts AS a
             SET debits_pending = v.dp, debits_posted = v.dpo, credits_pending = v.cp, credits_posted = v.cpo
             FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[], $5::int8[]) AS v(id, dp, dpo, cp, cpo)
             WHERE a.id = v.id`,
      values: [
        updatedAccounts.map((a) => a.id),
        updatedAccounts.map((a) => a.debitsPending),
        updatedAccounts.map((a) => a.debitsPosted),
        updatedAccounts.map((a) => a.creditsPending),
        updatedAccounts.map((a) => a.creditsPosted),
      ],
    });
  }
  if (newPendings.length > 0) {
    await db.query({
      name: 'insert-pendings',
      text: `INSERT INTO pending_transfers (${PENDING_COLUMNS})
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::int8[], $6::int8[], $7::int8[], $8::int2[], $9::int4[], $10::uuid[], $11::int8[])`,
      values: pendingColumns(newPendings),
    });
  }
  if (resolvedPendings.length > 0) {
    const resolved = await db.query({
      name: 'resolve-pendings',
      text: `UPDATE pending_transfers AS p SET state = v.state, resolved_by = v.resolved_by, resolved_at = v.resolved_at
             FROM unnest($1::uuid[], $2::int2[], $3::uuid[], $4::int8[]) AS v(id, state, resolved_by, resolved_at)
             WHERE p.id = v.id AND p.state = 1`,
      values: [
        resolvedPendings.map((p) => p.id),
        resolvedPendings.map((p) => p.state),
        resolvedPendings.map((p) => p.resolvedBy || null),
        resolvedPendings.map((p) => p.resolvedAt),
      ],
    });
    invariant(resolved.rowCount === resolvedPendings.length, 'a pending transfer left the pending state twice');
  }
  if (history.length > 0) {
    await db.query({
      name: 'insert-history',
      text: `INSERT INTO account_balances (account_id, "timestamp", transfer_id, debits_pending, debits_posted, credits_pending, credits_posted)
             SELECT * FROM unnest($1::uuid[], $2::int8[], $3::uuid[], $4::int8[], $5::int8[], $6::int8[], $7::int8[])`,
      values: [
        history.map((h) => h.accountId),
        history.map((h) => h.timestamp),
        history.map((h) => h.transferId),
        history.map((h) => h.debitsPending),
        history.map((h) => h.debitsPosted),
        history.map((h) => h.creditsPending),
        history.map((h) => h.creditsPosted),
      ],
    });
  }
  let lastSequence = clock.lastSequence;
  if (outbox) {
    lastSequence += 1n;
    await db.query({
      name: 'insert-outbox',
      text: 'INSERT INTO outbox (shard, sequence, batch_id, event_count, payload) VALUES ($1, $2, $3, $4, $5)',
      values: [shard, lastSequence, outbox.batchId, effects.events.length, Buffer.from(outbox.payload.buffer, outbox.payload.byteOffset, outbox.payload.byteLength)],
    });
  }
  await db.query({
    name: 'advance-shard',
    text: 'UPDATE ledger_shards SET last_timestamp = $2, last_sequence = $3 WHERE shard = $1',
    values: [shard, effects.lastTimestamp, lastSequence],
  });
}

function pendingColumns(rows: readonly PendingRow[]): unknown[] {
  return [
    rows.map((p) => p.id),
    rows.map((p) => p.debitAccountId),
    rows.map((p) => p.creditAccountId),
    rows.map((p) => p.amount),
    rows.map((p) => p.ledger),
    rows.map((p) => p.code),
    rows.map((p) => p.expiresAt),
    rows.map((p) => p.state),
    rows.map((p) => p.shard),
    rows.map((p) => p.resolvedBy || null),
    rows.map((p) => p.resolvedAt),
  ];
}

/** Most events carry no metadata; the literal avoids a JSON.stringify per row. */
function jsonOrEmpty(metadata: Record<string, string>): string {
  for (const _ in metadata) return JSON.stringify(metadata);
  return '{}';
}

// ---- row mapping (int8 arrives as bigint: lib/db.ts) ----

type Row = Record<string, unknown>;

export function accountFromRow(r: Row): AccountRow {
  return {
    id: r['id'] as string,
    ledger: Number(r['ledger']),
    code: Number(r['code']),
    flags: r['flags'] as number,
    debitsPending: r['debits_pending'] as bigint,
    debitsPosted: r['debits_posted'] as bigint,
    creditsPending: r['credits_pending'] as bigint,
    creditsPosted: r['credits_posted'] as bigint,
    metadata: r['metadata'] as Record<string, string>,
    timestamp: r['timestamp'] as bigint,
  };
}

export function transferFromRow(r: Row): TransferRow {
  return {
    id: r['id'] as string,
    debitAccountId: r['debit_account_id'] as string,
    creditAccountId: r['credit_account_id'] as string,
    amount: r['amount'] as bigint,
    pendingId: (r['pending_id'] as string | null) ?? '',
    ledger: Number(r['ledger']),
    code: Number(r['code']),
    flags: r['flags'] as number,
    timeout: Number(r['timeout']),
    metadata: r['metadata'] as Record<string, string>,
    timestamp: r['timestamp'] as bigint,
  };
}

function pendingFromRow(r: Row): PendingRow {
  return {
    id: r['id'] as string,
    debitAccountId: r['debit_account_id'] as string,
    creditAccountId: r['credit_account_id'] as string,
    amount: r['amount'] as bigint,
    ledger: Number(r['ledger']),
    code: Number(r['code']),
    expiresAt: r['expires_at'] as bigint,
    state: r['state'] as PendingState,
    shard: r['shard'] as number,
    resolvedBy: (r['resolved_by'] as string | null) ?? '',
    resolvedAt: (r['resolved_at'] as bigint | null) ?? 0n,
  };
}

export { TRANSFER_COLUMNS, ACCOUNT_COLUMNS };
