import { createHash } from 'node:crypto';
import { sqlArray, type PoolClient, type Queryable } from '../lib/db.js';
import { invariant } from '../lib/errors.js';
import type { BatchEffects, BatchState } from './engine.js';
import type { OutboxPart } from './outbox.js';
import { BALANCE_RULE_FLAGS, MAX_BALANCE, TransferFlag, balancedAccounts, hasFlag, type AccountRow, type PendingRow, type PendingState, type Submission, type TransferRow } from './model.js';

/**
 * The ledger's SQL, in one place. A batch transaction: lock the shard row, lock the pending transfers it
 * resolves (id order, one statement), read accounts and the balances its rules need, evaluate in memory,
 * then write every table's rows (`unnest`) and advance the shard clock in one statement (writeBatchEffects).
 * Balances live in per-shard slots, so concurrent batches of different shards never write the same row. Runs
 * on PostgreSQL and CockroachDB.
 */

export interface ShardClock {
  lastTimestamp: bigint;
  lastSequence: bigint;
}

/** Creates the rows of `shards` that do not exist; returns the latest of their clocks (0 for none). */
export async function ensureShards(db: Queryable, shards: readonly number[]): Promise<bigint> {
  await db.query('INSERT INTO ledger_shards (shard) SELECT unnest($1::int4[]) ON CONFLICT (shard) DO NOTHING', [shards]);
  const r = await db.query('SELECT COALESCE(max(last_timestamp), 0)::INT8 AS latest FROM ledger_shards WHERE shard = ANY($1::int4[])', [shards]);
  return BigInt(r.rows[0]?.latest ?? 0);
}

/** Locks the history clocks of `accountIds` (history accounts of a batch); the latest of their timestamps, or 0. */
export async function lockHistoryClocks(db: PoolClient, accountIds: readonly string[]): Promise<bigint> {
  if (accountIds.length === 0) return 0n;
  const r = await db.query({
    name: 'lock-history-clocks',
    text: 'SELECT last_timestamp FROM account_history_clocks WHERE account_id = ANY($1::uuid[]) ORDER BY account_id FOR UPDATE',
    values: [sqlArray([...accountIds].sort())],
  });
  return r.rows.reduce<bigint>((latest, row) => (row.last_timestamp > latest ? row.last_timestamp : latest), 0n);
}

/** Advances the history clocks of `accountIds` to `timestamp`; an upsert, so concurrent first uses conflict. */
export async function advanceHistoryClocks(db: PoolClient, accountIds: readonly string[], timestamp: bigint): Promise<void> {
  if (accountIds.length === 0) return;
  await db.query({
    name: 'advance-history-clocks',
    text: `INSERT INTO account_history_clocks (account_id, last_timestamp) SELECT unnest($1::uuid[]), $2::int8
           ON CONFLICT (account_id) DO UPDATE SET last_timestamp = excluded.last_timestamp`,
    values: [sqlArray([...accountIds].sort()), timestamp],
  });
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

/**
 * Largest value a balance slot may reach without the account being read in full: with at most 4,096 shards
 * (lib/config.ts) the sum of all slots then stays below 2^62, so no total, nor debits_pending + debits_posted,
 * can overflow 2^63-1 while nobody looks. Beyond it the account becomes "wide" and is always read in full.
 */
export const SLOT_SOFT_LIMIT = MAX_BALANCE / 8192n;

/**
 * What an earlier attempt of the same batch learned: a rerun with these facts is correct where the first
 * guess was not. Thrown from inside the transaction (which rolls back) and caught by executeBatch.
 */
export class BatchNeedsRerun extends Error {
  constructor(
    readonly existingTransferIds: readonly string[],
    readonly fullAccountIds: readonly string[],
    readonly failedTransferIds: readonly string[] = [],
  ) {
    super(`batch rerun: ${existingTransferIds.length} existing transfer ids, ${fullAccountIds.length} accounts to read in full, ${failedTransferIds.length} spent ids`);
  }
}

export interface BatchHints {
  /** Transfer ids known to exist: read them so that the engine answers `exists`. */
  existingTransferIds: ReadonlySet<string>;
  /** Transfer ids known to be spent (failed_transfer_ids): the engine answers `id_already_failed`. */
  failedTransferIds: ReadonlySet<string>;
  /** Look every transfer id of the batch up, spent ones too (after a duplicate id broke an optimistic insert). */
  lookUpAllTransferIds?: boolean;
  /** Accounts to read in full (and mark wide) although no flag asks for it. */
  fullAccountIds: ReadonlySet<string>;
  /**
   * Consolidate the slots of the accounts read in full that the batch changes into its own shard's slot before
   * writing (consolidateSlots): after a slot of one of them overflowed INT8 (22003) although its total did not.
   */
  consolidateSlots?: boolean;
}

export const NO_HINTS: BatchHints = { existingTransferIds: new Set(), failedTransferIds: new Set(), fullAccountIds: new Set() };

/** What a batch read, and which of its accounts are wide (routing treats those as having balance rules). */
export type LoadedBatchState = BatchState & { wideAccountIds: string[] };

/**
 * Reads what a batch needs, taking as few read dependencies as possible: under SERIALIZABLE every read of a
 * row another shard writes is a chance of 40001. Pending transfers are locked (their shard owns them);
 * accounts are immutable identity rows; balances are read only for accounts whose rules depend on them
 * (limit or history flags, or wide), the others are changed blind through their own slot. Transfer ids of the
 * batch are not looked up at all: inserting an existing one fails (23505) and the batch reruns looking them up;
 * spent ones are found by the write (writeBatchEffects), and the batch reruns knowing them.
 */
export async function loadBatchState(db: PoolClient, submissions: readonly Submission[], hints: BatchHints = NO_HINTS): Promise<LoadedBatchState> {
  const transferIds = new Set<string>(hints.existingTransferIds);
  const spentCandidates = new Set<string>(hints.failedTransferIds);
  const pendingIds = new Set<string>();
  const accountIds = new Set<string>();
  // Whether an amount past the soft limit overflows depends on the true balances: read those accounts in full.
  const fullAccountIds = new Set<string>(hints.fullAccountIds);
  for (const s of submissions) {
    if (s.kind === 'accounts') {
      for (const a of s.events) accountIds.add(a.id);
    } else if (s.kind === 'transfers') {
      for (const t of s.events) {
        if (hints.lookUpAllTransferIds) {
          transferIds.add(t.id);
          spentCandidates.add(t.id);
        }
        if (t.pendingId !== '') {
          transferIds.add(t.pendingId);
          if (hasFlag(t.flags, TransferFlag.postPendingTransfer | TransferFlag.voidPendingTransfer)) pendingIds.add(t.pendingId);
        }
        if (t.debitAccountId !== '') accountIds.add(t.debitAccountId);
        if (t.creditAccountId !== '') accountIds.add(t.creditAccountId);
        if (t.amount > SLOT_SOFT_LIMIT) {
          for (const accountId of [t.debitAccountId, t.creditAccountId]) if (accountId !== '') fullAccountIds.add(accountId);
        }
        // A balancing transfer's amount is what the account's true balance leaves.
        for (const accountId of balancedAccounts(t)) fullAccountIds.add(accountId);
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
      values: [sqlArray([...pendingIds])],
    });
    for (const row of r.rows) {
      const p = pendingFromRow(row);
      pendings.set(p.id, p);
      accountIds.add(p.debitAccountId);
      accountIds.add(p.creditAccountId);
      if (p.amount > SLOT_SOFT_LIMIT) {
        fullAccountIds.add(p.debitAccountId);
        fullAccountIds.add(p.creditAccountId);
      }
    }
  }

  const transfers = new Map<string, TransferRow>();
  if (transferIds.size > 0) {
    const r = await db.query({ name: 'find-transfers', text: `SELECT ${TRANSFER_COLUMNS} FROM transfers WHERE id = ANY($1::uuid[])`, values: [sqlArray([...transferIds])] });
    for (const row of r.rows) transfers.set(row.id, transferFromRow(row));
  }

  const failedTransferIds = new Set<string>();
  if (spentCandidates.size > 0) {
    const r = await db.query({ name: 'find-failed-transfer-ids', text: 'SELECT id FROM failed_transfer_ids WHERE id = ANY($1::uuid[])', values: [sqlArray([...spentCandidates])] });
    for (const row of r.rows) failedTransferIds.add(row.id as string);
  }

  const markWide = [...hints.fullAccountIds];
  if (markWide.length > 0) {
    await db.query({ name: 'mark-wide', text: 'UPDATE accounts SET wide = true WHERE id = ANY($1::uuid[]) AND NOT wide', values: [markWide] });
  }

  const accounts = new Map<string, AccountRow>();
  const partialAccounts = new Set<string>();
  const wideAccountIds: string[] = [];
  if (accountIds.size > 0) {
    const r = await db.query({
      name: 'find-accounts',
      text: 'SELECT id, ledger, code, flags, metadata, "timestamp", wide FROM accounts WHERE id = ANY($1::uuid[])',
      values: [sqlArray([...accountIds])],
    });
    const full: string[] = [];
    for (const row of r.rows) {
      const account = accountFromRow(row, false);
      accounts.set(account.id, account);
      if (row.wide) wideAccountIds.push(account.id);
      if (row.wide || hasFlag(account.flags, BALANCE_RULE_FLAGS) || fullAccountIds.has(account.id)) full.push(account.id);
      else partialAccounts.add(account.id);
    }
    if (full.length > 0) {
      const totals = await db.query({
        name: 'account-totals',
        text: `SELECT account_id, sum(debits_pending)::INT8 AS dp, sum(debits_posted)::INT8 AS dpo, sum(credits_pending)::INT8 AS cp, sum(credits_posted)::INT8 AS cpo
               FROM account_balance_slots WHERE account_id = ANY($1::uuid[]) GROUP BY account_id`,
        values: [sqlArray(full)],
      });
      for (const t of totals.rows) {
        const a = accounts.get(t.account_id)!;
        a.debitsPending = t.dp;
        a.debitsPosted = t.dpo;
        a.creditsPending = t.cp;
        a.creditsPosted = t.cpo;
      }
    }
  }
  return { accounts, transfers, pendings, failedTransferIds, partialAccounts, wideAccountIds };
}

/**
 * The rare path of a slot overflow. Slots hold deltas: a pending created on one shard and resolved from a batch
 * of another (a linked chain led by another shard, or LEDGER_SHARDS changed) leaves one slot up and another down
 * by its amount, and with amounts near 2^62 a slot of an account whose totals are in range can overflow INT8.
 * Only accounts read in full (limit or history flags, wide) can have slots that large; for those of them the
 * batch changes, this moves the sum of every slot into the batch's own shard's slot and deletes the others, so
 * that slot is the account's true total, which the engine keeps in range (the write then adds the batch's net
 * change to it). Two statements (CockroachDB refuses two changes of one table in one statement); the delete of
 * other shards' slots may conflict with their batches, which retry (40001/40P01).
 */
export async function consolidateSlots(db: PoolClient, shard: number, effects: BatchEffects, state: BatchState): Promise<void> {
  const created = new Set(effects.newAccounts.map((a) => a.id));
  const deltas = new Map(effects.balanceDeltas.filter((d) => !state.partialAccounts?.has(d.accountId) && !created.has(d.accountId)).map((d) => [d.accountId, d]));
  if (deltas.size === 0) return;
  const ids = sqlArray([...deltas.keys()].sort());
  const consolidated = await db.query({
    name: 'consolidate-slots',
    text: `INSERT INTO account_balance_slots AS s (account_id, shard, debits_pending, debits_posted, credits_pending, credits_posted)
           SELECT account_id, $2::int4, sum(debits_pending)::INT8, sum(debits_posted)::INT8, sum(credits_pending)::INT8, sum(credits_posted)::INT8
           FROM account_balance_slots WHERE account_id = ANY($1::uuid[]) GROUP BY account_id
           ON CONFLICT (shard, account_id) DO UPDATE SET
             debits_pending = excluded.debits_pending,
             debits_posted = excluded.debits_posted,
             credits_pending = excluded.credits_pending,
             credits_posted = excluded.credits_posted
           RETURNING account_id, debits_pending, debits_posted, credits_pending, credits_posted`,
    values: [ids, shard],
  });
  await db.query({ name: 'delete-other-slots', text: 'DELETE FROM account_balance_slots WHERE account_id = ANY($1::uuid[]) AND shard <> $2::int4', values: [ids, shard] });
  // The consolidated slot is the account's balance before the batch: with the batch's change it must give exactly
  // what the engine computed (and checked to be in range).
  for (const row of consolidated.rows) {
    const a = state.accounts.get(row.account_id as string);
    const d = deltas.get(row.account_id as string);
    invariant(a && d, `consolidated slot of account ${String(row.account_id)} the batch does not change`);
    const after = [row.debits_pending + d.debitsPending, row.debits_posted + d.debitsPosted, row.credits_pending + d.creditsPending, row.credits_posted + d.creditsPosted];
    const expected = [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted];
    invariant(after.every((v, i) => v === expected[i]), `account ${a.id}: consolidated slot plus the batch's change ${after.join('/')} differs from its balances ${expected.join('/')}`);
  }
}

/** Transfer ids among `ids` that exist: asked only for events that failed, whose answer might be `exists`. */
export async function findExistingTransferIds(db: Queryable, ids: readonly string[]): Promise<string[]> {
  if (ids.length === 0) return [];
  const r = await db.query({ name: 'existing-transfer-ids', text: 'SELECT id FROM transfers WHERE id = ANY($1::uuid[])', values: [ids] });
  return r.rows.map((row) => row.id as string);
}

/**
 * One data-modifying statement: each table's rows are a CTE of their own (PostgreSQL and CockroachDB both run
 * every such CTE to completion), so a batch's writes cost one round trip instead of one per table. The text
 * depends on which parts a batch has, never on their values (those are all parameters), so few texts exist; each
 * is prepared once per connection under a name that starts with a hash of its text (PostgreSQL cuts names at 63
 * bytes: a list of the parts alone would not fit, and two cut names would collide).
 */
class CombinedWrite {
  private readonly parts: string[] = [];
  private readonly ctes: string[] = [];
  readonly values: unknown[] = [];

  /** A placeholder for `value`, cast to `type`. */
  param(value: unknown, type: string): string {
    this.values.push(value);
    return `$${this.values.length}::${type}`;
  }

  add(part: string, sql: string): void {
    this.parts.push(part);
    this.ctes.push(`${part} AS (${sql})`);
  }

  has(part: string): boolean {
    return this.parts.includes(part);
  }

  query(select: string): { name: string; text: string; values: unknown[] } {
    const text = `WITH ${this.ctes.join(',\n')}\n${select}`;
    // The text's hash first (one name, one text), the parts after it for whoever reads statement timings.
    const name = `write-batch:${createHash('sha256').update(text).digest('base64url').slice(0, 12)}:${this.parts.join('+')}`;
    return { name: name.slice(0, 63), text, values: this.values };
  }
}

/**
 * Writes a batch's effects in one statement (CombinedWrite), which also asks which of `uncheckedTransferIds` are
 * spent: any is a rerun (BatchNeedsRerun), as is a blind balance change past the soft limit. Returns the accounts
 * it found past the soft limit and marked wide.
 */
export async function writeBatchEffects(
  db: PoolClient,
  shard: number,
  effects: BatchEffects,
  state: BatchState,
  clock: ShardClock,
  outbox: { batchId: string; parts: readonly OutboxPart[]; traceparent: string },
  uncheckedTransferIds: readonly string[],
): Promise<{ markedWide: string[] }> {
  const { newAccounts, newTransfers, failedTransfers, balanceDeltas, newPendings, resolvedPendings, history } = effects;
  // A blind change larger than the soft limit could overflow the slot in SQL itself: read those in full first.
  const large = balanceDeltas
    .filter((d) => state.partialAccounts?.has(d.accountId) && [d.debitsPending, d.debitsPosted, d.creditsPending, d.creditsPosted].some((v) => v > SLOT_SOFT_LIMIT || v < -SLOT_SOFT_LIMIT))
    .map((d) => d.accountId);
  if (large.length > 0) throw new BatchNeedsRerun([], large);

  const write = new CombinedWrite();
  const column = (values: readonly (string | number | bigint | null)[], type: string) => write.param(sqlArray(values), `${type}[]`);
  if (newAccounts.length > 0) {
    write.add(
      'accounts',
      `INSERT INTO accounts (id, ledger, code, flags, metadata, "timestamp")
       SELECT * FROM unnest(${column(newAccounts.map((a) => a.id), 'uuid')}, ${column(newAccounts.map((a) => a.ledger), 'int8')}, ${column(newAccounts.map((a) => a.code), 'int8')},
                            ${column(newAccounts.map((a) => a.flags), 'int4')}, ${write.param(newAccounts.map((a) => jsonOrEmpty(a.metadata)), 'jsonb[]')}, ${column(newAccounts.map((a) => a.timestamp), 'int8')})`,
    );
  }
  // The new transfers' ids, a parameter of their insert and, usually, of the spent-ids question too.
  const newTransferIds = newTransfers.length > 0 ? column(newTransfers.map((t) => t.id), 'uuid') : '';
  if (newTransfers.length > 0) {
    // A plain INSERT: ON CONFLICT would probe the primary key as a read, and under PostgreSQL's SERIALIZABLE
    // those page-level read locks make concurrent batches conflict. A duplicate id raises 23505 instead, and
    // executeBatch reruns the batch looking all its ids up first.
    write.add(
      'transfers',
      `INSERT INTO transfers (${TRANSFER_COLUMNS}, shard)
       SELECT *, ${write.param(shard, 'int4')} FROM unnest(
         ${newTransferIds}, ${column(newTransfers.map((t) => t.debitAccountId), 'uuid')}, ${column(newTransfers.map((t) => t.creditAccountId), 'uuid')},
         ${column(newTransfers.map((t) => t.amount), 'int8')}, ${column(newTransfers.map((t) => (t.pendingId === '' ? null : t.pendingId)), 'uuid')}, ${column(newTransfers.map((t) => t.ledger), 'int8')},
         ${column(newTransfers.map((t) => t.code), 'int8')}, ${column(newTransfers.map((t) => t.flags), 'int4')}, ${column(newTransfers.map((t) => t.timeout), 'int8')},
         ${write.param(newTransfers.map((t) => jsonOrEmpty(t.metadata)), 'jsonb[]')}, ${column(newTransfers.map((t) => t.timestamp), 'int8')})`,
    );
  }
  if (failedTransfers.length > 0) {
    // A plain INSERT as for transfers: an id spent before (not looked up) raises 23505 and the batch reruns.
    write.add(
      'failures',
      `INSERT INTO failed_transfer_ids (id, code, "timestamp", shard)
       SELECT *, ${write.param(shard, 'int4')} FROM unnest(${column(failedTransfers.map((f) => f.id), 'uuid')}, ${column(failedTransfers.map((f) => f.code), 'text')},
         ${column(failedTransfers.map((f) => f.timestamp), 'int8')})`,
    );
  }
  if (uncheckedTransferIds.length > 0) {
    // Which ids of the batch were spent before: usually none, and then the batch stands. In the usual batch the
    // ids are exactly the new transfers' ids, sent once for both.
    const reuse = sameIds(uncheckedTransferIds, newTransfers);
    const ids = reuse ? newTransferIds : column(uncheckedTransferIds, 'uuid');
    write.add('spent', `SELECT id FROM failed_transfer_ids WHERE id = ANY(${ids})`);
  }
  if (balanceDeltas.length > 0) {
    // Only slots past the soft limit come back (the final SELECT): returning all cost a row per account.
    write.add(
      'slots',
      `INSERT INTO account_balance_slots AS s (account_id, shard, debits_pending, debits_posted, credits_pending, credits_posted)
       SELECT v.id, ${write.param(shard, 'int4')}, v.dp, v.dpo, v.cp, v.cpo FROM unnest(
         ${column(balanceDeltas.map((d) => d.accountId), 'uuid')}, ${column(balanceDeltas.map((d) => d.debitsPending), 'int8')}, ${column(balanceDeltas.map((d) => d.debitsPosted), 'int8')},
         ${column(balanceDeltas.map((d) => d.creditsPending), 'int8')}, ${column(balanceDeltas.map((d) => d.creditsPosted), 'int8')}) AS v(id, dp, dpo, cp, cpo)
       ON CONFLICT (shard, account_id) DO UPDATE SET
         debits_pending = s.debits_pending + excluded.debits_pending,
         debits_posted = s.debits_posted + excluded.debits_posted,
         credits_pending = s.credits_pending + excluded.credits_pending,
         credits_posted = s.credits_posted + excluded.credits_posted
       RETURNING account_id, debits_pending, debits_posted, credits_pending, credits_posted`,
    );
  }
  if (newPendings.length > 0) {
    write.add(
      'pendings',
      `INSERT INTO pending_transfers (${PENDING_COLUMNS})
       SELECT * FROM unnest(${column(newPendings.map((p) => p.id), 'uuid')}, ${column(newPendings.map((p) => p.debitAccountId), 'uuid')}, ${column(newPendings.map((p) => p.creditAccountId), 'uuid')},
         ${column(newPendings.map((p) => p.amount), 'int8')}, ${column(newPendings.map((p) => p.ledger), 'int8')}, ${column(newPendings.map((p) => p.code), 'int8')},
         ${column(newPendings.map((p) => p.expiresAt), 'int8')}, ${column(newPendings.map((p) => p.state), 'int2')}, ${column(newPendings.map((p) => p.shard), 'int4')},
         ${column(newPendings.map((p) => p.resolvedBy || null), 'uuid')}, ${column(newPendings.map((p) => p.resolvedAt), 'int8')})`,
    );
  }
  if (history.length > 0) {
    write.add(
      'history',
      `INSERT INTO account_balances (account_id, "timestamp", transfer_id, debits_pending, debits_posted, credits_pending, credits_posted)
       SELECT * FROM unnest(${column(history.map((h) => h.accountId), 'uuid')}, ${column(history.map((h) => h.timestamp), 'int8')}, ${column(history.map((h) => h.transferId), 'uuid')},
         ${column(history.map((h) => h.debitsPending), 'int8')}, ${column(history.map((h) => h.debitsPosted), 'int8')}, ${column(history.map((h) => h.creditsPending), 'int8')},
         ${column(history.map((h) => h.creditsPosted), 'int8')})`,
    );
  }
  let lastSequence = clock.lastSequence;
  if (outbox.parts.length > 0) {
    // One row per part (outbox.ts encodeEventBatch); payloads go as binary parameters (8,190 events: 4 parts).
    const rows = outbox.parts.map(({ payload, events }, part) => {
      lastSequence += 1n;
      const bytes = Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength);
      return `(${write.param(shard, 'int4')}, ${write.param(lastSequence, 'int8')}, ${write.param(outbox.batchId, 'uuid')}, ${part}, ${write.param(events, 'int4')}, ${write.param(bytes, 'bytea')}, ${write.param(outbox.traceparent, 'text')})`;
    });
    write.add(`outbox${outbox.parts.length}`, `INSERT INTO outbox (shard, sequence, batch_id, part, event_count, payload, traceparent) VALUES ${rows.join(', ')}`);
  }
  write.add('clock', `UPDATE ledger_shards SET last_timestamp = ${write.param(effects.lastTimestamp, 'int8')}, last_sequence = ${write.param(lastSequence, 'int8')} WHERE shard = ${write.param(shard, 'int4')}`);
  // What the write found: slots past the soft limit (kind 'slot') and spent ids (kind 'spent').
  const found = [
    ...(write.has('slots')
      ? [
          `SELECT 'slot' AS kind, account_id AS id FROM slots WHERE debits_pending NOT BETWEEN -$L AND $L OR debits_posted NOT BETWEEN -$L AND $L OR credits_pending NOT BETWEEN -$L AND $L OR credits_posted NOT BETWEEN -$L AND $L`.replaceAll(
            '$L',
            write.param(SLOT_SOFT_LIMIT, 'int8'),
          ),
        ]
      : []),
    ...(write.has('spent') ? [`SELECT 'spent' AS kind, id FROM spent`] : []),
  ];
  const written = await db.query(write.query(found.length > 0 ? found.join('\nUNION ALL\n') : `SELECT NULL::text AS kind, NULL::uuid AS id WHERE false`));
  const foundOf = (kind: string) => written.rows.filter((r) => r.kind === kind).map((r) => r.id as string);

  // An id spent before: the batch's answer for it is `id_already_failed`, and the events after it may differ.
  const spent = foundOf('spent');
  if (spent.length > 0) throw new BatchNeedsRerun([], [], spent);
  // Past the soft limit an account is wide: read in full by every later batch. One changed blind must be
  // re-evaluated now (rerun); one read in full is just marked.
  const beyondSoftLimit = foundOf('slot');
  const changedBlind = beyondSoftLimit.filter((accountId) => state.partialAccounts?.has(accountId));
  if (changedBlind.length > 0) throw new BatchNeedsRerun([], changedBlind);
  if (beyondSoftLimit.length > 0) {
    await db.query({ name: 'mark-wide', text: 'UPDATE accounts SET wide = true WHERE id = ANY($1::uuid[]) AND NOT wide', values: [beyondSoftLimit] });
  }
  // Not in the combined statement: it changes pending_transfers, which a CTE above may insert into, and
  // CockroachDB refuses two changes of one table in one statement.
  if (resolvedPendings.length > 0) {
    const resolved = await db.query({
      name: 'resolve-pendings',
      text: `UPDATE pending_transfers AS p SET state = v.state, resolved_by = v.resolved_by, resolved_at = v.resolved_at
             FROM unnest($1::uuid[], $2::int2[], $3::uuid[], $4::int8[]) AS v(id, state, resolved_by, resolved_at)
             WHERE p.id = v.id AND p.state = 1`,
      values: [
        sqlArray(resolvedPendings.map((p) => p.id)),
        sqlArray(resolvedPendings.map((p) => p.state)),
        sqlArray(resolvedPendings.map((p) => p.resolvedBy || null)),
        sqlArray(resolvedPendings.map((p) => p.resolvedAt)),
      ],
    });
    invariant(resolved.rowCount === resolvedPendings.length, 'a pending transfer left the pending state twice');
  }
  return { markedWide: beyondSoftLimit };
}

function sameIds(ids: readonly string[], transfers: readonly TransferRow[]): boolean {
  return ids.length === transfers.length && ids.every((id, i) => id === transfers[i]!.id);
}

/** Most events carry no metadata; the literal avoids a JSON.stringify per row. */
function jsonOrEmpty(metadata: Record<string, string>): string {
  for (const _ in metadata) return JSON.stringify(metadata);
  return '{}';
}

// ---- row mapping (int8 arrives as bigint: lib/db.ts) ----

type Row = Record<string, unknown>;

/**
 * An account from its row; `withBalances: false` for a row read without them (zero here, filled in when read in
 * full). Built field by field: an object spread of the row cost about 4 µs per account, a sixth of a batch's
 * JavaScript time.
 */
export function accountFromRow(r: Row, withBalances = true): AccountRow {
  return {
    id: r['id'] as string,
    ledger: Number(r['ledger']),
    code: Number(r['code']),
    flags: r['flags'] as number,
    debitsPending: withBalances ? (r['debits_pending'] as bigint) : 0n,
    debitsPosted: withBalances ? (r['debits_posted'] as bigint) : 0n,
    creditsPending: withBalances ? (r['credits_pending'] as bigint) : 0n,
    creditsPosted: withBalances ? (r['credits_posted'] as bigint) : 0n,
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
