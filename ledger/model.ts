/**
 * The ledger's domain model, independent of transport and storage. Amounts and balances are bigint minor
 * units; flags are bitmasks with the same bits in memory, in the database and in the protocol mapping.
 */

/** Largest amount or balance the ledger stores (balances are signed 64-bit columns). */
export const MAX_BALANCE = 2n ** 63n - 1n;
export const MAX_BATCH_EVENTS = 8190;
export const MAX_UINT32 = 4294967295;

export const AccountFlag = {
  linked: 1,
  debitsMustNotExceedCredits: 2,
  creditsMustNotExceedDebits: 4,
  history: 8,
  closed: 16,
} as const;

/**
 * Flags whose rules read the account's balances (limits) or record them after each transfer (history): the
 * results of an account's events then depend on the order they run in. Like every account flag, fixed at creation.
 */
export const BALANCE_RULE_FLAGS = AccountFlag.debitsMustNotExceedCredits | AccountFlag.creditsMustNotExceedDebits | AccountFlag.history;

export const TransferFlag = {
  linked: 1,
  pending: 2,
  postPendingTransfer: 4,
  voidPendingTransfer: 8,
  /** Move at most `amount`: as much of it as the debit account's posted credits cover (TigerBeetle's flag). */
  balancingDebit: 16,
  /** Move at most `amount`: as much of it as the credit account's posted debits cover. */
  balancingCredit: 32,
} as const;

/** Flags whose amount depends on an account's balance: that account is read in full and ordered like one with balance rules. */
export const BALANCING_FLAGS = TransferFlag.balancingDebit | TransferFlag.balancingCredit;

/** The accounts whose balances decide a transfer's amount (balancing flags): none for most transfers. */
export function balancedAccounts(t: Pick<TransferInput, 'flags' | 'debitAccountId' | 'creditAccountId'>): string[] {
  if ((t.flags & BALANCING_FLAGS) === 0) return [];
  const ids: string[] = [];
  if ((t.flags & TransferFlag.balancingDebit) !== 0 && t.debitAccountId !== '') ids.push(t.debitAccountId);
  if ((t.flags & TransferFlag.balancingCredit) !== 0 && t.creditAccountId !== '') ids.push(t.creditAccountId);
  return ids;
}

export const PendingState = { pending: 1, posted: 2, voided: 3, expired: 4 } as const;
export type PendingState = (typeof PendingState)[keyof typeof PendingState];

export type Metadata = Record<string, string>;

export interface AccountInput {
  id: string;
  ledger: number;
  code: number;
  flags: number;
  metadata: Metadata;
  /** Must be zero on creation; carried so that a non-zero value can be refused. */
  balancesNonZero: boolean;
}

export interface TransferInput {
  id: string;
  /** Empty string: not given (allowed only for post/void, which take it from the pending transfer). */
  debitAccountId: string;
  creditAccountId: string;
  amount: bigint;
  /** Empty string: none. */
  pendingId: string;
  ledger: number;
  code: number;
  flags: number;
  timeout: number;
  metadata: Metadata;
}

export interface AccountRow {
  id: string;
  ledger: number;
  code: number;
  flags: number;
  debitsPending: bigint;
  debitsPosted: bigint;
  creditsPending: bigint;
  creditsPosted: bigint;
  metadata: Metadata;
  timestamp: bigint;
}

export interface TransferRow {
  id: string;
  debitAccountId: string;
  creditAccountId: string;
  amount: bigint;
  pendingId: string;
  ledger: number;
  code: number;
  flags: number;
  timeout: number;
  metadata: Metadata;
  timestamp: bigint;
  /** Of a pending transfer, when looked up (LookupTransfers). */
  pendingState?: PendingState;
}

export interface PendingRow {
  id: string;
  debitAccountId: string;
  creditAccountId: string;
  amount: bigint;
  ledger: number;
  code: number;
  /** Nanoseconds; 0 never expires. */
  expiresAt: bigint;
  state: PendingState;
  shard: number;
  resolvedBy: string;
  resolvedAt: bigint;
}

export const ACCOUNT_RESULT_CODES = [
  'ok',
  'linked_event_failed',
  'linked_event_chain_open',
  'exists',
  'exists_with_different_fields',
  'flags_are_mutually_exclusive',
  'ledger_must_not_be_zero',
  'code_must_not_be_zero',
  'balances_must_be_zero',
] as const;
export type AccountResultCode = (typeof ACCOUNT_RESULT_CODES)[number];

export const TRANSFER_RESULT_CODES = [
  'ok',
  'linked_event_failed',
  'linked_event_chain_open',
  'exists',
  'exists_with_different_fields',
  'flags_are_mutually_exclusive',
  'amount_must_be_positive',
  'accounts_must_be_different',
  'ledger_must_not_be_zero',
  'code_must_not_be_zero',
  'debit_account_not_found',
  'credit_account_not_found',
  'ledger_mismatch',
  'account_closed',
  'exceeds_credits',
  'exceeds_debits',
  'overflow',
  'pending_id_required',
  'pending_id_must_be_empty',
  'pending_id_must_be_different',
  'timeout_reserved_for_pending_transfer',
  'pending_transfer_not_found',
  'pending_transfer_not_pending',
  'pending_transfer_has_different_debit_account_id',
  'pending_transfer_has_different_credit_account_id',
  'pending_transfer_has_different_ledger',
  'pending_transfer_has_different_code',
  'exceeds_pending_amount',
  'pending_transfer_has_different_amount',
  'pending_transfer_already_posted',
  'pending_transfer_already_voided',
  'pending_transfer_expired',
  'id_already_failed',
] as const;
export type TransferResultCode = (typeof TRANSFER_RESULT_CODES)[number];

/**
 * Refusals that depend on the ledger's state when the event is evaluated (TigerBeetle's "transient" results, plus
 * `overflow`: here a balance limit that pending balances can fall back under). Sent again later, the same event
 * could be applied: so the id of an event refused this way is spent, and any later event with it is answered
 * `id_already_failed` (ledger/README.md, "Spent ids"). Every other refusal is the same whenever it is asked.
 */
export const TRANSIENT_TRANSFER_FAILURES: ReadonlySet<TransferResultCode> = new Set([
  'debit_account_not_found',
  'credit_account_not_found',
  'pending_transfer_not_found',
  'account_closed',
  'exceeds_credits',
  'exceeds_debits',
  'overflow',
]);

export interface EventResult<Code extends string> {
  code: Code;
  /** Ledger timestamp of the object: the new one for ok, the existing one for exists; 0 otherwise. */
  timestamp: bigint;
}

/** What one gRPC call contributes to a shard batch; a linked chain never spans two submissions. */
export type Submission =
  | { kind: 'accounts'; events: AccountInput[] }
  | { kind: 'transfers'; events: TransferInput[] }
  /** Internal: release pending transfers whose timeout has passed (the expiry sweeper). */
  | { kind: 'expirations'; pendingIds: string[] };

export type SubmissionResult =
  | { kind: 'accounts'; results: EventResult<AccountResultCode>[] }
  | { kind: 'transfers'; results: EventResult<TransferResultCode>[] }
  | { kind: 'expirations'; expired: number };

export function hasFlag(flags: number, flag: number): boolean {
  return (flags & flag) !== 0;
}

export function metadataEqual(a: Metadata, b: Metadata): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) if (a[k] !== b[k]) return false;
  return true;
}
