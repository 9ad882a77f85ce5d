import { withTransaction, type Pool } from '../lib/db.js';
import { AppError, ValidationError } from '../lib/errors.js';
import type { HistoryRow } from './engine.js';
import { AccountFlag, BALANCE_RULE_FLAGS, MAX_BATCH_EVENTS, hasFlag, type AccountRow, type PendingState, type TransferResultCode, type TransferRow } from './model.js';
import { ACCOUNT_COLUMNS, TRANSFER_COLUMNS, accountFromRow, transferFromRow } from './store.js';

/**
 * Read paths. They read committed state directly (no batch): each is one read-only SERIALIZABLE transaction,
 * so a page never mixes two states of the books.
 */

export interface AccountFilter {
  accountId: string;
  timestampMin: bigint;
  timestampMax: bigint;
  debits: boolean;
  credits: boolean;
  reversed: boolean;
  limit: number;
  cursor: string;
}

export interface Page<T> {
  items: T[];
  nextCursor: string;
}

const DEFAULT_PAGE = 100;
const INT8_MAX = 2n ** 63n - 1n;

export function encodeCursor(timestamp: bigint, id: string): string {
  return Buffer.from(`${timestamp}:${id}`).toString('base64url');
}

export function decodeCursor(cursor: string): { timestamp: bigint; id: string } {
  const match = /^(\d{1,19}):([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$/.exec(Buffer.from(cursor, 'base64url').toString());
  const timestamp = match ? BigInt(match[1]!) : -1n;
  if (!match || timestamp > INT8_MAX) throw new ValidationError('filter.cursor', 'not a cursor returned by this API');
  return { timestamp, id: match[2]! };
}

/** `horizon`: no row above it is read, whatever the filter says (LedgerRouter.listingHorizon). */
function pageBounds(filter: AccountFilter, horizon?: bigint) {
  if (filter.limit > MAX_BATCH_EVENTS) throw new ValidationError('filter.limit', `at most ${MAX_BATCH_EVENTS}`);
  if (filter.timestampMax !== 0n && filter.timestampMin > filter.timestampMax) throw new ValidationError('filter.timestamp_min', 'must not exceed timestamp_max');
  const limit = filter.limit === 0 ? DEFAULT_PAGE : filter.limit;
  const cursor = filter.cursor === '' ? null : decodeCursor(filter.cursor);
  // Ledger timestamps are nanoseconds and never reach 2^63-1: a bound beyond it matches what the clamped one does.
  const min = filter.timestampMin > INT8_MAX ? INT8_MAX : filter.timestampMin;
  const asked = filter.timestampMax === 0n || filter.timestampMax > INT8_MAX ? INT8_MAX : filter.timestampMax;
  const max = horizon !== undefined && horizon < asked ? horizon : asked;
  // Keyset pagination on (timestamp, id): the cursor is the last row of the previous page.
  const after = cursor ?? (filter.reversed ? { timestamp: max + (max === INT8_MAX ? 0n : 1n), id: 'ffffffff-ffff-ffff-ffff-ffffffffffff' } : { timestamp: min, id: '00000000-0000-0000-0000-000000000000' });
  return { limit, min, max, after };
}

export async function lookupAccounts(pool: Pool, ids: readonly string[]): Promise<AccountRow[]> {
  const r = await pool.query({ name: 'lookup-accounts', text: `SELECT ${ACCOUNT_COLUMNS} FROM account_balances_current WHERE id = ANY($1::uuid[])`, values: [ids] });
  const byId = new Map(r.rows.map((row) => [row.id as string, accountFromRow(row)]));
  return ids.flatMap((id) => byId.get(id) ?? []);
}

/** The refusal that spent a transfer id (ledger/README.md, "Spent ids"); undefined for an id not spent. */
export async function spendingRefusal(pool: Pool, id: string): Promise<TransferResultCode | undefined> {
  const r = await pool.query({ name: 'spending-refusal', text: 'SELECT code FROM failed_transfer_ids WHERE id = $1', values: [id] });
  return r.rows[0]?.code as TransferResultCode | undefined;
}

export async function lookupTransfers(pool: Pool, ids: readonly string[]): Promise<TransferRow[]> {
  const r = await pool.query({
    name: 'lookup-transfers',
    text: `SELECT ${TRANSFER_COLUMNS.split(', ').map((c) => `t.${c}`).join(', ')}, p.state AS pending_state
           FROM transfers t LEFT JOIN pending_transfers p ON p.id = t.id WHERE t.id = ANY($1::uuid[])`,
    values: [ids],
  });
  const byId = new Map(r.rows.map((row) => [row.id as string, { ...transferFromRow(row), ...(row.pending_state ? { pendingState: row.pending_state as PendingState } : {}) }]));
  return ids.flatMap((id) => byId.get(id) ?? []);
}

/** Accounts of pending transfers, for routing post/void events: to the debit account's shard when they name none, ordered with the events of both. */
export async function pendingAccounts(pool: Pool, pendingIds: readonly string[]): Promise<Map<string, { debit: string; credit: string }>> {
  if (pendingIds.length === 0) return new Map();
  const r = await pool.query({ name: 'pending-accounts', text: 'SELECT id, debit_account_id, credit_account_id FROM pending_transfers WHERE id = ANY($1::uuid[])', values: [pendingIds] });
  return new Map(r.rows.map((row) => [row.id as string, { debit: row.debit_account_id as string, credit: row.credit_account_id as string }]));
}

/** For those of `ids` that exist, whether they have balance rules (flags or wide; routing: balance-rule-accounts.ts). */
export async function accountsWithBalanceRules(pool: Pool, ids: readonly string[]): Promise<Map<string, boolean>> {
  const r = await pool.query({ name: 'account-balance-rules', text: 'SELECT id, flags, wide FROM accounts WHERE id = ANY($1::uuid[])', values: [ids] });
  return new Map(r.rows.map((row) => [row.id as string, row.wide === true || hasFlag(row.flags as number, BALANCE_RULE_FLAGS)]));
}

/**
 * `horizon` (LedgerRouter.listingHorizon), asked once the filter is valid, bounds a listing's newest end: oldest
 * first, and newest first without a cursor. A newest-first page from a cursor reads below the cursor: one the walk
 * got from an earlier page is at or below that page's horizon (horizons only rise), and one above this horizon (an
 * anchor of the gateway's `starting_after`, a caller's own transfer) would otherwise step over the committed
 * transfers between the horizon and it, for good.
 */
export async function getAccountTransfers(pool: Pool, filter: AccountFilter, horizon?: () => Promise<bigint | undefined>): Promise<Page<TransferRow>> {
  const bounds = pageBounds(filter);
  const newestEnd = horizon && !(filter.reversed && filter.cursor !== '') ? await horizon() : undefined;
  const { limit, min, max, after } = newestEnd === undefined ? bounds : pageBounds(filter, newestEnd);
  const both = filter.debits === filter.credits;
  const cmp = filter.reversed ? '<' : '>';
  const order = filter.reversed ? 'DESC' : 'ASC';
  // One ordered index range scan per side, merged: cheaper than an OR over two indexes on both databases.
  const side = (column: string) =>
    `(SELECT ${TRANSFER_COLUMNS} FROM transfers
      WHERE ${column} = $1 AND "timestamp" BETWEEN $2 AND $3 AND ("timestamp", id) ${cmp} ($4, $5::uuid)
      ORDER BY "timestamp" ${order}, id ${order} LIMIT $6)`;
  const parts = [...(both || filter.debits ? [side('debit_account_id')] : []), ...(both || filter.credits ? [side('credit_account_id')] : [])];
  const text = `SELECT * FROM (${parts.join(' UNION ALL ')}) AS t ORDER BY "timestamp" ${order}, id ${order} LIMIT $6`;
  const rows = await withTransaction(pool, (c) => c.query(text, [filter.accountId, min, max, after.timestamp, after.id, limit + 1]), { readOnly: true });
  const items = rows.rows.slice(0, limit).map(transferFromRow);
  const last = items[items.length - 1];
  return { items, nextCursor: rows.rows.length > limit && last ? encodeCursor(last.timestamp, last.id) : '' };
}

async function requireHistoryAccount(pool: Pool, accountId: string, field: string): Promise<void> {
  const [account] = await lookupAccounts(pool, [accountId]);
  if (!account) throw new AppError('not_found', 'account_not_found', `account ${accountId} not found`, { field });
  if (!hasFlag(account.flags, AccountFlag.history)) {
    throw new AppError('conflict', 'history_not_enabled', `account ${accountId} was not created with the history flag`, { field });
  }
}

export async function getAccountBalances(pool: Pool, filter: AccountFilter): Promise<Page<HistoryRow>> {
  // The filter first: a malformed one is INVALID_ARGUMENT whatever the account (not NOT_FOUND or FAILED_PRECONDITION).
  const { limit, min, max, after } = pageBounds(filter);
  await requireHistoryAccount(pool, filter.accountId, 'filter.account_id');
  const cmp = filter.reversed ? '<' : '>';
  const order = filter.reversed ? 'DESC' : 'ASC';
  // Debits or credits only: keep the rows whose transfer has the account on that side (an expiry's row is
  // keyed by its pending transfer, which has a side too).
  const side =
    filter.debits === filter.credits
      ? ''
      : `AND EXISTS (SELECT 1 FROM transfers t WHERE t.id = b.transfer_id AND t.${filter.debits ? 'debit_account_id' : 'credit_account_id'} = $1)`;
  const r = await withTransaction(
    pool,
    (c) =>
      c.query(
        `SELECT account_id, "timestamp", transfer_id, debits_pending, debits_posted, credits_pending, credits_posted
         FROM account_balances b
         WHERE account_id = $1 AND "timestamp" BETWEEN $2 AND $3 AND ("timestamp", transfer_id) ${cmp} ($4, $5::uuid) ${side}
         ORDER BY "timestamp" ${order}, transfer_id ${order} LIMIT $6`,
        [filter.accountId, min, max, after.timestamp, after.id, limit + 1],
      ),
    { readOnly: true },
  );
  const items = r.rows.slice(0, limit).map(historyFromRow);
  const last = items[items.length - 1];
  return { items, nextCursor: r.rows.length > limit && last ? encodeCursor(last.timestamp, last.transferId) : '' };
}

export async function getAccountBalanceAt(pool: Pool, accountId: string, timestamp: bigint): Promise<HistoryRow | null> {
  await requireHistoryAccount(pool, accountId, 'account_id');
  const r = await pool.query(
    `SELECT account_id, "timestamp", transfer_id, debits_pending, debits_posted, credits_pending, credits_posted
     FROM account_balances WHERE account_id = $1 AND "timestamp" <= $2
     ORDER BY "timestamp" DESC, transfer_id DESC LIMIT 1`,
    [accountId, timestamp > INT8_MAX ? INT8_MAX : timestamp],
  );
  return r.rows[0] ? historyFromRow(r.rows[0]) : null;
}

function historyFromRow(r: Record<string, unknown>): HistoryRow {
  return {
    accountId: r['account_id'] as string,
    timestamp: r['timestamp'] as bigint,
    transferId: r['transfer_id'] as string,
    debitsPending: r['debits_pending'] as bigint,
    debitsPosted: r['debits_posted'] as bigint,
    creditsPending: r['credits_pending'] as bigint,
    creditsPosted: r['credits_posted'] as bigint,
  };
}
