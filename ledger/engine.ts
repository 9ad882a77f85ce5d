import { invariant } from '../lib/errors.js';
import {
  AccountFlag,
  BALANCING_FLAGS,
  MAX_BALANCE,
  PendingState,
  TRANSIENT_TRANSFER_FAILURES,
  TransferFlag,
  hasFlag,
  metadataEqual,
  type AccountInput,
  type AccountResultCode,
  type AccountRow,
  type EventResult,
  type PendingRow,
  type Submission,
  type SubmissionResult,
  type TransferInput,
  type TransferResultCode,
  type TransferRow,
} from './model.js';

/**
 * Evaluates one shard batch in memory: every event in order against the state the batch transaction loaded
 * and locked, with linked chains applied all-or-nothing. Pure and synchronous: the store turns the effects
 * into a handful of multi-row statements. The rules are documented in ledger/README.md ("Semantics").
 */

export interface BatchState {
  /**
   * Every account any event of the batch can touch, mutated in place: full balances for accounts whose rules
   * read them, zero for the partial ones (see partialAccounts).
   */
  accounts: Map<string, AccountRow>;
  /** Existing transfers with ids used by the batch (as ids or pending ids). */
  transfers: Map<string, TransferRow>;
  /** Locked pending-transfer rows referenced by the batch; mutated in place. */
  pendings: Map<string, PendingRow>;
  /**
   * Spent transfer ids (an earlier event with the id failed transiently) among those the batch looked up; the
   * batch adds its own. Like transfers, not looked up for every event: the write checks (ledger/store.ts).
   */
  failedTransferIds: Set<string>;
  /**
   * Accounts whose balances were not read (no limit or history flag: no rule of the batch depends on them).
   * Their rows start at zero and the batch computes deltas; the store checks the sums against the per-slot
   * soft limit after writing (ledger/store.ts).
   */
  partialAccounts?: ReadonlySet<string>;
}

export type LedgerEventType =
  | 'ledger.account.created'
  | 'ledger.transfer.posted'
  | 'ledger.transfer.pending'
  | 'ledger.transfer.voided'
  | 'ledger.transfer.expired';

export interface LedgerEvent {
  type: LedgerEventType;
  /** The transfer (or account) the event is about; for post/void/expire, the pending transfer. */
  aggregateId: string;
  /** 1 for the creation of the aggregate, 2 for the resolution of a pending transfer. */
  sequence: number;
  timestamp: bigint;
  transfer?: TransferRow;
  account?: AccountRow;
}

export interface HistoryRow {
  accountId: string;
  timestamp: bigint;
  transferId: string;
  debitsPending: bigint;
  debitsPosted: bigint;
  creditsPending: bigint;
  creditsPosted: bigint;
}

export interface BalanceDelta {
  accountId: string;
  debitsPending: bigint;
  debitsPosted: bigint;
  creditsPending: bigint;
  creditsPosted: bigint;
}

/** A transfer event refused for a reason that depends on the moment (TRANSIENT_TRANSFER_FAILURES): its id is spent. */
export interface FailedTransfer {
  id: string;
  code: TransferResultCode;
  timestamp: bigint;
}

export interface BatchEffects {
  results: SubmissionResult[];
  newAccounts: AccountRow[];
  newTransfers: TransferRow[];
  failedTransfers: FailedTransfer[];
  /** Net change of every account whose balances changed (new accounts included): what the batch adds to its slot. */
  balanceDeltas: BalanceDelta[];
  /** Pending transfers created by the batch (final state). */
  newPendings: PendingRow[];
  /** Pending transfers that existed before the batch and changed state. */
  resolvedPendings: PendingRow[];
  history: HistoryRow[];
  events: LedgerEvent[];
  /** Timestamp of the last event slot the batch used (base + events - 1). */
  lastTimestamp: bigint;
}

type Undo = () => void;

const ZERO_BALANCES = [0n, 0n, 0n, 0n] as const;

export class BatchEvaluator {
  private readonly journal: Undo[] = [];
  private inChain = false;
  private readonly newAccounts: AccountRow[] = [];
  private readonly newTransfers: TransferRow[] = [];
  private readonly failedTransfers: FailedTransfer[] = [];
  private readonly newPendings: PendingRow[] = [];
  private readonly history: HistoryRow[] = [];
  private readonly events: LedgerEvent[] = [];
  private readonly originalBalances = new Map<string, readonly [bigint, bigint, bigint, bigint]>();
  private readonly originalPendingStates = new Map<string, PendingState>();
  private nextTimestamp: bigint;

  constructor(
    private readonly state: BatchState,
    private readonly baseTimestamp: bigint,
    private readonly shard: number,
  ) {
    this.nextTimestamp = baseTimestamp;
    for (const a of state.accounts.values()) {
      this.originalBalances.set(a.id, [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted]);
    }
    for (const p of state.pendings.values()) this.originalPendingStates.set(p.id, p.state);
  }

  evaluate(submissions: readonly Submission[]): BatchEffects {
    const results = submissions.map((s): SubmissionResult => {
      switch (s.kind) {
        case 'accounts':
          return { kind: 'accounts', results: this.evaluateChains(s.events, (e) => hasFlag(e.flags, AccountFlag.linked), (e, ts) => this.createAccount(e, ts)) };
        case 'transfers':
          return { kind: 'transfers', results: this.evaluateChains(s.events, (e) => hasFlag(e.flags, TransferFlag.linked), (e, ts) => this.createTransfer(e, ts)) };
        case 'expirations':
          return { kind: 'expirations', expired: s.pendingIds.filter((id) => this.expire(id, this.takeTimestamp())).length };
      }
    });
    this.journal.length = 0;
    this.assertInvariants();
    return {
      results,
      newAccounts: this.newAccounts,
      newTransfers: this.newTransfers,
      failedTransfers: this.failedTransfers,
      balanceDeltas: [...this.state.accounts.values()].filter((a) => this.balancesChanged(a)).map((a) => this.delta(a)),
      newPendings: this.newPendings,
      resolvedPendings: [...this.state.pendings.values()].filter((p) => this.originalPendingStates.has(p.id) && this.originalPendingStates.get(p.id) !== p.state),
      history: this.history,
      events: this.events,
      lastTimestamp: this.nextTimestamp - 1n,
    };
  }

  private takeTimestamp(): bigint {
    return this.nextTimestamp++;
  }

  /**
   * Applies events in order; a chain (events with the linked flag plus the first one without) succeeds or
   * fails as a whole. Every event takes one timestamp slot whether or not it succeeds.
   */
  private evaluateChains<E, Code extends string>(
    events: readonly E[],
    isLinked: (e: E) => boolean,
    apply: (e: E, timestamp: bigint) => EventResult<Code | 'ok' | 'exists'>,
  ): EventResult<Code | 'ok' | 'exists' | 'linked_event_failed' | 'linked_event_chain_open'>[] {
    type R = EventResult<Code | 'ok' | 'exists' | 'linked_event_failed' | 'linked_event_chain_open'>;
    const results: R[] = new Array(events.length);
    const failed: R = { code: 'linked_event_failed', timestamp: 0n };
    // A chain still open at the end of the submission fails whole, unevaluated.
    let openChainStart = events.length;
    if (events.length > 0 && isLinked(events[events.length - 1]!)) {
      openChainStart = events.length - 1;
      while (openChainStart > 0 && isLinked(events[openChainStart - 1]!)) openChainStart--;
    }
    let chainStart = -1;
    let chainMark = 0;
    let chainFailed = false;
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!;
      const timestamp = this.takeTimestamp();
      if (i >= openChainStart) {
        results[i] = i === events.length - 1 ? { code: 'linked_event_chain_open', timestamp: 0n } : failed;
        continue;
      }
      const linked = isLinked(event);
      if (chainStart < 0 && linked) {
        chainStart = i;
        chainMark = this.mark();
        chainFailed = false;
        this.inChain = true;
      }
      if (chainFailed) {
        results[i] = failed;
      } else {
        const result = apply(event, timestamp);
        const success = result.code === 'ok' || (result.code === 'exists' && chainStart < 0);
        if (chainStart >= 0 && !success) {
          // TigerBeetle's rule: within a chain, `exists` is a failure too; the chain must apply as one.
          this.rollback(chainMark);
          for (let j = chainStart; j < i; j++) results[j] = failed;
          chainFailed = true;
        }
        results[i] = result;
      }
      if (!linked) {
        chainStart = -1;
        chainFailed = false;
        this.inChain = false;
        this.journal.length = 0;
      }
    }
    return results;
  }

  // ---- accounts ----

  private createAccount(e: AccountInput, timestamp: bigint): EventResult<AccountResultCode> {
    const fail = (code: AccountResultCode): EventResult<AccountResultCode> => ({ code, timestamp: 0n });
    if (hasFlag(e.flags, AccountFlag.debitsMustNotExceedCredits) && hasFlag(e.flags, AccountFlag.creditsMustNotExceedDebits)) {
      return fail('flags_are_mutually_exclusive');
    }
    if (e.ledger === 0) return fail('ledger_must_not_be_zero');
    if (e.code === 0) return fail('code_must_not_be_zero');
    if (e.balancesNonZero) return fail('balances_must_be_zero');
    const existing = this.state.accounts.get(e.id);
    if (existing) {
      const same = existing.ledger === e.ledger && existing.code === e.code && (existing.flags & ~AccountFlag.linked) === (e.flags & ~AccountFlag.linked) && metadataEqual(existing.metadata, e.metadata);
      return same ? { code: 'exists', timestamp: existing.timestamp } : fail('exists_with_different_fields');
    }
    const account: AccountRow = {
      id: e.id,
      ledger: e.ledger,
      code: e.code,
      flags: e.flags & ~AccountFlag.linked,
      debitsPending: 0n,
      debitsPosted: 0n,
      creditsPending: 0n,
      creditsPosted: 0n,
      metadata: e.metadata,
      timestamp,
    };
    this.state.accounts.set(account.id, account);
    this.newAccounts.push(account);
    this.events.push({ type: 'ledger.account.created', aggregateId: account.id, sequence: 1, timestamp, account });
    this.undo(() => {
      this.state.accounts.delete(account.id);
      this.newAccounts.pop();
      this.events.pop();
    });
    return { code: 'ok', timestamp };
  }

  // ---- transfers ----

  private createTransfer(t: TransferInput, timestamp: bigint): EventResult<TransferResultCode> {
    const post = hasFlag(t.flags, TransferFlag.postPendingTransfer);
    const voids = hasFlag(t.flags, TransferFlag.voidPendingTransfer);
    const pending = hasFlag(t.flags, TransferFlag.pending);
    if ((post ? 1 : 0) + (voids ? 1 : 0) + (pending ? 1 : 0) > 1) return failure('flags_are_mutually_exclusive');
    // A post or void never takes an account beyond its limits (TigerBeetle): nothing to balance.
    if ((post || voids) && hasFlag(t.flags, BALANCING_FLAGS)) return failure('flags_are_mutually_exclusive');
    const result = post || voids ? this.resolvePending(t, timestamp, post) : this.createSingle(t, timestamp, pending);
    if (TRANSIENT_TRANSFER_FAILURES.has(result.code)) {
      // Spent for good, whatever its chain does: no undo (a chain's rollback does not give the id back).
      this.state.failedTransferIds.add(t.id);
      this.failedTransfers.push({ id: t.id, code: result.code, timestamp });
    }
    return result;
  }

  /** The answer to an event whose id exists or is spent; undefined for a new id. */
  private takenId(t: TransferInput, same: (existing: TransferRow) => boolean): EventResult<TransferResultCode> | undefined {
    if (this.state.failedTransferIds.has(t.id)) return failure('id_already_failed');
    const existing = this.state.transfers.get(t.id);
    return existing ? existsResult(existing, same(existing)) : undefined;
  }

  /**
   * The amount a transfer moves: `amount`, or with a balancing flag at most what the account's posted balance leaves
   * (TigerBeetle's balancing_debit / balancing_credit), which needs the account's true balances (read in full:
   * loadBatchState). Nothing left is the refusal the account's limit flag would give.
   */
  private balancedAmount(t: TransferInput, dr: AccountRow, cr: AccountRow): bigint | 'exceeds_credits' | 'exceeds_debits' {
    let amount = t.amount;
    if (hasFlag(t.flags, TransferFlag.balancingDebit)) {
      invariant(!this.state.partialAccounts?.has(dr.id), `balancing debit of account ${dr.id}, whose balances were not read`);
      const room = dr.creditsPosted - dr.debitsPosted - dr.debitsPending;
      if (room <= 0n) return 'exceeds_credits';
      if (room < amount) amount = room;
    }
    if (hasFlag(t.flags, TransferFlag.balancingCredit)) {
      invariant(!this.state.partialAccounts?.has(cr.id), `balancing credit of account ${cr.id}, whose balances were not read`);
      const room = cr.debitsPosted - cr.creditsPosted - cr.creditsPending;
      if (room <= 0n) return 'exceeds_debits';
      if (room < amount) amount = room;
    }
    return amount;
  }

  private createSingle(t: TransferInput, timestamp: bigint, pending: boolean): EventResult<TransferResultCode> {
    if (t.pendingId !== '') return failure('pending_id_must_be_empty');
    if (t.timeout !== 0 && !pending) return failure('timeout_reserved_for_pending_transfer');
    if (t.ledger === 0) return failure('ledger_must_not_be_zero');
    if (t.code === 0) return failure('code_must_not_be_zero');
    if (t.debitAccountId === t.creditAccountId) return failure('accounts_must_be_different');
    if (t.amount <= 0n) return failure('amount_must_be_positive');

    const taken = this.takenId(t, (existing) => sameSingleTransfer(existing, t));
    if (taken) return taken;

    const dr = this.state.accounts.get(t.debitAccountId);
    if (!dr) return failure('debit_account_not_found');
    const cr = this.state.accounts.get(t.creditAccountId);
    if (!cr) return failure('credit_account_not_found');
    if (dr.ledger !== cr.ledger || dr.ledger !== t.ledger) return failure('ledger_mismatch');
    if (hasFlag(dr.flags, AccountFlag.closed) || hasFlag(cr.flags, AccountFlag.closed)) return failure('account_closed');
    if (t.amount > MAX_BALANCE) return failure('overflow');

    const amount = this.balancedAmount(t, dr, cr);
    if (typeof amount === 'string') return failure(amount);
    if (pending) {
      if (dr.debitsPending + amount > MAX_BALANCE || cr.creditsPending + amount > MAX_BALANCE) return failure('overflow');
    } else if (dr.debitsPosted + amount > MAX_BALANCE || cr.creditsPosted + amount > MAX_BALANCE) {
      return failure('overflow');
    }
    if (dr.debitsPending + dr.debitsPosted + amount > MAX_BALANCE || cr.creditsPending + cr.creditsPosted + amount > MAX_BALANCE) {
      return failure('overflow');
    }
    if (hasFlag(dr.flags, AccountFlag.debitsMustNotExceedCredits) && dr.debitsPending + dr.debitsPosted + amount > dr.creditsPosted) {
      return failure('exceeds_credits');
    }
    if (hasFlag(cr.flags, AccountFlag.creditsMustNotExceedDebits) && cr.creditsPending + cr.creditsPosted + amount > cr.debitsPosted) {
      return failure('exceeds_debits');
    }

    // Field by field, not `{ ...t, timestamp }`: spreading an object with bigint fields takes V8's slow path
    // (microseconds per transfer).
    const row = this.recordTransfer({
      id: t.id,
      debitAccountId: t.debitAccountId,
      creditAccountId: t.creditAccountId,
      amount,
      pendingId: '',
      ledger: t.ledger,
      code: t.code,
      flags: t.flags,
      timeout: t.timeout,
      metadata: t.metadata,
      timestamp,
    });
    this.saveAccount(dr);
    this.saveAccount(cr);
    if (pending) {
      dr.debitsPending += amount;
      cr.creditsPending += amount;
      const expiresAt = t.timeout > 0 ? timestamp + BigInt(t.timeout) * 1_000_000_000n : 0n;
      const p: PendingRow = {
        id: t.id,
        debitAccountId: dr.id,
        creditAccountId: cr.id,
        amount,
        ledger: t.ledger,
        code: t.code,
        expiresAt,
        state: PendingState.pending,
        shard: this.shard,
        resolvedBy: '',
        resolvedAt: 0n,
      };
      this.state.pendings.set(p.id, p);
      this.newPendings.push(p);
      this.undo(() => {
        this.state.pendings.delete(p.id);
        this.newPendings.pop();
      });
    } else {
      dr.debitsPosted += amount;
      cr.creditsPosted += amount;
    }
    this.recordHistory(dr, row);
    this.recordHistory(cr, row);
    this.recordEvent({ type: pending ? 'ledger.transfer.pending' : 'ledger.transfer.posted', aggregateId: row.id, sequence: 1, timestamp, transfer: row });
    return { code: 'ok', timestamp };
  }

  private resolvePending(t: TransferInput, timestamp: bigint, post: boolean): EventResult<TransferResultCode> {
    if (t.pendingId === '') return failure('pending_id_required');
    if (t.pendingId === t.id) return failure('pending_id_must_be_different');
    if (t.timeout !== 0) return failure('timeout_reserved_for_pending_transfer');

    const taken = this.takenId(t, (existing) => sameResolution(existing, t, this.state.transfers.get(t.pendingId)?.amount));
    if (taken) return taken;

    const original = this.state.transfers.get(t.pendingId);
    if (!original) return failure('pending_transfer_not_found');
    if (!hasFlag(original.flags, TransferFlag.pending)) return failure('pending_transfer_not_pending');
    const p = this.state.pendings.get(t.pendingId);
    invariant(p, `pending transfer ${t.pendingId} has no pending state row`);
    if (t.debitAccountId !== '' && t.debitAccountId !== p.debitAccountId) return failure('pending_transfer_has_different_debit_account_id');
    if (t.creditAccountId !== '' && t.creditAccountId !== p.creditAccountId) return failure('pending_transfer_has_different_credit_account_id');
    if (t.ledger !== 0 && t.ledger !== p.ledger) return failure('pending_transfer_has_different_ledger');
    if (t.code !== 0 && t.code !== p.code) return failure('pending_transfer_has_different_code');
    const amount = post ? (t.amount === 0n ? p.amount : t.amount) : p.amount;
    if (post && t.amount > p.amount) return failure('exceeds_pending_amount');
    if (!post && t.amount !== 0n && t.amount !== p.amount) return failure('pending_transfer_has_different_amount');
    if (p.state === PendingState.posted) return failure('pending_transfer_already_posted');
    if (p.state === PendingState.voided) return failure('pending_transfer_already_voided');
    if (p.state === PendingState.expired || (p.expiresAt > 0n && p.expiresAt <= timestamp)) return failure('pending_transfer_expired');

    const dr = this.state.accounts.get(p.debitAccountId);
    const cr = this.state.accounts.get(p.creditAccountId);
    invariant(dr && cr, `accounts of pending transfer ${p.id} not loaded`);
    if (post && (hasFlag(dr.flags, AccountFlag.closed) || hasFlag(cr.flags, AccountFlag.closed))) return failure('account_closed');
    if (post && (dr.debitsPosted + amount > MAX_BALANCE || cr.creditsPosted + amount > MAX_BALANCE)) return failure('overflow');

    const row = this.recordTransfer({
      id: t.id,
      debitAccountId: p.debitAccountId,
      creditAccountId: p.creditAccountId,
      amount,
      pendingId: p.id,
      ledger: p.ledger,
      code: p.code,
      flags: t.flags,
      timeout: 0,
      metadata: t.metadata,
      timestamp,
    });
    this.saveAccount(dr);
    this.saveAccount(cr);
    this.savePending(p);
    dr.debitsPending -= p.amount;
    cr.creditsPending -= p.amount;
    if (post) {
      dr.debitsPosted += amount;
      cr.creditsPosted += amount;
    }
    p.state = post ? PendingState.posted : PendingState.voided;
    p.resolvedBy = t.id;
    p.resolvedAt = timestamp;
    this.recordHistory(dr, row);
    this.recordHistory(cr, row);
    this.recordEvent({ type: post ? 'ledger.transfer.posted' : 'ledger.transfer.voided', aggregateId: p.id, sequence: 2, timestamp, transfer: row });
    return { code: 'ok', timestamp };
  }

  /** Releases a pending transfer whose timeout has passed; false when it was resolved meanwhile. */
  private expire(pendingId: string, timestamp: bigint): boolean {
    const p = this.state.pendings.get(pendingId);
    if (!p || p.state !== PendingState.pending || p.expiresAt === 0n || p.expiresAt > timestamp) return false;
    const dr = this.state.accounts.get(p.debitAccountId);
    const cr = this.state.accounts.get(p.creditAccountId);
    invariant(dr && cr, `accounts of pending transfer ${p.id} not loaded`);
    this.saveAccount(dr);
    this.saveAccount(cr);
    this.savePending(p);
    dr.debitsPending -= p.amount;
    cr.creditsPending -= p.amount;
    p.state = PendingState.expired;
    p.resolvedAt = timestamp;
    const original = this.state.transfers.get(p.id);
    this.recordHistory(dr, { id: p.id, timestamp });
    this.recordHistory(cr, { id: p.id, timestamp });
    const event: LedgerEvent = { type: 'ledger.transfer.expired', aggregateId: p.id, sequence: 2, timestamp };
    if (original) event.transfer = original;
    this.recordEvent(event);
    return true;
  }

  // ---- bookkeeping with undo ----

  private recordTransfer(row: TransferRow): TransferRow {
    this.state.transfers.set(row.id, row);
    this.newTransfers.push(row);
    this.undo(() => {
      this.state.transfers.delete(row.id);
      this.newTransfers.pop();
    });
    return row;
  }

  private recordHistory(account: AccountRow, transfer: { id: string; timestamp: bigint }): void {
    if (!hasFlag(account.flags, AccountFlag.history)) return;
    this.history.push({
      accountId: account.id,
      timestamp: transfer.timestamp,
      transferId: transfer.id,
      debitsPending: account.debitsPending,
      debitsPosted: account.debitsPosted,
      creditsPending: account.creditsPending,
      creditsPosted: account.creditsPosted,
    });
    this.undo(() => this.history.pop());
  }

  private recordEvent(event: LedgerEvent): void {
    this.events.push(event);
    this.undo(() => this.events.pop());
  }

  private saveAccount(a: AccountRow): void {
    const [dp, dpo, cp, cpo] = [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted];
    this.undo(() => {
      a.debitsPending = dp;
      a.debitsPosted = dpo;
      a.creditsPending = cp;
      a.creditsPosted = cpo;
    });
  }

  private savePending(p: PendingRow): void {
    const { state, resolvedBy, resolvedAt } = p;
    this.undo(() => Object.assign(p, { state, resolvedBy, resolvedAt }));
  }


  /** Records how to undo a change; only inside a linked chain, the one place a change can be rolled back. */
  private undo(step: Undo): void {
    if (this.inChain) this.journal.push(step);
  }

  private mark(): number {
    return this.journal.length;
  }

  private rollback(mark: number): void {
    while (this.journal.length > mark) this.journal.pop()!();
  }

  private delta(a: AccountRow): BalanceDelta {
    const o = this.originalBalances.get(a.id) ?? ZERO_BALANCES;
    return {
      accountId: a.id,
      debitsPending: a.debitsPending - o[0],
      debitsPosted: a.debitsPosted - o[1],
      creditsPending: a.creditsPending - o[2],
      creditsPosted: a.creditsPosted - o[3],
    };
  }

  private balancesChanged(a: AccountRow): boolean {
    const o = this.originalBalances.get(a.id) ?? ZERO_BALANCES;
    return o[0] !== a.debitsPending || o[1] !== a.debitsPosted || o[2] !== a.creditsPending || o[3] !== a.creditsPosted;
  }

  /** The books' invariants over everything this batch touched; a violation aborts the batch transaction. */
  private assertInvariants(): void {
    const perLedger = new Map<number, bigint>();
    for (const a of this.state.accounts.values()) {
      const original = this.originalBalances.get(a.id) ?? ZERO_BALANCES;
      if (!this.state.partialAccounts?.has(a.id)) {
        for (const v of [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted]) {
          invariant(v >= 0n && v <= MAX_BALANCE, `account ${a.id} balance ${v} out of range`);
        }
      }
      if (hasFlag(a.flags, AccountFlag.debitsMustNotExceedCredits) && this.balancesChanged(a)) {
        invariant(a.debitsPending + a.debitsPosted <= a.creditsPosted, `account ${a.id} debits exceed credits`);
      }
      if (hasFlag(a.flags, AccountFlag.creditsMustNotExceedDebits) && this.balancesChanged(a)) {
        invariant(a.creditsPending + a.creditsPosted <= a.debitsPosted, `account ${a.id} credits exceed debits`);
      }
      const net = a.debitsPending + a.debitsPosted - original[0] - original[1] - (a.creditsPending + a.creditsPosted - original[2] - original[3]);
      perLedger.set(a.ledger, (perLedger.get(a.ledger) ?? 0n) + net);
    }
    for (const [ledger, net] of perLedger) invariant(net === 0n, `ledger ${ledger} debits and credits moved apart by ${net}`);
    for (const f of this.failedTransfers) invariant(!this.state.transfers.has(f.id), `transfer id ${f.id} both spent and recorded`);
  }

}

function failure(code: TransferResultCode): EventResult<TransferResultCode> {
  return { code, timestamp: 0n };
}

function existsResult(existing: TransferRow, same: boolean): EventResult<TransferResultCode> {
  return same ? { code: 'exists', timestamp: existing.timestamp } : failure('exists_with_different_fields');
}

/** A balancing transfer's retry matches if its `amount` (at most) covers what the transfer moved (TigerBeetle). */
function sameSingleTransfer(e: TransferRow, t: TransferInput): boolean {
  return (
    e.debitAccountId === t.debitAccountId &&
    e.creditAccountId === t.creditAccountId &&
    (hasFlag(t.flags, BALANCING_FLAGS) ? e.amount <= t.amount : e.amount === t.amount) &&
    e.pendingId === '' &&
    e.ledger === t.ledger &&
    e.code === t.code &&
    (e.flags & ~TransferFlag.linked) === (t.flags & ~TransferFlag.linked) &&
    e.timeout === t.timeout &&
    metadataEqual(e.metadata, t.metadata)
  );
}

/**
 * A retried post/void matches when every field it gives agrees with what was recorded. Amount 0 is not "not
 * given" but "the full pending amount" (as in TigerBeetle): a post in full retried after a partial post with its
 * id is exists_with_different_fields, not `exists` (which would tell the caller the whole amount was posted).
 * `pendingAmount` is the amount of the pending transfer the event names (loaded with every batch naming it).
 */
function sameResolution(e: TransferRow, t: TransferInput, pendingAmount: bigint | undefined): boolean {
  return (
    e.pendingId === t.pendingId &&
    (e.flags & ~TransferFlag.linked) === (t.flags & ~TransferFlag.linked) &&
    (t.debitAccountId === '' || t.debitAccountId === e.debitAccountId) &&
    (t.creditAccountId === '' || t.creditAccountId === e.creditAccountId) &&
    (t.ledger === 0 || t.ledger === e.ledger) &&
    (t.code === 0 || t.code === e.code) &&
    e.amount === (t.amount === 0n ? pendingAmount : t.amount) &&
    metadataEqual(e.metadata, t.metadata)
  );
}
