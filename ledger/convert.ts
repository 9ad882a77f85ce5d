import {
  CreateAccountResultCode,
  CreateTransferResultCode,
  type Account,
  type AccountBalance,
  type CreateAccountResult,
  type CreateTransferResult,
  type Transfer,
} from '../proto/gen/ledger/v1/ledger.js';
import type { HistoryRow } from './engine.js';
import {
  ACCOUNT_RESULT_CODES,
  AccountFlag,
  TRANSFER_RESULT_CODES,
  TransferFlag,
  hasFlag,
  type AccountResultCode,
  type AccountRow,
  type EventResult,
  type TransferResultCode,
  type TransferRow,
} from './model.js';

/** Domain <-> protobuf. Result codes map by name: `exceeds_credits` <-> CREATE_TRANSFER_RESULT_CODE_EXCEEDS_CREDITS. */

function codeTable<Code extends string>(codes: readonly Code[], enumObject: Record<string, string | number>, prefix: string): Map<Code, number> {
  return new Map(
    codes.map((code) => {
      const value = enumObject[`${prefix}${code.toUpperCase()}`];
      if (typeof value !== 'number') throw new Error(`proto enum lacks ${prefix}${code.toUpperCase()}`);
      return [code, value];
    }),
  );
}

const ACCOUNT_CODES = codeTable(ACCOUNT_RESULT_CODES, CreateAccountResultCode, 'CREATE_ACCOUNT_RESULT_CODE_');
const TRANSFER_CODES = codeTable(TRANSFER_RESULT_CODES, CreateTransferResultCode, 'CREATE_TRANSFER_RESULT_CODE_');
const TRANSFER_CODE_NAMES = new Map([...TRANSFER_CODES].map(([name, value]) => [value, name]));
const ACCOUNT_CODE_NAMES = new Map([...ACCOUNT_CODES].map(([name, value]) => [value, name]));

export function accountResultToProto(r: EventResult<AccountResultCode>, index: number): CreateAccountResult {
  return { index, code: ACCOUNT_CODES.get(r.code)!, timestamp: r.timestamp };
}

export function transferResultToProto(r: EventResult<TransferResultCode>, index: number): CreateTransferResult {
  return { index, code: TRANSFER_CODES.get(r.code)!, timestamp: r.timestamp };
}

export function transferCodeName(code: CreateTransferResultCode): TransferResultCode | 'unspecified' {
  return TRANSFER_CODE_NAMES.get(code) ?? 'unspecified';
}

export function accountCodeName(code: CreateAccountResultCode): AccountResultCode | 'unspecified' {
  return ACCOUNT_CODE_NAMES.get(code) ?? 'unspecified';
}

export function accountToProto(a: AccountRow): Account {
  return {
    id: a.id,
    ledger: a.ledger,
    code: a.code,
    flags: {
      linked: false,
      debitsMustNotExceedCredits: hasFlag(a.flags, AccountFlag.debitsMustNotExceedCredits),
      creditsMustNotExceedDebits: hasFlag(a.flags, AccountFlag.creditsMustNotExceedDebits),
      history: hasFlag(a.flags, AccountFlag.history),
      closed: hasFlag(a.flags, AccountFlag.closed),
    },
    debitsPending: a.debitsPending,
    debitsPosted: a.debitsPosted,
    creditsPending: a.creditsPending,
    creditsPosted: a.creditsPosted,
    metadata: a.metadata,
    timestamp: a.timestamp,
  };
}

export function transferToProto(t: TransferRow): Transfer {
  return {
    id: t.id,
    debitAccountId: t.debitAccountId,
    creditAccountId: t.creditAccountId,
    amount: t.amount,
    pendingId: t.pendingId,
    ledger: t.ledger,
    code: t.code,
    flags: {
      linked: hasFlag(t.flags, TransferFlag.linked),
      pending: hasFlag(t.flags, TransferFlag.pending),
      postPendingTransfer: hasFlag(t.flags, TransferFlag.postPendingTransfer),
      voidPendingTransfer: hasFlag(t.flags, TransferFlag.voidPendingTransfer),
      balancingDebit: hasFlag(t.flags, TransferFlag.balancingDebit),
      balancingCredit: hasFlag(t.flags, TransferFlag.balancingCredit),
    },
    timeout: t.timeout,
    metadata: t.metadata,
    timestamp: t.timestamp,
    // PendingState numbers are the proto enum's (1 pending ... 4 expired).
    pendingState: t.pendingState ?? 0,
  };
}

export function balanceToProto(h: HistoryRow): AccountBalance {
  return {
    transferId: h.transferId,
    timestamp: h.timestamp,
    debitsPending: h.debitsPending,
    debitsPosted: h.debitsPosted,
    creditsPending: h.creditsPending,
    creditsPosted: h.creditsPosted,
  };
}
