import type { Pool } from '../lib/db.js';
import { platformAccountId, TransferCode } from '../ledger/payments/model.js';
import { pendingStateToJSON, type Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { movementEntries, type SettlementLedger } from './settler.js';
import * as store from './store.js';

export type DiscrepancyKind =
  | 'missing_line'
  | 'missing_in_ledger'
  | 'unsettled_ledger_transfer'
  | 'amount_mismatch'
  | 'account_mismatch'
  | 'transfer_not_posted'
  | 'duplicate_event'
  | 'detached_entry'
  | 'batch_total_mismatch'
  | 'carried_chain_break'
  | 'payout_missing'
  | 'payout_mismatch'
  | 'unexpected_payout';

export interface Discrepancy {
  kind: DiscrepancyKind;
  detail: string;
  ids: string[];
  expected: bigint;
  actual: bigint;
}

export interface Reconciliation {
  batch: store.Batch;
  discrepancies: Discrepancy[];
  linesChecked: number;
  ledgerTransfersChecked: number;
  eventsChecked: number;
}

const LOOKUP_CHUNK = 8190;
/**
 * Transfers per page of the account's transfers: the account may hold any transfer (the merchant's own, with up
 * to ~28 KB of metadata each), and a page must fit in one gRPC message (32 MB): 1,000 is at most ~28 MB.
 */
const PAGE = 1_000;

/**
 * Three-way reconciliation of one batch: its lines (settlement_entries), the events settlement consumed
 * (settlement_events) and the ledger (the settled account's transfers). Every line must be a ledger transfer
 * of that amount on that account, in the right direction; every event effective in the range the batch
 * accounts for must have its lines (in some batch: a late event's lines are in a later one); every posted
 * ledger transfer of the account in that range must be a line of some batch or a batch's payout; the batch's
 * totals must be its lines' sums; what it carried in must be what the previous batch carried out; its payout
 * must be in the ledger as recorded. Nothing is corrected: each difference is listed with its ids.
 *
 * The range a batch accounts for is its window plus what no batch covers before it: from the end of the
 * previous batch of the account and currency (from the beginning for the first batch) to its window's end.
 * The closer makes no batch for a window without entries, so a movement whose event was never consumed can
 * sit in such a skipped window; it is reported by the next batch, and every instant is checked by one batch.
 */
export async function reconcileBatch(pool: Pool, ledger: SettlementLedger, batch: store.Batch): Promise<Reconciliation> {
  const found: Discrepancy[] = [];
  const report = (kind: DiscrepancyKind, detail: string, ids: string[], expected = 0n, actual = 0n) => found.push({ kind, detail, ids, expected, actual });

  // 1. The batch against its own lines.
  const lines = await store.batchEntries(pool, batch.id);
  const sum = (kind: store.EntryKind) => lines.filter((l) => l.kind === kind).reduce((s, l) => s + l.amount, 0n);
  const totals: [string, bigint, bigint][] = [
    ['gross_captured', batch.grossCaptured, sum('capture')],
    ['refunds', batch.refunds, sum('refund')],
    ['fees', batch.fees, sum('fee')],
    ['line_count', BigInt(batch.lineCount), BigInt(lines.length)],
  ];
  for (const [name, recorded, fromLines] of totals) {
    if (recorded !== fromLines) report('batch_total_mismatch', `${name} is ${recorded}, its lines add up to ${fromLines}`, [batch.id], recorded, fromLines);
  }

  // 1b. The chain of carried amounts: what the batch took in as owed is what the account's previous batch left
  // owed (and the payouts refused since). A break is money owed that appeared or vanished between two batches.
  const chain = await store.carriedInto(pool, batch);
  if (batch.carriedIn !== chain.carried) {
    report('carried_chain_break', `carried_in is ${batch.carriedIn}, ${chain.previousId ? 'the previous batch carried out' : 'the first batch of the account carries in'} ${chain.carried}`, [batch.id, ...(chain.previousId ? [chain.previousId] : [])], chain.carried, batch.carriedIn);
  }

  // 2. Lines against the ledger: the same transfer, amount and account, in the direction of its kind.
  const ledgerById = new Map<string, Transfer>();
  for (let i = 0; i < lines.length; i += LOOKUP_CHUNK) {
    for (const t of await ledger.lookupTransfers(lines.slice(i, i + LOOKUP_CHUNK).map((l) => l.transferId))) ledgerById.set(t.id, t);
  }
  for (const line of lines) {
    const t = ledgerById.get(line.transferId);
    if (!t) {
      report('missing_in_ledger', `${line.kind} line of payment ${line.paymentId} has no ledger transfer`, [line.transferId, line.paymentId, line.eventId], line.amount, 0n);
      continue;
    }
    const onAccount = line.kind === 'capture' ? t.creditAccountId : t.debitAccountId;
    if (onAccount !== batch.accountId) {
      report('account_mismatch', `${line.kind} line: the ledger transfer ${line.kind === 'capture' ? 'credits' : 'debits'} ${onAccount}, not the settled account`, [line.transferId, batch.accountId]);
    }
    if (t.amount !== line.amount) report('amount_mismatch', `${line.kind} line differs from the ledger transfer`, [line.transferId, line.paymentId], t.amount, line.amount);
    // A reservation (pending, whatever became of it) or the void of one moved no money: the batch settled a movement
    // the ledger does not hold. A capture on a posted reservation should name the transfer that posted it.
    if (t.flags?.pending || t.flags?.voidPendingTransfer) {
      const what = t.flags.pending ? `a pending transfer (${pendingStateToJSON(t.pendingState).replace('PENDING_STATE_', '').toLowerCase()})` : 'the void of a pending transfer';
      report('transfer_not_posted', `${line.kind} line's ledger transfer is ${what}, not a posted movement`, [line.transferId, line.paymentId, line.eventId], store.signedAmount(line.kind, line.amount), 0n);
    }
  }

  // The range this batch accounts for: its window, and the windows skipped since the previous batch ended.
  const previousEnd = await store.previousBatchEnd(pool, batch);
  const from = previousEnd ?? 0n;

  // An entry is effective when its event was (same transaction), and closing at the batch's cut took every entry
  // effective before it: an entry its event made in this range belongs to this batch. Anywhere else, the payout
  // that covered it went without it: in no batch, it is not paid yet; in a later batch, paid late (and the
  // window's report is wrong); in a batch that does not exist, never paid.
  const reportDetached = (transferId: string, eventId: string, kind: store.EntryKind, entry: { batchId: string | null; amount: bigint }) =>
    report('detached_entry', `${kind} line effective in this batch's range is ${entry.batchId ? `in batch ${entry.batchId}` : 'in no batch'}, not in this one`, [transferId, eventId, ...(entry.batchId ? [entry.batchId] : [])], store.signedAmount(kind, entry.amount), 0n);

  // 3. Events consumed in the range against the lines (anywhere: late lines sit in a later batch).
  const events = await store.journalEvents(pool, batch.accountId, from, batch.windowEnd);
  const expectedLines = events.flatMap((e) => movementEntries(e).map((line) => ({ ...line, event: e })));
  const entries = await store.entriesOf(pool, [...new Set(expectedLines.map((l) => l.transferId))]);
  const seenTransfers = new Map<string, string>();
  const inRange = new Set(events.map((e) => e.eventId));
  for (const expected of expectedLines) {
    const earlier = seenTransfers.get(`${expected.kind}:${expected.transferId}`);
    if (earlier !== undefined) {
      report('duplicate_event', `events ${earlier} and ${expected.event.eventId} both report ${expected.kind} ${expected.transferId}; it was settled once`, [expected.transferId, earlier, expected.event.eventId]);
      continue;
    }
    seenTransfers.set(`${expected.kind}:${expected.transferId}`, expected.event.eventId);
    const entry = entries.get(expected.transferId);
    if (!entry) report('missing_line', `${expected.event.type} event of payment ${expected.event.paymentId} has no ${expected.kind} line in any batch`, [expected.transferId, expected.event.eventId, expected.event.paymentId], expected.amount, 0n);
    // The line came from another event effective outside this range (its line is in another batch): a duplicate
    // the check above cannot see, reported by the range of the event that made no line.
    else if (entry.eventId !== expected.event.eventId && !inRange.has(entry.eventId)) {
      report('duplicate_event', `events ${entry.eventId} and ${expected.event.eventId} both report ${expected.kind} ${expected.transferId}; it was settled once`, [expected.transferId, entry.eventId, expected.event.eventId]);
    } else if (entry.amount !== expected.amount) report('amount_mismatch', `${expected.kind} line differs from its event`, [expected.transferId, expected.event.eventId], expected.amount, entry.amount);
    if (entry && entry.eventId === expected.event.eventId && entry.batchId !== batch.id) reportDetached(expected.transferId, expected.event.eventId, expected.kind, entry);
  }

  // 4. The ledger's transfers of the account in the range against the lines and payouts of every batch.
  const ledgerTransfers = await accountTransfers(ledger, batch.accountId, from, batch.windowEnd);
  // Not the merchant's own transfers in and out of the account (/v1/transfers): its business, not settlement's, and
  // they cost settlement nothing (a payout is capped by what the account holds). As discrepancies they failed every
  // reconciliation of a merchant that uses transfers. Any other transfer outside the payment flow is reported.
  const settled = ledgerTransfers.filter((t) => !t.flags?.pending && !t.flags?.voidPendingTransfer && t.code !== TransferCode.payout && t.code !== TransferCode.merchantTransfer);
  const known = await store.entriesOf(pool, settled.map((t) => t.id));
  // Consumed and deliberately not paid out: a wallet payment's capture or refund (its event is journaled).
  const walletMoves = await store.walletMovements(pool, settled.filter((t) => !known.has(t.id)).map((t) => t.id));
  for (const t of settled) {
    if (!known.has(t.id) && !walletMoves.has(t.id)) report('unsettled_ledger_transfer', `ledger transfer (code ${t.code}) on the account is in no settlement batch${t.timestamp < batch.windowStart ? ' (it is before the window, where no batch covers the account)' : ''}`, [t.id], t.creditAccountId === batch.accountId ? t.amount : -t.amount, 0n);
  }
  const payouts = await store.payoutTransferIds(pool, batch.accountId);
  for (const t of ledgerTransfers.filter((x) => x.code === TransferCode.payout)) {
    if (!payouts.has(t.id)) report('unexpected_payout', 'payout transfer on the account made by no batch', [t.id], 0n, t.amount);
  }

  // 5. The batch's payout in the ledger.
  if (batch.payout > 0n && batch.status !== 'payout_failed') {
    const [payout] = await ledger.lookupTransfers([batch.payoutTransferId]);
    if (!payout) report('payout_missing', `payout of ${batch.payout} is not in the ledger (status ${batch.status})`, [batch.payoutTransferId, batch.id], batch.payout, 0n);
    // A payout not recorded yet (payout_pending: the process stopped after the ledger moved it) may have moved less than
    // decided, a balancing debit's amount: recorded, it is payout_short; until then any amount up to the payout is right.
    else if ((batch.status === 'payout_pending' ? payout.amount > batch.payout : payout.amount !== store.movedPayout(batch)) || payout.debitAccountId !== batch.accountId || payout.creditAccountId !== platformAccountId('payout_clearing', batch.currency)) {
      report('payout_mismatch', `payout transfer moves ${payout.amount} from ${payout.debitAccountId} to ${payout.creditAccountId}`, [batch.payoutTransferId, batch.id], store.movedPayout(batch), payout.amount);
    }
  }

  return { batch, discrepancies: found, linesChecked: lines.length, ledgerTransfersChecked: ledgerTransfers.length, eventsChecked: events.length };
}

/** Every ledger transfer of the account with a timestamp in [start, end), page by page. */
async function accountTransfers(ledger: SettlementLedger, accountId: string, start: bigint, end: bigint): Promise<Transfer[]> {
  const all: Transfer[] = [];
  let cursor = '';
  do {
    const page = await ledger.getAccountTransfers({ accountId, timestampMin: start > 0n ? start : 1n, timestampMax: end - 1n, limit: PAGE, cursor });
    all.push(...page.transfers);
    cursor = page.nextCursor;
  } while (cursor);
  return all;
}
