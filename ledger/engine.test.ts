import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { InvariantViolation } from '../lib/errors.js';
import { BatchEvaluator, type BatchState, type BalanceDelta } from './engine.js';
import {
  AccountFlag,
  MAX_BALANCE,
  PendingState,
  TransferFlag,
  type AccountInput,
  type AccountRow,
  type PendingRow,
  type Submission,
  type SubmissionResult,
  type TransferInput,
  type TransferRow,
} from './model.js';

/**
 * Unit tests of the pure evaluator (ledger/engine.ts) on hand-built BatchState maps: no database. The rules
 * are those of ledger/README.md ("Semantics").
 */

const BASE = 1_800_000_000_000_000_000n;
const SHARD = 5;
const SECOND = 1_000_000_000n;

function accountRow(fields: Partial<AccountRow> = {}): AccountRow {
  return {
    id: randomUUID(),
    ledger: 978,
    code: 1,
    flags: 0,
    debitsPending: 0n,
    debitsPosted: 0n,
    creditsPending: 0n,
    creditsPosted: 0n,
    metadata: {},
    timestamp: 1_000n,
    ...fields,
  };
}

function accountInput(fields: Partial<AccountInput> = {}): AccountInput {
  return { id: randomUUID(), ledger: 978, code: 1, flags: 0, metadata: {}, balancesNonZero: false, ...fields };
}

function transferInput(fields: Partial<TransferInput> = {}): TransferInput {
  return { id: randomUUID(), debitAccountId: '', creditAccountId: '', amount: 0n, pendingId: '', ledger: 978, code: 1, flags: 0, timeout: 0, metadata: {}, ...fields };
}

function transferRow(fields: Partial<TransferRow> = {}): TransferRow {
  return { id: randomUUID(), debitAccountId: '', creditAccountId: '', amount: 0n, pendingId: '', ledger: 978, code: 1, flags: 0, timeout: 0, metadata: {}, timestamp: 2_000n, ...fields };
}

/** A committed pending transfer: its transfer row, its pending-state row, and the reserved balances on its accounts. */
function committedPending(debit: AccountRow, credit: AccountRow, amount: bigint, fields: Partial<PendingRow> = {}): { row: TransferRow; pending: PendingRow } {
  const row = transferRow({ debitAccountId: debit.id, creditAccountId: credit.id, amount, ledger: debit.ledger, code: 1, flags: TransferFlag.pending, timestamp: 3_000n });
  const pending: PendingRow = {
    id: row.id,
    debitAccountId: debit.id,
    creditAccountId: credit.id,
    amount,
    ledger: debit.ledger,
    code: 1,
    expiresAt: 0n,
    state: PendingState.pending,
    shard: SHARD,
    resolvedBy: '',
    resolvedAt: 0n,
    ...fields,
  };
  if (pending.state === PendingState.pending) {
    debit.debitsPending += amount;
    credit.creditsPending += amount;
  }
  return { row, pending };
}

function batchState(accounts: AccountRow[], transfers: TransferRow[] = [], pendings: PendingRow[] = [], partial?: string[]): BatchState {
  return {
    accounts: new Map(accounts.map((a) => [a.id, a])),
    transfers: new Map(transfers.map((t) => [t.id, t])),
    pendings: new Map(pendings.map((p) => [p.id, p])),
    failedTransferIds: new Set(),
    ...(partial ? { partialAccounts: new Set(partial) } : {}),
  };
}

const balances = (a: AccountRow) => [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted];
const transfers = (...events: TransferInput[]): Submission => ({ kind: 'transfers', events });
const accounts = (...events: AccountInput[]): Submission => ({ kind: 'accounts', events });

function codes(result: SubmissionResult | undefined): string[] {
  assert.ok(result && result.kind !== 'expirations');
  return result.results.map((r) => r.code);
}
function stamps(result: SubmissionResult | undefined): bigint[] {
  assert.ok(result && result.kind !== 'expirations');
  return result.results.map((r) => r.timestamp);
}

describe('ledger engine: BatchEvaluator (pure, no database)', () => {
  describe('timestamps', () => {
    it('every event takes the slot base + its position in the batch, across submissions; failures answer 0', () => {
      const a = accountRow();
      const b = accountRow();
      const existing = transferRow({ debitAccountId: a.id, creditAccountId: b.id, amount: 7n, timestamp: 42n });
      const state = batchState([a, b], [existing]);
      const newAccount = accountInput();
      const t1 = transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 5n });
      const zero = transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 0n });
      const retry = transferInput({ id: existing.id, debitAccountId: a.id, creditAccountId: b.id, amount: 7n });
      const t2 = transferInput({ debitAccountId: b.id, creditAccountId: newAccount.id, amount: 1n });
      const openChain = [transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 1n, flags: TransferFlag.linked }), transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 1n, flags: TransferFlag.linked })];
      const last = transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 2n });

      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([accounts(newAccount), transfers(t1, zero, retry, t2), transfers(...openChain), transfers(last)]);

      assert.deepEqual(codes(effects.results[0]), ['ok']);
      assert.deepEqual(stamps(effects.results[0]), [BASE]);
      assert.deepEqual(codes(effects.results[1]), ['ok', 'amount_must_be_positive', 'exists', 'ok']);
      // `exists` answers the existing object's timestamp; a failure 0; but each still used its slot.
      assert.deepEqual(stamps(effects.results[1]), [BASE + 1n, 0n, 42n, BASE + 4n]);
      assert.deepEqual(codes(effects.results[2]), ['linked_event_failed', 'linked_event_chain_open']);
      assert.deepEqual(stamps(effects.results[2]), [0n, 0n]);
      assert.deepEqual(stamps(effects.results[3]), [BASE + 7n]);
      assert.equal(effects.lastTimestamp, BASE + 7n);
      assert.deepEqual(effects.newAccounts.map((x) => [x.id, x.timestamp]), [[newAccount.id, BASE]]);
      assert.deepEqual(effects.newTransfers.map((x) => [x.id, x.timestamp]), [[t1.id, BASE + 1n], [t2.id, BASE + 4n], [last.id, BASE + 7n]]);
      assert.deepEqual(effects.events.map((e) => e.timestamp), [BASE, BASE + 1n, BASE + 4n, BASE + 7n]);
    });

    it('every pending id of an expiration takes a slot, expired or not', () => {
      const a = accountRow();
      const b = accountRow();
      const live = committedPending(a, b, 10n, { expiresAt: BASE + 3600n * SECOND });
      const due = committedPending(a, b, 20n, { expiresAt: BASE - 1n });
      const state = batchState([a, b], [live.row, due.row], [live.pending, due.pending]);
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([{ kind: 'expirations', pendingIds: [randomUUID(), live.row.id, due.row.id] }]);
      assert.deepEqual(effects.results, [{ kind: 'expirations', expired: 1 }]);
      assert.equal(effects.lastTimestamp, BASE + 2n);
      assert.equal(due.pending.resolvedAt, BASE + 2n);
      assert.equal(due.pending.state, PendingState.expired);
      assert.equal(live.pending.state, PendingState.pending);
    });
  });

  describe('linked chains', () => {
    it('a failing event rolls back every change of its chain: balances, pending states, new rows, effects', () => {
      const a = accountRow({ flags: AccountFlag.history, creditsPosted: 100n });
      const b = accountRow({ debitsPosted: 100n });
      const c = accountRow();
      const p = committedPending(a, b, 30n);
      const state = batchState([a, b, c], [p.row], [p.pending]);
      const before = [a, b, c].map(balances);
      const pendingBefore = { ...p.pending };
      const newAccountInChain = accountInput({ flags: AccountFlag.linked });

      const chain = [
        transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 10n, flags: TransferFlag.linked }),
        transferInput({ pendingId: p.row.id, amount: 20n, ledger: 0, code: 0, flags: TransferFlag.linked | TransferFlag.postPendingTransfer }),
        transferInput({ debitAccountId: a.id, creditAccountId: c.id, amount: 5n, timeout: 60, flags: TransferFlag.linked | TransferFlag.pending }),
        transferInput({ debitAccountId: c.id, creditAccountId: c.id, amount: 1n, flags: TransferFlag.linked }), // accounts_must_be_different
        transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 1n }),
      ];
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([
        accounts(newAccountInChain, accountInput({ ledger: 0 })),
        transfers(...chain),
      ]);

      assert.deepEqual(codes(effects.results[0]), ['linked_event_failed', 'ledger_must_not_be_zero']);
      assert.deepEqual(codes(effects.results[1]), ['linked_event_failed', 'linked_event_failed', 'linked_event_failed', 'accounts_must_be_different', 'linked_event_failed']);
      assert.deepEqual(stamps(effects.results[1]), [0n, 0n, 0n, 0n, 0n]);
      assert.deepEqual([a, b, c].map(balances), before);
      assert.deepEqual(p.pending, pendingBefore);
      assert.deepEqual([...state.pendings.keys()], [p.row.id]);
      assert.deepEqual([...state.transfers.keys()], [p.row.id]);
      assert.deepEqual([...state.accounts.keys()], [a.id, b.id, c.id]);
      assert.deepEqual(effects.newAccounts, []);
      assert.deepEqual(effects.newTransfers, []);
      assert.deepEqual(effects.balanceDeltas, []);
      assert.deepEqual(effects.newPendings, []);
      assert.deepEqual(effects.resolvedPendings, []);
      assert.deepEqual(effects.history, []);
      assert.deepEqual(effects.events, []);
    });

    it('after a rolled-back chain, later events of the batch see the restored state', () => {
      const a = accountRow();
      const b = accountRow();
      const p = committedPending(a, b, 30n);
      const state = batchState([a, b], [p.row], [p.pending]);
      const post = (flags: number) => transferInput({ pendingId: p.row.id, ledger: 0, code: 0, flags: flags | TransferFlag.postPendingTransfer });
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([
        transfers(post(TransferFlag.linked), transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 0n })),
        transfers(post(0)),
      ]);
      assert.deepEqual(codes(effects.results[0]), ['linked_event_failed', 'amount_must_be_positive']);
      assert.deepEqual(codes(effects.results[1]), ['ok']);
      assert.deepEqual([balances(a), balances(b)], [[0n, 30n, 0n, 0n], [0n, 0n, 0n, 30n]]);
      assert.equal(effects.resolvedPendings.length, 1);
      assert.equal(effects.resolvedPendings[0]!.state, PendingState.posted);
      assert.equal(effects.resolvedPendings[0]!.resolvedAt, BASE + 2n);
    });

    it('exists inside a chain fails the chain (exists keeps its code and timestamp); alone it is a success', () => {
      const a = accountRow();
      const b = accountRow();
      const existing = transferRow({ debitAccountId: a.id, creditAccountId: b.id, amount: 3n, timestamp: 77n });
      const state = batchState([a, b], [existing]);
      const again = transferInput({ id: existing.id, debitAccountId: a.id, creditAccountId: b.id, amount: 3n });
      const fresh = transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 4n, flags: TransferFlag.linked });
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(fresh, again), transfers(again)]);
      assert.deepEqual(effects.results[0], { kind: 'transfers', results: [{ code: 'linked_event_failed', timestamp: 0n }, { code: 'exists', timestamp: 77n }] });
      assert.deepEqual(effects.results[1], { kind: 'transfers', results: [{ code: 'exists', timestamp: 77n }] });
      assert.deepEqual([balances(a), balances(b)], [[0n, 0n, 0n, 0n], [0n, 0n, 0n, 0n]]);
      assert.deepEqual(effects.newTransfers, []);
    });

    it('a chain open at the end of a submission is not evaluated, and does not swallow the next submission', () => {
      const a = accountRow();
      const b = accountRow();
      const state = batchState([a, b]);
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([
        transfers(
          transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 1n }),
          transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 2n, flags: TransferFlag.linked }),
          transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 3n, flags: TransferFlag.linked }),
        ),
        transfers(transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 4n })),
      ]);
      assert.deepEqual(codes(effects.results[0]), ['ok', 'linked_event_failed', 'linked_event_chain_open']);
      assert.deepEqual(codes(effects.results[1]), ['ok']);
      assert.deepEqual(balances(a), [0n, 5n, 0n, 0n]);
    });
  });

  describe('effects', () => {
    it('contain exactly what committed, in order: transfers, deltas, pendings, history, events', () => {
      const h = accountRow({ flags: AccountFlag.history, creditsPosted: 1_000n });
      const b = accountRow({ debitsPosted: 1_000n });
      const limited = accountRow({ flags: AccountFlag.debitsMustNotExceedCredits, creditsPosted: 50n });
      const untouched = accountRow();
      const p = committedPending(h, b, 40n);
      const old = transferRow({ debitAccountId: h.id, creditAccountId: b.id, amount: 9n, timestamp: 55n });
      const state = batchState([h, b, limited, untouched], [p.row, old], [p.pending]);
      const hBefore = balances(h);

      const x1 = transferInput({ debitAccountId: h.id, creditAccountId: b.id, amount: 10n, metadata: { order: 'x1' } });
      const y1 = transferInput({ debitAccountId: b.id, creditAccountId: h.id, amount: 3n, flags: TransferFlag.linked });
      const y2 = transferInput({ debitAccountId: limited.id, creditAccountId: b.id, amount: 100n }); // exceeds_credits
      const q = transferInput({ debitAccountId: h.id, creditAccountId: b.id, amount: 7n, timeout: 60, flags: TransferFlag.pending });
      const post = transferInput({ pendingId: p.row.id, amount: 25n, ledger: 0, code: 0, flags: TransferFlag.postPendingTransfer });
      const retry = transferInput({ id: old.id, debitAccountId: h.id, creditAccountId: b.id, amount: 9n });
      const n = accountInput({ metadata: { owner: 'n' } });

      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(x1, y1, y2, q, post, retry), accounts(n)]);
      assert.deepEqual(codes(effects.results[0]), ['ok', 'linked_event_failed', 'exceeds_credits', 'ok', 'ok', 'exists']);
      assert.deepEqual(codes(effects.results[1]), ['ok']);

      const [tx1, tq, tpost, tn] = [BASE, BASE + 3n, BASE + 4n, BASE + 6n];
      assert.deepEqual(effects.newTransfers, [
        { ...x1, timestamp: tx1 },
        { ...q, timestamp: tq },
        // A post records the pending transfer's accounts, ledger and code, and the posted amount.
        { id: post.id, debitAccountId: h.id, creditAccountId: b.id, amount: 25n, pendingId: p.row.id, ledger: 978, code: 1, flags: TransferFlag.postPendingTransfer, timeout: 0, metadata: {}, timestamp: tpost },
      ]);
      assert.deepEqual(effects.newAccounts, [{ id: n.id, ledger: 978, code: 1, flags: 0, debitsPending: 0n, debitsPosted: 0n, creditsPending: 0n, creditsPosted: 0n, metadata: { owner: 'n' }, timestamp: tn }]);
      assert.deepEqual(effects.newPendings, [
        { id: q.id, debitAccountId: h.id, creditAccountId: b.id, amount: 7n, ledger: 978, code: 1, expiresAt: tq + 60n * SECOND, state: PendingState.pending, shard: SHARD, resolvedBy: '', resolvedAt: 0n },
      ]);
      assert.deepEqual(effects.resolvedPendings, [
        { id: p.row.id, debitAccountId: h.id, creditAccountId: b.id, amount: 40n, ledger: 978, code: 1, expiresAt: 0n, state: PendingState.posted, shard: SHARD, resolvedBy: post.id, resolvedAt: tpost },
      ]);
      const byAccount = (d: BalanceDelta[]) => new Map(d.map((x) => [x.accountId, x]));
      // The untouched, the limited (whose event failed) and the new account (no movement) have no delta.
      assert.deepEqual(byAccount(effects.balanceDeltas), byAccount([
        { accountId: h.id, debitsPending: 7n - 40n, debitsPosted: 10n + 25n, creditsPending: 0n, creditsPosted: 0n },
        { accountId: b.id, debitsPending: 0n, debitsPosted: 0n, creditsPending: 7n - 40n, creditsPosted: 10n + 25n },
      ]));
      assert.equal(effects.balanceDeltas.length, 2);
      // History only for the history account, after each of its committed changes, with the balances then.
      const [dp, dpo, cp, cpo] = hBefore as [bigint, bigint, bigint, bigint];
      assert.deepEqual(effects.history, [
        { accountId: h.id, timestamp: tx1, transferId: x1.id, debitsPending: dp, debitsPosted: dpo + 10n, creditsPending: cp, creditsPosted: cpo },
        { accountId: h.id, timestamp: tq, transferId: q.id, debitsPending: dp + 7n, debitsPosted: dpo + 10n, creditsPending: cp, creditsPosted: cpo },
        { accountId: h.id, timestamp: tpost, transferId: post.id, debitsPending: dp + 7n - 40n, debitsPosted: dpo + 35n, creditsPending: cp, creditsPosted: cpo },
      ]);
      assert.deepEqual(
        effects.events.map((e) => [e.type, e.aggregateId, e.sequence, e.timestamp, e.transfer?.id ?? e.account?.id]),
        [
          ['ledger.transfer.posted', x1.id, 1, tx1, x1.id],
          ['ledger.transfer.pending', q.id, 1, tq, q.id],
          ['ledger.transfer.posted', p.row.id, 2, tpost, post.id],
          ['ledger.account.created', n.id, 1, tn, n.id],
        ],
      );
      assert.equal(effects.lastTimestamp, tn);
    });

    it('void releases the pending amount and records the pending amount', () => {
      const a = accountRow();
      const b = accountRow();
      const p = committedPending(a, b, 40n);
      const state = batchState([a, b], [p.row], [p.pending]);
      const voids = transferInput({ pendingId: p.row.id, amount: 40n, ledger: 0, code: 0, flags: TransferFlag.voidPendingTransfer });
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(voids)]);
      assert.deepEqual(codes(effects.results[0]), ['ok']);
      assert.deepEqual([balances(a), balances(b)], [[0n, 0n, 0n, 0n], [0n, 0n, 0n, 0n]]);
      assert.equal(effects.newTransfers[0]!.amount, 40n);
      assert.deepEqual(effects.resolvedPendings.map((x) => [x.state, x.resolvedBy]), [[PendingState.voided, voids.id]]);
      assert.deepEqual(effects.events.map((e) => [e.type, e.aggregateId, e.sequence]), [['ledger.transfer.voided', p.row.id, 2]]);
    });

    it('a pending created and posted in the same batch is one new pending in its final state, not a resolved one', () => {
      const a = accountRow();
      const b = accountRow();
      const state = batchState([a, b]);
      const q = transferInput({ debitAccountId: a.id, creditAccountId: b.id, amount: 9n, flags: TransferFlag.pending });
      const post = transferInput({ pendingId: q.id, amount: 4n, ledger: 0, code: 0, flags: TransferFlag.postPendingTransfer });
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(q, post)]);
      assert.deepEqual(codes(effects.results[0]), ['ok', 'ok']);
      assert.deepEqual(effects.newPendings.map((x) => [x.id, x.state, x.resolvedBy, x.resolvedAt]), [[q.id, PendingState.posted, post.id, BASE + 1n]]);
      assert.deepEqual(effects.resolvedPendings, []);
      assert.deepEqual([balances(a), balances(b)], [[0n, 4n, 0n, 0n], [0n, 0n, 0n, 4n]]);
    });

    it('expiry releases the amount, records a history row keyed by the pending id and an expired event, and no transfer', () => {
      const h = accountRow({ flags: AccountFlag.history });
      const b = accountRow();
      const p = committedPending(h, b, 15n, { expiresAt: BASE });
      const state = batchState([h, b], [p.row], [p.pending]);
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([{ kind: 'expirations', pendingIds: [p.row.id] }]);
      assert.deepEqual(effects.results, [{ kind: 'expirations', expired: 1 }]);
      assert.deepEqual([balances(h), balances(b)], [[0n, 0n, 0n, 0n], [0n, 0n, 0n, 0n]]);
      assert.deepEqual(effects.newTransfers, []);
      assert.deepEqual(effects.resolvedPendings.map((x) => [x.id, x.state, x.resolvedBy, x.resolvedAt]), [[p.row.id, PendingState.expired, '', BASE]]);
      assert.deepEqual(effects.history, [{ accountId: h.id, timestamp: BASE, transferId: p.row.id, debitsPending: 0n, debitsPosted: 0n, creditsPending: 0n, creditsPosted: 0n }]);
      assert.deepEqual(effects.events.map((e) => [e.type, e.aggregateId, e.sequence, e.transfer?.id]), [['ledger.transfer.expired', p.row.id, 2, p.row.id]]);
    });

    it('accounts whose balances were not read (partial) get exact deltas and may go below zero in the batch', () => {
      const a = accountRow();
      const b = accountRow();
      // Loaded as partial: balances start at zero, although the pending amount is reserved in the database.
      const p = committedPending(accountRow({ id: a.id }), accountRow({ id: b.id }), 40n);
      const state = batchState([a, b], [p.row], [p.pending], [a.id, b.id]);
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(transferInput({ pendingId: p.row.id, amount: 0n, ledger: 0, code: 0, flags: TransferFlag.postPendingTransfer }))]);
      assert.deepEqual(codes(effects.results[0]), ['ok']);
      assert.deepEqual(effects.balanceDeltas, [
        { accountId: a.id, debitsPending: -40n, debitsPosted: 40n, creditsPending: 0n, creditsPosted: 0n },
        { accountId: b.id, debitsPending: 0n, debitsPosted: 0n, creditsPending: -40n, creditsPosted: 40n },
      ]);
    });
  });

  describe('checks in the documented order', () => {
    it('transfers without post/void: each check fires only when every earlier one passes', () => {
      const d = accountRow();
      const c = accountRow();
      const usd = accountRow({ ledger: 840 });
      const closed = accountRow({ flags: AccountFlag.closed });
      const dLimited = accountRow({ flags: AccountFlag.debitsMustNotExceedCredits, creditsPosted: 10n });
      const cLimited = accountRow({ flags: AccountFlag.creditsMustNotExceedDebits, debitsPosted: 10n });
      const full = accountRow({ debitsPosted: MAX_BALANCE - 5n });
      const existing = transferRow({ debitAccountId: d.id, creditAccountId: c.id, amount: 1n });
      const state = batchState([d, c, usd, closed, dLimited, cLimited, full], [existing]);
      const unknown = randomUUID();
      const base = { debitAccountId: d.id, creditAccountId: c.id, amount: 1n };
      const events: [TransferInput, string][] = [
        [transferInput({ ...base, flags: TransferFlag.pending | TransferFlag.voidPendingTransfer, pendingId: unknown, timeout: 5, ledger: 0, code: 0, amount: 0n }), 'flags_are_mutually_exclusive'],
        [transferInput({ ...base, pendingId: unknown, timeout: 5, ledger: 0, code: 0, amount: 0n }), 'pending_id_must_be_empty'],
        [transferInput({ ...base, timeout: 5, ledger: 0, code: 0, amount: 0n }), 'timeout_reserved_for_pending_transfer'],
        [transferInput({ ...base, ledger: 0, code: 0, amount: 0n, creditAccountId: d.id }), 'ledger_must_not_be_zero'],
        [transferInput({ ...base, code: 0, amount: 0n, creditAccountId: d.id }), 'code_must_not_be_zero'],
        [transferInput({ ...base, amount: 0n, creditAccountId: d.id }), 'accounts_must_be_different'],
        [transferInput({ ...base, id: existing.id, amount: 0n }), 'amount_must_be_positive'],
        [transferInput({ ...base, id: existing.id, amount: 2n, debitAccountId: unknown }), 'exists_with_different_fields'],
        [transferInput({ ...base, debitAccountId: unknown, creditAccountId: randomUUID() }), 'debit_account_not_found'],
        [transferInput({ ...base, creditAccountId: unknown, ledger: 840 }), 'credit_account_not_found'],
        [transferInput({ ...base, creditAccountId: usd.id }), 'ledger_mismatch'],
        [transferInput({ ...base, ledger: 840 }), 'ledger_mismatch'],
        [transferInput({ ...base, creditAccountId: closed.id, amount: MAX_BALANCE + 1n }), 'account_closed'],
        [transferInput({ ...base, debitAccountId: dLimited.id, amount: MAX_BALANCE + 1n }), 'overflow'],
        [transferInput({ ...base, debitAccountId: full.id, creditAccountId: cLimited.id, amount: 6n }), 'overflow'],
        [transferInput({ ...base, debitAccountId: dLimited.id, creditAccountId: cLimited.id, amount: 11n }), 'exceeds_credits'],
        [transferInput({ ...base, creditAccountId: cLimited.id, amount: 11n }), 'exceeds_debits'],
        [transferInput({ ...base, debitAccountId: full.id, creditAccountId: cLimited.id, amount: 6n, flags: TransferFlag.pending }), 'overflow'], // pending + posted
        [transferInput({ ...base, id: existing.id }), 'exists'],
        [transferInput({ ...base }), 'ok'],
      ];
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(...events.map(([e]) => e))]);
      assert.deepEqual(codes(effects.results[0]), events.map(([, code]) => code));
    });

    it('post and void: each check fires only when every earlier one passes', () => {
      const d = accountRow();
      const c = accountRow();
      const closedCredit = accountRow({ flags: AccountFlag.closed });
      const fullCredit = accountRow({ creditsPosted: MAX_BALANCE - 1n, debitsPosted: 0n });
      const single = transferRow({ debitAccountId: d.id, creditAccountId: c.id, amount: 1n });
      const p = committedPending(d, c, 50n);
      const posted = committedPending(d, c, 5n, { state: PendingState.posted });
      const voided = committedPending(d, c, 5n, { state: PendingState.voided });
      const expired = committedPending(d, c, 5n, { state: PendingState.expired });
      const due = committedPending(d, c, 5n, { expiresAt: BASE });
      const toClosed = committedPending(d, closedCredit, 5n);
      const toFull = committedPending(d, fullCredit, 5n);
      const existingPost = transferRow({ debitAccountId: d.id, creditAccountId: c.id, amount: 50n, pendingId: p.row.id, flags: TransferFlag.postPendingTransfer });
      const partialPost = transferRow({ debitAccountId: d.id, creditAccountId: c.id, amount: 20n, pendingId: p.row.id, flags: TransferFlag.postPendingTransfer });
      const all = [p, posted, voided, expired, due, toClosed, toFull];
      const state = batchState([d, c, closedCredit, fullCredit], [single, existingPost, partialPost, ...all.map((x) => x.row)], all.map((x) => x.pending));
      const POST = TransferFlag.postPendingTransfer;
      const VOID = TransferFlag.voidPendingTransfer;
      const selfId = randomUUID();
      const r = (fields: Partial<TransferInput>) => transferInput({ ledger: 0, code: 0, flags: POST, ...fields });
      const events: [TransferInput, string][] = [
        [r({ flags: POST | VOID, timeout: 1 }), 'flags_are_mutually_exclusive'],
        [r({ timeout: 1 }), 'pending_id_required'],
        [r({ id: selfId, pendingId: selfId, timeout: 1 }), 'pending_id_must_be_different'],
        [r({ pendingId: p.row.id, timeout: 1, id: existingPost.id }), 'timeout_reserved_for_pending_transfer'],
        [r({ pendingId: p.row.id, id: existingPost.id, amount: 3n }), 'exists_with_different_fields'],
        [r({ pendingId: p.row.id, id: existingPost.id, amount: 50n, debitAccountId: d.id }), 'exists'],
        // Amount 0 is the full pending amount (50): a retry of a partial post with it differs.
        [r({ pendingId: p.row.id, id: existingPost.id, debitAccountId: d.id }), 'exists'],
        [r({ pendingId: p.row.id, id: partialPost.id }), 'exists_with_different_fields'],
        [r({ pendingId: p.row.id, id: partialPost.id, amount: 20n }), 'exists'],
        [r({ pendingId: randomUUID(), debitAccountId: c.id }), 'pending_transfer_not_found'],
        [r({ pendingId: single.id, debitAccountId: c.id }), 'pending_transfer_not_pending'],
        [r({ pendingId: posted.row.id, debitAccountId: c.id, creditAccountId: d.id, ledger: 840, code: 9, amount: 99n }), 'pending_transfer_has_different_debit_account_id'],
        [r({ pendingId: posted.row.id, creditAccountId: d.id, ledger: 840, code: 9, amount: 99n }), 'pending_transfer_has_different_credit_account_id'],
        [r({ pendingId: posted.row.id, ledger: 840, code: 9, amount: 99n }), 'pending_transfer_has_different_ledger'],
        [r({ pendingId: posted.row.id, code: 9, amount: 99n }), 'pending_transfer_has_different_code'],
        [r({ pendingId: posted.row.id, amount: 6n }), 'exceeds_pending_amount'],
        [r({ pendingId: posted.row.id, amount: 4n, flags: VOID }), 'pending_transfer_has_different_amount'],
        [r({ pendingId: posted.row.id, amount: 5n, flags: VOID }), 'pending_transfer_already_posted'],
        [r({ pendingId: voided.row.id }), 'pending_transfer_already_voided'],
        [r({ pendingId: expired.row.id }), 'pending_transfer_expired'],
        // Not swept yet, but its expiry time is at or before this event's timestamp.
        [r({ pendingId: due.row.id, flags: VOID }), 'pending_transfer_expired'],
        [r({ pendingId: toClosed.row.id }), 'account_closed'],
        [r({ pendingId: toFull.row.id }), 'overflow'],
        [r({ pendingId: toClosed.row.id, flags: VOID }), 'ok'],
        [r({ pendingId: p.row.id, amount: 50n, debitAccountId: d.id, creditAccountId: c.id, ledger: 978, code: 1 }), 'ok'],
      ];
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(...events.map(([e]) => e))]);
      assert.deepEqual(codes(effects.results[0]), events.map(([, code]) => code));
    });

    it('limits count pending amounts; a pending transfer expires at its expiry time exactly', () => {
      const wallet = accountRow({ flags: AccountFlag.debitsMustNotExceedCredits, debitsPending: 60n, creditsPosted: 100n });
      const capped = accountRow({ flags: AccountFlag.creditsMustNotExceedDebits, creditsPending: 20n, debitsPosted: 30n });
      const other = accountRow();
      const src = accountRow();
      const atBase = committedPending(src, wallet, 1n, { expiresAt: BASE });
      const justAfter = committedPending(src, wallet, 1n, { expiresAt: BASE + 2n });
      const state = batchState([wallet, capped, other, src], [atBase.row, justAfter.row], [atBase.pending, justAfter.pending]);
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([
        transfers(
          transferInput({ pendingId: atBase.row.id, ledger: 0, code: 0, flags: TransferFlag.postPendingTransfer }), // at BASE: expires at BASE
          transferInput({ pendingId: justAfter.row.id, ledger: 0, code: 0, flags: TransferFlag.voidPendingTransfer }), // at BASE + 1: expires at BASE + 2
          transferInput({ debitAccountId: wallet.id, creditAccountId: other.id, amount: 41n }),
          transferInput({ debitAccountId: wallet.id, creditAccountId: other.id, amount: 40n, flags: TransferFlag.pending }),
          transferInput({ debitAccountId: other.id, creditAccountId: capped.id, amount: 11n }),
          transferInput({ debitAccountId: other.id, creditAccountId: capped.id, amount: 10n, flags: TransferFlag.pending }),
        ),
      ]);
      assert.deepEqual(codes(effects.results[0]), ['pending_transfer_expired', 'ok', 'exceeds_credits', 'ok', 'exceeds_debits', 'ok']);
      assert.deepEqual(balances(wallet), [100n, 0n, 1n, 100n]);
      assert.deepEqual(balances(capped), [0n, 30n, 30n, 0n]);
    });

    it('accounts: flags, ledger, code, balances, then exists / exists_with_different_fields', () => {
      const existing = accountRow({ flags: AccountFlag.history, metadata: { k: 'v' }, timestamp: 99n });
      const state = batchState([existing]);
      const both = AccountFlag.debitsMustNotExceedCredits | AccountFlag.creditsMustNotExceedDebits;
      const events: [AccountInput, string][] = [
        [accountInput({ id: existing.id, flags: both, ledger: 0, code: 0, balancesNonZero: true }), 'flags_are_mutually_exclusive'],
        [accountInput({ id: existing.id, ledger: 0, code: 0, balancesNonZero: true }), 'ledger_must_not_be_zero'],
        [accountInput({ id: existing.id, code: 0, balancesNonZero: true }), 'code_must_not_be_zero'],
        [accountInput({ id: existing.id, balancesNonZero: true }), 'balances_must_be_zero'],
        [accountInput({ id: existing.id, flags: AccountFlag.history, metadata: { k: 'w' } }), 'exists_with_different_fields'],
        [accountInput({ id: existing.id, metadata: { k: 'v' } }), 'exists_with_different_fields'],
        [accountInput({ id: existing.id, flags: AccountFlag.history, metadata: { k: 'v' } }), 'exists'],
        [accountInput(), 'ok'],
      ];
      const effects = new BatchEvaluator(state, BASE, SHARD).evaluate([accounts(...events.map(([e]) => e))]);
      assert.deepEqual(codes(effects.results[0]), events.map(([, code]) => code));
      assert.equal(stamps(effects.results[0])[6], 99n);
    });
  });

  describe('invariants', () => {
    it('an account with a limit that the loaded state already breaks cannot be changed', () => {
      const broken = accountRow({ flags: AccountFlag.debitsMustNotExceedCredits, debitsPosted: 10n });
      const other = accountRow({ debitsPosted: 0n, creditsPosted: 10n });
      const state = batchState([broken, other]);
      // A credit passes every rule (only debits are checked against the limit), but leaves debits > credits.
      const evaluator = new BatchEvaluator(state, BASE, SHARD);
      assert.throws(() => evaluator.evaluate([transfers(transferInput({ debitAccountId: other.id, creditAccountId: broken.id, amount: 1n }))]), (e: unknown) => {
        assert.ok(e instanceof InvariantViolation, String(e));
        assert.match(e.message, /debits exceed credits/);
        return true;
      });
    });

    it('a pending transfer whose accounts are on two ledgers breaks the per-ledger balance when voided', () => {
      const eur = accountRow({ ledger: 978 });
      const usd = accountRow({ ledger: 840 });
      const p = committedPending(eur, usd, 10n);
      const state = batchState([eur, usd], [p.row], [p.pending]);
      assert.throws(
        () => new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(transferInput({ pendingId: p.row.id, ledger: 0, code: 0, flags: TransferFlag.voidPendingTransfer }))]),
        (e: unknown) => e instanceof InvariantViolation && /moved apart/.test(e.message),
      );
    });

    it('a balance out of range in the loaded state (read in full) is refused', () => {
      const negative = accountRow({ debitsPending: -1n });
      const state = batchState([negative, accountRow()]);
      assert.throws(() => new BatchEvaluator(state, BASE, SHARD).evaluate([accounts(accountInput())]), (e: unknown) => e instanceof InvariantViolation && /out of range/.test(e.message));
      // The same row read as partial (deltas only) is not range-checked.
      const partial = batchState([negative], [], [], [negative.id]);
      assert.doesNotThrow(() => new BatchEvaluator(partial, BASE, SHARD).evaluate([accounts(accountInput())]));
    });

    it('a pending transfer without its pending-state row is an invariant violation, not a result code', () => {
      const a = accountRow();
      const b = accountRow();
      const p = committedPending(a, b, 10n);
      const state = batchState([a, b], [p.row], []);
      assert.throws(
        () => new BatchEvaluator(state, BASE, SHARD).evaluate([transfers(transferInput({ pendingId: p.row.id, ledger: 0, code: 0, flags: TransferFlag.voidPendingTransfer }))]),
        (e: unknown) => e instanceof InvariantViolation && /no pending state row/.test(e.message),
      );
    });
  });
});
