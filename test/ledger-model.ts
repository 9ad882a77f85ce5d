import type { Account, Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { accountFlagsToBits as accountFlagBits, transferFlagsToBits as transferFlagBits } from '../ledger/validation.js';
import { AccountFlag, TransferFlag, type AccountResultCode, type Metadata, type TransferResultCode } from '../ledger/model.js';

/**
 * A reference model of the ledger, written from the specification alone (ledger/README.md, "Semantics"), never
 * from the engine: deliberately naive (maps, one event after the other, an undo journal for linked chains, no
 * batching, no storage, no clock). The randomized tests (test/ledger-model.test.ts) send the same requests to
 * the real service and to this model and require the same result code for every event and the same balances,
 * recorded transfers, pending states and balance history.
 *
 * Timestamps are not modelled: a pending transfer with a timeout expires only when the test says so
 * (`expire`), which is what the sweeper does once the timeout has passed.
 */

/** Largest amount or balance (balances are signed 64-bit columns). */
export const MODEL_MAX = 2n ** 63n - 1n;

export interface Balances {
  debitsPending: bigint;
  debitsPosted: bigint;
  creditsPending: bigint;
  creditsPosted: bigint;
}

/** A row of an account's balance history (accounts with the `history` flag). */
export interface HistoryRow extends Balances {
  transferId: string;
}

export interface ModelAccount {
  id: string;
  ledger: number;
  code: number;
  /** AccountFlag bits, without `linked`. */
  flags: number;
  metadata: Metadata;
  balances: Balances;
  /** Only for accounts with the `history` flag. */
  history: HistoryRow[] | undefined;
}

/** A transfer as recorded (what LookupTransfers returns, timestamp aside). */
export interface ModelTransfer {
  id: string;
  debitAccountId: string;
  creditAccountId: string;
  amount: bigint;
  pendingId: string;
  ledger: number;
  code: number;
  /** TransferFlag bits, without `linked`. */
  flags: number;
  timeout: number;
  metadata: Metadata;
}

export type PendingStateName = 'pending' | 'posted' | 'voided' | 'expired';

export type ChainCode = 'linked_event_failed' | 'linked_event_chain_open';

/** Proto flags to bits: the wire mapping is not ledger semantics, so the model shares the service's. */
export { accountFlagBits, transferFlagBits };

const has = (flags: number, flag: number) => (flags & flag) !== 0;

function sameMetadata(a: Metadata, b: Metadata): boolean {
  const ka = Object.keys(a);
  return ka.length === Object.keys(b).length && ka.every((k) => Object.prototype.hasOwnProperty.call(b, k) && a[k] === b[k]);
}

/** Refusals that depend on the moment; they spend the event's id (README, "Spent ids"). */
const SPENDING_REFUSALS: readonly TransferResultCode[] = ['debit_account_not_found', 'credit_account_not_found', 'pending_transfer_not_found', 'account_closed', 'exceeds_credits', 'exceeds_debits', 'overflow'];

export class LedgerModel {
  private readonly accounts = new Map<string, ModelAccount>();
  private readonly transfers = new Map<string, ModelTransfer>();
  private readonly pendingStates = new Map<string, PendingStateName>();
  /** Pending transfers whose expiry time has passed (the sweeper may not have released them yet). */
  private readonly due = new Set<string>();
  /** Ids of transfer events refused for a reason of the moment: spent for good (never journaled). */
  private readonly spent = new Set<string>();
  /** Undo actions of the linked chain being evaluated (undefined outside a chain). */
  private journal: (() => void)[] | undefined;

  // ---- queries -------------------------------------------------------------------------------------------

  account(id: string): ModelAccount | undefined {
    return this.accounts.get(id);
  }

  balances(id: string): Balances | undefined {
    const a = this.accounts.get(id);
    return a && { ...a.balances };
  }

  transfer(id: string): ModelTransfer | undefined {
    return this.transfers.get(id);
  }

  pendingState(id: string): PendingStateName | undefined {
    return this.pendingStates.get(id);
  }

  history(id: string): readonly HistoryRow[] | undefined {
    return this.accounts.get(id)?.history;
  }

  // ---- commands ------------------------------------------------------------------------------------------

  createAccounts(events: readonly Account[]): (AccountResultCode | ChainCode)[] {
    return this.chained(events, (a) => has(accountFlagBits(a.flags), AccountFlag.linked), (a) => this.createAccount(a));
  }

  createTransfers(events: readonly Transfer[]): (TransferResultCode | ChainCode)[] {
    return this.chained(events, (t) => has(transferFlagBits(t.flags), TransferFlag.linked), (t) => this.createTransfer(t));
  }

  /**
   * The clock passing a pending transfer's expiry time: from then on a post or void of it is
   * `pending_transfer_expired`, though its amount stays in the pending balances until `expire` (the sweeper).
   */
  timeoutPassed(pendingId: string): void {
    this.due.add(pendingId);
  }

  /**
   * The sweeper releasing one pending transfer whose timeout has passed: the pending amount leaves the pending
   * balances and the transfer becomes expired (history accounts get a row keyed by the pending id). No-op
   * (false) unless the transfer is still pending.
   */
  expire(pendingId: string): boolean {
    if (this.pendingStates.get(pendingId) !== 'pending') return false;
    const p = this.transfers.get(pendingId)!;
    this.change(this.accounts.get(p.debitAccountId)!, this.accounts.get(p.creditAccountId)!, pendingId, -p.amount, 0n);
    this.setPendingState(pendingId, 'expired');
    return true;
  }

  // ---- linked chains -------------------------------------------------------------------------------------

  private chained<E, C extends string>(events: readonly E[], linked: (e: E) => boolean, apply: (e: E) => C): (C | ChainCode)[] {
    const out: (C | ChainCode)[] = [];
    let start = 0;
    while (start < events.length) {
      let end = start;
      while (end < events.length && linked(events[end]!)) end++;
      if (end === events.length) {
        // The request ends inside a chain: not evaluated.
        for (let k = start; k < events.length; k++) out.push(k === events.length - 1 ? 'linked_event_chain_open' : 'linked_event_failed');
        return out;
      }
      if (end === start) {
        out.push(apply(events[start]!)); // a lone event changes nothing unless it is ok
      } else {
        const journal: (() => void)[] = [];
        this.journal = journal;
        const codes: C[] = [];
        for (let k = start; k <= end; k++) {
          const code = apply(events[k]!);
          codes.push(code);
          if (code !== 'ok') break;
        }
        this.journal = undefined;
        const failed = codes.length - 1;
        if (codes[failed] !== 'ok') {
          for (let u = journal.length - 1; u >= 0; u--) journal[u]!();
          for (let k = start; k <= end; k++) out.push(k - start === failed ? codes[failed]! : 'linked_event_failed');
        } else {
          out.push(...codes);
        }
      }
      start = end + 1;
    }
    return out;
  }

  // ---- mutations (journaled) -----------------------------------------------------------------------------

  private undo(action: () => void): void {
    this.journal?.push(action);
  }

  private addAccount(a: ModelAccount): void {
    this.accounts.set(a.id, a);
    this.undo(() => this.accounts.delete(a.id));
  }

  private addTransfer(t: ModelTransfer): void {
    this.transfers.set(t.id, t);
    this.undo(() => this.transfers.delete(t.id));
  }

  private setPendingState(id: string, state: PendingStateName): void {
    const before = this.pendingStates.get(id);
    this.pendingStates.set(id, state);
    this.undo(() => (before === undefined ? this.pendingStates.delete(id) : this.pendingStates.set(id, before)));
  }

  /** Adds `pending` to the pending balances and `posted` to the posted balances of both sides of a transfer. */
  private change(debit: ModelAccount, credit: ModelAccount, transferId: string, pending: bigint, posted: bigint): void {
    for (const [account, side] of [
      [debit, 'debits'],
      [credit, 'credits'],
    ] as const) {
      const b = account.balances;
      const before = { ...b };
      if (side === 'debits') {
        b.debitsPending += pending;
        b.debitsPosted += posted;
      } else {
        b.creditsPending += pending;
        b.creditsPosted += posted;
      }
      account.history?.push({ transferId, ...b });
      this.undo(() => {
        account.balances = before;
        account.history?.pop();
      });
    }
  }

  // ---- CreateAccounts ------------------------------------------------------------------------------------

  private createAccount(a: Account): AccountResultCode {
    const flags = accountFlagBits(a.flags) & ~AccountFlag.linked;
    if (has(flags, AccountFlag.debitsMustNotExceedCredits) && has(flags, AccountFlag.creditsMustNotExceedDebits)) return 'flags_are_mutually_exclusive';
    if (a.ledger === 0) return 'ledger_must_not_be_zero';
    if (a.code === 0) return 'code_must_not_be_zero';
    if (a.debitsPending !== 0n || a.debitsPosted !== 0n || a.creditsPending !== 0n || a.creditsPosted !== 0n) return 'balances_must_be_zero';
    const existing = this.accounts.get(a.id);
    if (existing) {
      const same = existing.ledger === a.ledger && existing.code === a.code && existing.flags === flags && sameMetadata(existing.metadata, a.metadata);
      return same ? 'exists' : 'exists_with_different_fields';
    }
    this.addAccount({
      id: a.id,
      ledger: a.ledger,
      code: a.code,
      flags,
      metadata: { ...a.metadata },
      balances: { debitsPending: 0n, debitsPosted: 0n, creditsPending: 0n, creditsPosted: 0n },
      history: has(flags, AccountFlag.history) ? [] : undefined,
    });
    return 'ok';
  }

  // ---- CreateTransfers -----------------------------------------------------------------------------------

  private createTransfer(t: Transfer): TransferResultCode {
    const flags = transferFlagBits(t.flags) & ~TransferFlag.linked;
    const kinds = [TransferFlag.pending, TransferFlag.postPendingTransfer, TransferFlag.voidPendingTransfer].filter((f) => has(flags, f)).length;
    if (kinds > 1) return 'flags_are_mutually_exclusive';
    const resolves = has(flags, TransferFlag.postPendingTransfer) || has(flags, TransferFlag.voidPendingTransfer);
    if (resolves && (has(flags, TransferFlag.balancingDebit) || has(flags, TransferFlag.balancingCredit))) return 'flags_are_mutually_exclusive';
    const code = has(flags, TransferFlag.postPendingTransfer) || has(flags, TransferFlag.voidPendingTransfer) ? this.resolvePending(t, flags) : this.singleOrPending(t, flags);
    if (SPENDING_REFUSALS.includes(code)) this.spent.add(t.id);
    return code;
  }

  private singleOrPending(t: Transfer, flags: number): TransferResultCode {
    const pending = has(flags, TransferFlag.pending);
    if (t.pendingId !== '') return 'pending_id_must_be_empty';
    if (t.timeout !== 0 && !pending) return 'timeout_reserved_for_pending_transfer';
    if (t.ledger === 0) return 'ledger_must_not_be_zero';
    if (t.code === 0) return 'code_must_not_be_zero';
    if (t.debitAccountId === t.creditAccountId) return 'accounts_must_be_different';
    if (t.amount === 0n) return 'amount_must_be_positive';

    if (this.spent.has(t.id)) return 'id_already_failed';
    const existing = this.transfers.get(t.id);
    if (existing) {
      const same =
        existing.debitAccountId === t.debitAccountId &&
        existing.creditAccountId === t.creditAccountId &&
        // A balancing transfer's amount is a most: a retry's covering what was moved is the same transfer.
        (has(flags, TransferFlag.balancingDebit) || has(flags, TransferFlag.balancingCredit) ? existing.amount <= t.amount : existing.amount === t.amount) &&
        existing.pendingId === t.pendingId &&
        existing.ledger === t.ledger &&
        existing.code === t.code &&
        existing.flags === flags &&
        existing.timeout === t.timeout &&
        sameMetadata(existing.metadata, t.metadata);
      return same ? 'exists' : 'exists_with_different_fields';
    }

    const dr = this.accounts.get(t.debitAccountId);
    if (!dr) return 'debit_account_not_found';
    const cr = this.accounts.get(t.creditAccountId);
    if (!cr) return 'credit_account_not_found';
    if (dr.ledger !== cr.ledger || dr.ledger !== t.ledger) return 'ledger_mismatch';
    if (has(dr.flags, AccountFlag.closed) || has(cr.flags, AccountFlag.closed)) return 'account_closed';

    let amount = t.amount;
    const d = dr.balances;
    const c = cr.balances;
    if (amount > MODEL_MAX) return 'overflow';
    if (has(flags, TransferFlag.balancingDebit)) {
      const room = d.creditsPosted - d.debitsPosted - d.debitsPending;
      if (room <= 0n) return 'exceeds_credits';
      if (room < amount) amount = room;
    }
    if (has(flags, TransferFlag.balancingCredit)) {
      const room = c.debitsPosted - c.creditsPosted - c.creditsPending;
      if (room <= 0n) return 'exceeds_debits';
      if (room < amount) amount = room;
    }
    const resulting = pending ? [d.debitsPending + amount, c.creditsPending + amount] : [d.debitsPosted + amount, c.creditsPosted + amount];
    if (resulting.some((x) => x > MODEL_MAX)) return 'overflow';
    if (d.debitsPending + d.debitsPosted + amount > MODEL_MAX || c.creditsPending + c.creditsPosted + amount > MODEL_MAX) return 'overflow';
    if (has(dr.flags, AccountFlag.debitsMustNotExceedCredits) && d.debitsPending + d.debitsPosted + amount > d.creditsPosted) return 'exceeds_credits';
    if (has(cr.flags, AccountFlag.creditsMustNotExceedDebits) && c.creditsPending + c.creditsPosted + amount > c.debitsPosted) return 'exceeds_debits';

    this.addTransfer({
      id: t.id,
      debitAccountId: t.debitAccountId,
      creditAccountId: t.creditAccountId,
      amount,
      pendingId: '',
      ledger: t.ledger,
      code: t.code,
      flags,
      timeout: t.timeout,
      metadata: { ...t.metadata },
    });
    if (pending) {
      this.change(dr, cr, t.id, amount, 0n);
      this.setPendingState(t.id, 'pending');
    } else {
      this.change(dr, cr, t.id, 0n, amount);
    }
    return 'ok';
  }

  private resolvePending(t: Transfer, flags: number): TransferResultCode {
    const post = has(flags, TransferFlag.postPendingTransfer);
    if (t.pendingId === '') return 'pending_id_required';
    if (t.pendingId === t.id) return 'pending_id_must_be_different';
    if (t.timeout !== 0) return 'timeout_reserved_for_pending_transfer';

    if (this.spent.has(t.id)) return 'id_already_failed';
    const existing = this.transfers.get(t.id);
    if (existing) {
      const same =
        existing.pendingId === t.pendingId &&
        existing.flags === flags &&
        (t.debitAccountId === '' || t.debitAccountId === existing.debitAccountId) &&
        (t.creditAccountId === '' || t.creditAccountId === existing.creditAccountId) &&
        (t.ledger === 0 || t.ledger === existing.ledger) &&
        (t.code === 0 || t.code === existing.code) &&
        // Amount 0 means the full pending amount: a partial post is not the same as a full one.
        existing.amount === (t.amount === 0n ? this.transfers.get(t.pendingId)!.amount : t.amount) &&
        sameMetadata(existing.metadata, t.metadata);
      return same ? 'exists' : 'exists_with_different_fields';
    }

    const p = this.transfers.get(t.pendingId);
    if (!p) return 'pending_transfer_not_found';
    if (!has(p.flags, TransferFlag.pending)) return 'pending_transfer_not_pending';
    if (t.debitAccountId !== '' && t.debitAccountId !== p.debitAccountId) return 'pending_transfer_has_different_debit_account_id';
    if (t.creditAccountId !== '' && t.creditAccountId !== p.creditAccountId) return 'pending_transfer_has_different_credit_account_id';
    if (t.ledger !== 0 && t.ledger !== p.ledger) return 'pending_transfer_has_different_ledger';
    if (t.code !== 0 && t.code !== p.code) return 'pending_transfer_has_different_code';
    if (post && t.amount > p.amount) return 'exceeds_pending_amount';
    if (!post && t.amount !== 0n && t.amount !== p.amount) return 'pending_transfer_has_different_amount';

    const state = this.pendingStates.get(t.pendingId);
    if (state === 'posted') return 'pending_transfer_already_posted';
    if (state === 'voided') return 'pending_transfer_already_voided';
    if (state === 'expired' || this.due.has(t.pendingId)) return 'pending_transfer_expired';

    const dr = this.accounts.get(p.debitAccountId)!;
    const cr = this.accounts.get(p.creditAccountId)!;
    const amount = post ? (t.amount === 0n ? p.amount : t.amount) : p.amount;
    if (post) {
      if (has(dr.flags, AccountFlag.closed) || has(cr.flags, AccountFlag.closed)) return 'account_closed';
      if (dr.balances.debitsPosted + amount > MODEL_MAX || cr.balances.creditsPosted + amount > MODEL_MAX) return 'overflow';
    }

    this.addTransfer({
      id: t.id,
      debitAccountId: p.debitAccountId,
      creditAccountId: p.creditAccountId,
      amount,
      pendingId: t.pendingId,
      ledger: p.ledger,
      code: p.code,
      flags,
      timeout: 0,
      metadata: { ...t.metadata },
    });
    this.change(dr, cr, t.id, -p.amount, post ? amount : 0n);
    this.setPendingState(t.pendingId, post ? 'posted' : 'voided');
    return 'ok';
  }
}
