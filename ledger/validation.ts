import { ValidationError } from '../lib/errors.js';
import type { Account, AccountFlags, Transfer, TransferFlags } from '../proto/gen/ledger/v1/ledger.js';
import { AccountFlag, MAX_BATCH_EVENTS, TransferFlag, hasFlag, type AccountInput, type Metadata, type TransferInput } from './model.js';

/**
 * Request validation at the gRPC boundary: malformed requests are INVALID_ARGUMENT with the offending field and
 * reach no batch; business rules (amounts, accounts, limits) are per-event result codes decided by the engine.
 */

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const NIL_UUID = '00000000-0000-0000-0000-000000000000';
export const METADATA_MAX_ENTRIES = 16;
export const METADATA_MAX_KEY = 64;
export const METADATA_MAX_VALUE = 512;

/** Lower-cases and checks a UUID; PostgreSQL returns UUIDs lower-case, and ids are compared as strings. */
export function parseId(value: string, field: string, { optional = false } = {}): string {
  if (value === '' && optional) return '';
  const id = value.toLowerCase();
  if (!UUID.test(id)) throw new ValidationError(field, `expected a UUID, got ${JSON.stringify(value.slice(0, 64))}`);
  if (id === NIL_UUID) throw new ValidationError(field, 'must not be the nil UUID');
  return id;
}

export function checkBatchSize(count: number, field: string): void {
  if (count === 0) throw new ValidationError(field, 'must contain at least one event');
  if (count > MAX_BATCH_EVENTS) throw new ValidationError(field, `at most ${MAX_BATCH_EVENTS} events per request, got ${count}`);
}

/** Control characters corrupt logs and CSV reports downstream: refused in every free-text input. */
export function hasControlCharacters(text: string): boolean {
  // eslint-disable-next-line no-control-regex
  return /[\u0000-\u001f\u007f]/.test(text);
}

export function parseMetadata(metadata: Record<string, string>, field: string): Metadata {
  const entries = Object.entries(metadata);
  if (entries.length > METADATA_MAX_ENTRIES) throw new ValidationError(field, `at most ${METADATA_MAX_ENTRIES} entries`);
  for (const [key, value] of entries) {
    if (key.length === 0 || key.length > METADATA_MAX_KEY) throw new ValidationError(`${field}.${key}`, `keys must be 1-${METADATA_MAX_KEY} characters`);
    if (value.length > METADATA_MAX_VALUE) throw new ValidationError(`${field}.${key}`, `values must be at most ${METADATA_MAX_VALUE} characters`);
    if (hasControlCharacters(key + value)) throw new ValidationError(`${field}.${key}`, 'control characters are not allowed');
  }
  return metadata;
}

export function accountFlagsToBits(f: AccountFlags | undefined): number {
  if (!f) return 0;
  return (
    (f.linked ? AccountFlag.linked : 0) |
    (f.debitsMustNotExceedCredits ? AccountFlag.debitsMustNotExceedCredits : 0) |
    (f.creditsMustNotExceedDebits ? AccountFlag.creditsMustNotExceedDebits : 0) |
    (f.history ? AccountFlag.history : 0) |
    (f.closed ? AccountFlag.closed : 0)
  );
}

export function transferFlagsToBits(f: TransferFlags | undefined): number {
  if (!f) return 0;
  return (
    (f.linked ? TransferFlag.linked : 0) |
    (f.pending ? TransferFlag.pending : 0) |
    (f.postPendingTransfer ? TransferFlag.postPendingTransfer : 0) |
    (f.voidPendingTransfer ? TransferFlag.voidPendingTransfer : 0) |
    (f.balancingDebit ? TransferFlag.balancingDebit : 0) |
    (f.balancingCredit ? TransferFlag.balancingCredit : 0)
  );
}

export function parseAccounts(accounts: readonly Account[]): AccountInput[] {
  checkBatchSize(accounts.length, 'accounts');
  return accounts.map((a, i) => ({
    id: parseId(a.id, `accounts.${i}.id`),
    ledger: a.ledger,
    code: a.code,
    flags: accountFlagsToBits(a.flags),
    metadata: parseMetadata(a.metadata, `accounts.${i}.metadata`),
    balancesNonZero: a.debitsPending !== 0n || a.debitsPosted !== 0n || a.creditsPending !== 0n || a.creditsPosted !== 0n,
  }));
}

export function parseTransfers(transfers: readonly Transfer[]): TransferInput[] {
  checkBatchSize(transfers.length, 'transfers');
  return transfers.map((t, i) => {
    const flags = transferFlagsToBits(t.flags);
    // Only a post/void may leave its accounts out (they are its pending transfer's). Elsewhere an empty id is
    // malformed like the nil UUID (TigerBeetle: *_account_id_must_not_be_zero); evaluated, it was
    // debit_account_not_found, which spends the event's id (README "Spent ids") for a mistake in the request.
    const accountsOptional = hasFlag(flags, TransferFlag.postPendingTransfer | TransferFlag.voidPendingTransfer);
    return {
      id: parseId(t.id, `transfers.${i}.id`),
      debitAccountId: parseAccountId(t.debitAccountId, `transfers.${i}.debit_account_id`, accountsOptional),
      creditAccountId: parseAccountId(t.creditAccountId, `transfers.${i}.credit_account_id`, accountsOptional),
      amount: t.amount,
      pendingId: parseId(t.pendingId, `transfers.${i}.pending_id`, { optional: true }),
      ledger: t.ledger,
      code: t.code,
      flags,
      timeout: t.timeout,
      metadata: parseMetadata(t.metadata, `transfers.${i}.metadata`),
    };
  });
}

function parseAccountId(value: string, field: string, optional: boolean): string {
  if (value === '' && !optional) throw new ValidationError(field, 'required (only a post or void of a pending transfer may leave it empty)');
  return parseId(value, field, { optional });
}
