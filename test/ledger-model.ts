import type { Account, Transfer } from '../proto/gen/ledger/v1/ledger.js';
import type { AccountResultCode, TransferResultCode } from '../ledger/model.js';

/**
 * A reference model of the ledger, written from the specification in ledger/README.md ("Semantics") and
 * deliberately naive: whole-state snapshots for linked chains, no batching, no storage. The randomized tests
 * apply the same requests to it and to the real service and require the same answers and balances.
 */

const MAX = 2n ** 63n - 1n;

interface ModelAccount {
  ledger: number;
  code: number;
  flags: NonNullable<Account['flags']>;
  metadata: Record<string, string>;
  dp: bigint;
  dpo: bigint;
  cp: bigint;
  cpo: bigint;
}

interface ModelTransfer {
  debit: string;
  credit: string;
  amount: bigint;
  pendingId: string;
  ledger: number;
  code: number;
  pending: boolean;
  post: boolean;
  void: boolean;
  timeout: number;
  metadata: Record<string, string>;
}

type PendingStatus = 'pending' | 'posted' | 'voided' | 'expired';

interface State {
  accounts: Map<string, ModelAccount>;
  transfers: Map<string, ModelTransfer>;
  pendingStatus: Map<string, PendingStatus>;
}

const sameMetadata = (a: Record<string, string>, b: Record<string, string>) => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());
const cloneState = (s: State): State => ({
  accounts: new Map([...s.accounts].map(([k, v]) => [k, { ...v }])),
  transfers: new Map(s.transfers),
  pendingStatus: new Map(s.pendingStatus),
});

export class LedgerModel {
  private state: State = { accounts: new Map(), transfers: new Map(), pendingStatus: new Map() };

  balances(id: string): [bigint, bigint, bigint, bigint] | undefined {
    const a = this.state.accounts.get(id);
    return a && [a.dp, a.dpo, a.cp, a.cpo];
  }

  createAccounts(accounts: readonly Account[]): AccountResultCode[] {
    return this.chained(accounts, (a) => a.flags?.linked === true, (a) => this.createAccount(a));
  }

  createTransfers(transfers: readonly Transfer[]): TransferResultCode[] {
    return this.chained(transfers, (t) => t.flags?.linked === true, (t) => this.createTransfer(t));
  }

  /** The sweeper's work on one pending transfer: release it if it is still pending. */
  expire(pendingId: string): void {
    if (this.state.pendingStatus.get(pendingId) !== 'pending') return;
    const t = this.state.transfers.get(pendingId)!;
    this.state.accounts.get(t.debit)!.dp -= t.amount;
    this.state.accounts.get(t.credit)!.cp -= t.amount;
    this.state.pendingStatus.set(pendingId, 'expired');
  }

  private chained<E, C extends string>(events: readonly E[], linked: (e: E) => boolean, apply: (e: E) => C): (C | 'linked_event_failed' | 'linked_event_chain_open')[] {
    const out: (C | 'linked_event_failed' | 'linked_event_chain_open')[] = [];
    let i = 0;
    while (i < events.length) {
      // The chain is events i..j, where j is the first event without the linked flag.
      let j = i;
      while (j < events.length && linked(events[j]!)) j++;
      if (j === events.length) {
        // Open chain at the end of the request: not evaluated.
        for (let k = i; k < events.length; k++) out.push(k === events.length - 1 ? 'linked_event_chain_open' : 'linked_event_failed');
        break;
      }
      if (j === i) {
        out.push(apply(events[i]!));
      } else {
        const before = cloneState(this.state);
        const chain: (C | 'linked_event_failed')[] = [];
        let failedAt = -1;
        for (let k = i; k <= j; k++) {
          const code = apply(events[k]!);
          chain.push(code);
          if (code !== 'ok') {
            failedAt = k - i;
            break;
          }
        }
        if (failedAt >= 0) {
          this.state = before;
          for (let k = 0; k <= j - i; k++) out.push(k === failedAt ? chain[k]! : 'linked_event_failed');
        } else {
          out.push(...chain);
        }
      }
      i = j + 1;
    }
    return out;
  }

  private createAccount(a: Account): AccountResultCode {
    const f = a.flags!;
    if (f.debitsMustNotExceedCredits && f.creditsMustNotExceedDebits) return 'flags_are_mutually_exclusive';
    if (a.ledger === 0) return 'ledger_must_not_be_zero';
    if (a.code === 0) return 'code_must_not_be_zero';
    if (a.debitsPending || a.debitsPosted || a.creditsPending || a.creditsPosted) return 'balances_must_be_zero';
    const existing = this.state.accounts.get(a.id);
    if (existing) {
      const same =
        existing.ledger === a.ledger &&
        existing.code === a.code &&
        existing.flags.debitsMustNotExceedCredits === f.debitsMustNotExceedCredits &&
        existing.flags.creditsMustNotExceedDebits === f.creditsMustNotExceedDebits &&
        existing.flags.history === f.history &&
        existing.flags.closed === f.closed &&
        sameMetadata(existing.metadata, a.metadata);
      return same ? 'exists' : 'exists_with_different_fields';
    }
    this.state.accounts.set(a.id, { ledger: a.ledger, code: a.code, flags: { ...f, linked: false }, metadata: a.metadata, dp: 0n, dpo: 0n, cp: 0n, cpo: 0n });
    return 'ok';
  }

  private createTransfer(t: Transfer): TransferResultCode {
    const f = t.flags!;
    if ([f.pending, f.postPendingTransfer, f.voidPendingTransfer].filter(Boolean).length > 1) return 'flags_are_mutually_exclusive';
    return f.postPendingTransfer || f.voidPendingTransfer ? this.resolve(t, f.postPendingTransfer) : this.single(t, f.pending);
  }

  private single(t: Transfer, pending: boolean): TransferResultCode {
    if (t.pendingId !== '') return 'pending_id_must_be_empty';
    if (t.timeout !== 0 && !pending) return 'timeout_reserved_for_pending_transfer';
    if (t.ledger === 0) return 'ledger_must_not_be_zero';
    if (t.code === 0) return 'code_must_not_be_zero';
    if (t.debitAccountId === t.creditAccountId) return 'accounts_must_be_different';
    if (t.amount === 0n) return 'amount_must_be_positive';
    const existing = this.state.transfers.get(t.id);
    if (existing) {
      const same =
        existing.debit === t.debitAccountId &&
        existing.credit === t.creditAccountId &&
        existing.amount === t.amount &&
        existing.pendingId === '' &&
        existing.ledger === t.ledger &&
        existing.code === t.code &&
        existing.pending === pending &&
        !existing.post &&
        !existing.void &&
        existing.timeout === t.timeout &&
        sameMetadata(existing.metadata, t.metadata);
      return same ? 'exists' : 'exists_with_different_fields';
    }
    const dr = this.state.accounts.get(t.debitAccountId);
    if (!dr) return 'debit_account_not_found';
    const cr = this.state.accounts.get(t.creditAccountId);
    if (!cr) return 'credit_account_not_found';
    if (dr.ledger !== cr.ledger || dr.ledger !== t.ledger) return 'ledger_mismatch';
    if (dr.flags.closed || cr.flags.closed) return 'account_closed';
    const a = t.amount;
    if (a > MAX) return 'overflow';
    if (pending ? dr.dp + a > MAX || cr.cp + a > MAX : dr.dpo + a > MAX || cr.cpo + a > MAX) return 'overflow';
    if (dr.dp + dr.dpo + a > MAX || cr.cp + cr.cpo + a > MAX) return 'overflow';
    if (dr.flags.debitsMustNotExceedCredits && dr.dp + dr.dpo + a > dr.cpo) return 'exceeds_credits';
    if (cr.flags.creditsMustNotExceedDebits && cr.cp + cr.cpo + a > cr.dpo) return 'exceeds_debits';
    if (pending) {
      dr.dp += a;
      cr.cp += a;
      this.state.pendingStatus.set(t.id, 'pending');
    } else {
      dr.dpo += a;
      cr.cpo += a;
    }
    this.state.transfers.set(t.id, { debit: t.debitAccountId, credit: t.creditAccountId, amount: a, pendingId: '', ledger: t.ledger, code: t.code, pending, post: false, void: false, timeout: t.timeout, metadata: t.metadata });
    return 'ok';
  }

  private resolve(t: Transfer, post: boolean): TransferResultCode {
    if (t.pendingId === '') return 'pending_id_required';
    if (t.pendingId === t.id) return 'pending_id_must_be_different';
    if (t.timeout !== 0) return 'timeout_reserved_for_pending_transfer';
    const existing = this.state.transfers.get(t.id);
    if (existing) {
      const same =
        existing.pendingId === t.pendingId &&
        existing.post === post &&
        existing.void === !post &&
        !existing.pending &&
        (t.debitAccountId === '' || t.debitAccountId === existing.debit) &&
        (t.creditAccountId === '' || t.creditAccountId === existing.credit) &&
        (t.ledger === 0 || t.ledger === existing.ledger) &&
        (t.code === 0 || t.code === existing.code) &&
        (t.amount === 0n || t.amount === existing.amount) &&
        sameMetadata(existing.metadata, t.metadata);
      return same ? 'exists' : 'exists_with_different_fields';
    }
    const p = this.state.transfers.get(t.pendingId);
    if (!p) return 'pending_transfer_not_found';
    if (!p.pending) return 'pending_transfer_not_pending';
    if (t.debitAccountId !== '' && t.debitAccountId !== p.debit) return 'pending_transfer_has_different_debit_account_id';
    if (t.creditAccountId !== '' && t.creditAccountId !== p.credit) return 'pending_transfer_has_different_credit_account_id';
    if (t.ledger !== 0 && t.ledger !== p.ledger) return 'pending_transfer_has_different_ledger';
    if (t.code !== 0 && t.code !== p.code) return 'pending_transfer_has_different_code';
    if (post && t.amount > p.amount) return 'exceeds_pending_amount';
    if (!post && t.amount !== 0n && t.amount !== p.amount) return 'pending_transfer_has_different_amount';
    const status = this.state.pendingStatus.get(t.pendingId);
    if (status === 'posted') return 'pending_transfer_already_posted';
    if (status === 'voided') return 'pending_transfer_already_voided';
    if (status === 'expired') return 'pending_transfer_expired';
    const dr = this.state.accounts.get(p.debit)!;
    const cr = this.state.accounts.get(p.credit)!;
    const amount = post ? (t.amount === 0n ? p.amount : t.amount) : p.amount;
    if (post && (dr.flags.closed || cr.flags.closed)) return 'account_closed';
    if (post && (dr.dpo + amount > MAX || cr.cpo + amount > MAX)) return 'overflow';
    dr.dp -= p.amount;
    cr.cp -= p.amount;
    if (post) {
      dr.dpo += amount;
      cr.cpo += amount;
    }
    this.state.pendingStatus.set(t.pendingId, post ? 'posted' : 'voided');
    this.state.transfers.set(t.id, { debit: p.debit, credit: p.credit, amount, pendingId: t.pendingId, ledger: p.ledger, code: p.code, pending: false, post, void: !post, timeout: 0, metadata: t.metadata });
    return 'ok';
  }
}
