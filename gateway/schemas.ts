import { Type, type Static, type TSchema } from 'typebox';
import { CARD_TYPES } from '../lib/card-types.js';
import { MERCHANT_CATEGORIES } from '../lib/merchant-categories.js';

/**
 * One schema per request and response: Fastify validates with them and @fastify/swagger turns them into
 * /openapi.json. Bodies allow no unknown field. Amounts are JSON integers of minor units, 1..2^53-1 (what a
 * JSON number carries exactly).
 */

export const MAX_JSON_AMOUNT = Number.MAX_SAFE_INTEGER;
const uuid = (description?: string) => Type.String({ format: 'uuid', ...(description ? { description } : {}) });
const amount = (description = 'Minor units of the currency (e.g. cents), a positive integer') => Type.Integer({ minimum: 1, maximum: MAX_JSON_AMOUNT, description });
const currency = Type.String({ pattern: '^[A-Z]{3}$', description: 'ISO 4217 code, e.g. USD' });
const metadata = Type.Record(Type.String({ minLength: 1, maxLength: 64 }), Type.String({ maxLength: 512 }), { maxProperties: 16, description: 'Up to 16 string pairs' });
const timestamp = Type.String({ format: 'date-time', description: 'RFC 3339' });
const country = Type.String({ pattern: '^[A-Z]{2}$', description: 'ISO 3166-1 alpha-2' });
const text = (maxLength: number) => Type.String({ minLength: 1, maxLength });
const strict = { additionalProperties: false } as const;

export const ErrorSchema = Type.Object({
  error: Type.Object({
    type: Type.String(),
    code: Type.String(),
    message: Type.String(),
    param: Type.Optional(Type.String()),
    payment: Type.Optional(Type.Any()),
  }),
});

/** The query of a route that takes no parameters: anything given is refused. */
export const NoQuery = Type.Object({}, strict);

export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) }, strict);

export const ListQuery = Type.Object(
  {
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 10 })),
    starting_after: Type.Optional(uuid('Id of the last object of the previous page')),
    ending_before: Type.Optional(uuid('Id of the first object of the next page')),
  },
  strict,
);
export type ListQuery = Static<typeof ListQuery>;

export function listOf<T extends TSchema>(item: T) {
  return Type.Object({ object: Type.Literal('list'), data: Type.Array(item), has_more: Type.Boolean(), url: Type.String() });
}

export const MerchantBody = Type.Object(
  { name: text(200), category: Type.Optional(Type.Union(MERCHANT_CATEGORIES.map((c) => Type.Literal(c)), { description: 'What the merchant sells: a prior of fraud exposure' })) },
  strict,
);
export const Merchant = Type.Object({ id: uuid(), object: Type.Literal('merchant'), name: Type.String(), secret_key: Type.String({ description: 'Shown once' }) });

const AccountFlagName = Type.Union([Type.Literal('debits_must_not_exceed_credits'), Type.Literal('credits_must_not_exceed_debits'), Type.Literal('history')]);
export const AccountBody = Type.Object(
  {
    id: Type.Optional(uuid('Chosen by you (a version 4 or 7 UUID; version 8 is reserved): creating the same account again is harmless')),
    currency,
    code: Type.Optional(Type.Integer({ minimum: 1, maximum: 65535, default: 1, description: 'Your own category of account' })),
    flags: Type.Optional(Type.Array(AccountFlagName, { uniqueItems: true, maxItems: 3 })),
    metadata: Type.Optional(metadata),
  },
  strict,
);
export type AccountBody = Static<typeof AccountBody>;

/**
 * A balance: a sum of amounts, which can pass 2^53-1 (a busy account's lifetime credits) though no one amount
 * can. Written as the exact JSON integer, up to 2^64-1; read it into a 64-bit integer, not a double.
 */
const balance = () => Type.Unsafe<bigint>(Type.Integer({ minimum: 0, format: 'int64', description: 'Minor units; exact, may exceed 2^53-1' }));
const Balances = Type.Object({ debits_pending: balance(), debits_posted: balance(), credits_pending: balance(), credits_posted: balance() });
export const Account = Type.Object({
  id: uuid(),
  object: Type.Literal('account'),
  currency,
  code: Type.Integer(),
  flags: Type.Array(Type.String()),
  balances: Balances,
  metadata,
  created: timestamp,
});

export const BalanceQuery = Type.Object({ at: Type.Optional(timestamp) }, strict);
export const Balance = Type.Object({ object: Type.Literal('balance'), account: uuid(), at: Type.Union([timestamp, Type.Null()]), ...Balances.properties });

export const TransferBody = Type.Object(
  {
    id: Type.Optional(uuid('Chosen by you (a version 4 or 7 UUID; version 8 is reserved): the same id again is never a second posting')),
    debit_account_id: uuid(),
    credit_account_id: uuid(),
    amount: amount(),
    currency,
    pending: Type.Optional(Type.Boolean({ description: 'Reserve the amount until posted, voided or expired' })),
    timeout_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: 30 * 86_400, description: 'Pending transfers only' })),
    metadata: Type.Optional(metadata),
  },
  strict,
);
export type TransferBody = Static<typeof TransferBody>;

export const PostBody = Type.Object({ amount: Type.Optional(amount('At most the pending amount; the rest is released')) }, strict);
export const EmptyBody = Type.Object({}, strict);

export const Transfer = Type.Object({
  id: uuid(),
  object: Type.Literal('transfer'),
  debit_account_id: uuid(),
  credit_account_id: uuid(),
  amount: Type.Integer(),
  currency,
  pending_id: Type.Union([uuid(), Type.Null()]),
  status: Type.Union([Type.Literal('posted'), Type.Literal('pending'), Type.Literal('voided'), Type.Literal('expired')]),
  timeout_seconds: Type.Integer(),
  metadata,
  created: timestamp,
});

export const BatchBody = Type.Object({ transfers: Type.Array(TransferBody, { minItems: 1, maxItems: 1000 }) }, strict);
export type BatchBody = Static<typeof BatchBody>;
export const BatchResult = Type.Object({
  object: Type.Literal('transfer_batch'),
  results: Type.Array(
    Type.Object({
      id: uuid(),
      status: Type.Union([Type.Literal('created'), Type.Literal('exists'), Type.Literal('failed')]),
      code: Type.Optional(Type.String()),
      transfer: Type.Optional(Transfer),
    }),
  ),
});

const CardInput = Type.Object(
  { token: text(200), fingerprint: text(200), country, type: Type.Optional(Type.Union(CARD_TYPES.map((t) => Type.Literal(t)))) },
  strict,
);
export const PaymentBody = Type.Object(
  {
    amount: amount(),
    currency,
    source: Type.Union([Type.Object({ account: uuid('A wallet account of yours') }, strict), Type.Object({ card: CardInput }, strict)]),
    destination_account_id: Type.Optional(uuid('One of your accounts; default: your balance account of the currency')),
    capture_method: Type.Union([Type.Literal('automatic'), Type.Literal('manual')]),
    metadata: Type.Optional(metadata),
    device_id: Type.Optional(text(200)),
    ip_country: Type.Optional(country),
    customer: Type.Optional(text(200)),
  },
  strict,
);
export type PaymentBody = Static<typeof PaymentBody>;

export const CaptureBody = Type.Object({ amount: Type.Optional(amount('At most the authorized amount; the rest is released')) }, strict);

export const Payment = Type.Object({
  id: uuid(),
  object: Type.Literal('payment'),
  amount: Type.Integer(),
  amount_captured: Type.Integer(),
  amount_refunded: Type.Integer(),
  currency,
  status: Type.Union([
    Type.Literal('requires_capture'),
    Type.Literal('succeeded'),
    Type.Literal('canceled'),
    Type.Literal('declined'),
    Type.Literal('partially_refunded'),
    Type.Literal('refunded'),
    Type.Literal('processing'),
  ]),
  capture_method: Type.Union([Type.Literal('automatic'), Type.Literal('manual')]),
  source: Type.Union([
    Type.Object({ type: Type.Literal('account'), account: uuid() }),
    Type.Object({ type: Type.Literal('card'), card: Type.Object({ fingerprint: Type.String(), country: Type.String(), type: Type.Union([Type.String(), Type.Null()]) }) }),
  ]),
  destination_account_id: uuid(),
  fee: Type.Integer(),
  decline_code: Type.Union([Type.String(), Type.Null()]),
  risk: Type.Object({ outcome: Type.String(), score: Type.Number(), decision: Type.String(), reasons: Type.Array(Type.String()), model_version: Type.String() }),
  metadata,
  customer: Type.Union([Type.String(), Type.Null()]),
  created: timestamp,
});

export const RefundBody = Type.Object({ payment: uuid(), amount: Type.Optional(amount('Default: what is left of the captured amount')), metadata: Type.Optional(metadata) }, strict);
export type RefundBody = Static<typeof RefundBody>;
export const Refund = Type.Object({
  id: uuid(),
  object: Type.Literal('refund'),
  payment: uuid(),
  amount: Type.Integer(),
  currency,
  status: Type.String(),
  metadata,
  created: timestamp,
});

/** Error responses every authenticated route can give. */
export const COMMON_ERRORS = Object.fromEntries([400, 401, 404, 409, 413, 415, 422, 429, 500, 503, 504].map((status) => [status, ErrorSchema]));

const signedAmount = (description: string) => Type.Integer({ minimum: -MAX_JSON_AMOUNT, maximum: MAX_JSON_AMOUNT, description });
const minorUnits = (description: string) => Type.Integer({ minimum: 0, maximum: MAX_JSON_AMOUNT, description });

export const SettlementCloseBody = Type.Object({ merchant: uuid('The merchant whose open window closes now'), currency }, strict);

export const Settlement = Type.Object({
  id: uuid(),
  object: Type.Literal('settlement'),
  merchant: uuid(),
  account: uuid('The merchant account settled (credited by its payments)'),
  currency: Type.String(),
  window_start: timestamp,
  window_end: Type.String({ format: 'date-time', description: 'Exclusive: a movement at exactly this instant is in the next window' }),
  gross_captured: minorUnits('Captured in the window'),
  refunds: minorUnits('Refunded in the window'),
  fees: minorUnits('Platform fees of the captures'),
  net: signedAmount('gross_captured - refunds - fees'),
  carried_in: signedAmount('From the previous settlement: owed to the merchant (positive) or by it (negative)'),
  available: signedAmount("The account's available balance in the ledger when the settlement was made"),
  payout: minorUnits('Paid out: net + carried_in, but never more than available, nor than the ledger moved (payout_short)'),
  carried_out: signedAmount('net + carried_in - payout - payout_short, carried to the next settlement with payout_short'),
  shortfall: minorUnits('Due but not paid for lack of balance'),
  held_for_debt: minorUnits("Due but held back for what the merchant owes on its other settled accounts in the currency (a refund after their payout); carried, and paid once that debt is covered"),
  payout_short: minorUnits("What the ledger did not move of the payout decided, because the account's balance fell before the payout (a refund meanwhile); carried to the next settlement"),
  payout_transfer: uuid('The ledger transfer of the payout'),
  line_count: Type.Integer({ minimum: 0 }),
  status: Type.Union([Type.Literal('payout_pending'), Type.Literal('paid'), Type.Literal('payout_failed')]),
  failure_code: Type.Union([Type.String(), Type.Null()]),
});

export const Reconciliation = Type.Object({
  object: Type.Literal('reconciliation'),
  settlement: Settlement,
  lines_checked: Type.Integer(),
  ledger_transfers_checked: Type.Integer(),
  events_checked: Type.Integer(),
  discrepancies: Type.Array(
    Type.Object({
      kind: Type.String({ description: 'missing_line, missing_in_ledger, unsettled_ledger_transfer, amount_mismatch, account_mismatch, duplicate_event, batch_total_mismatch, payout_missing, payout_mismatch, unexpected_payout' }),
      detail: Type.String(),
      ids: Type.Array(Type.String()),
      expected: signedAmount('Minor units (or a count) the check expected'),
      actual: signedAmount('What it found'),
    }),
  ),
});

/** A non-JSON answer: the body as text, documented under its media type. */
export const textBody = (mediaType: string, description: string) => ({ description, content: { [mediaType]: { schema: Type.String() } } });
