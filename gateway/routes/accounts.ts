import { currencyOf } from '../../lib/currency.js';
import { withTransaction } from '../../lib/db.js';
import { AppError, ValidationError } from '../../lib/errors.js';
import { newAccount } from '../../ledger/client.js';
import { accountCodeName } from '../../ledger/convert.js';
import { encodeCursor } from '../../ledger/queries.js';
import type { Gateway, RouteContext } from '../app.js';
import { asBodyField, httpStatusOf } from '../errors.js';
import { accountNotFound, requireOwnedAccount } from '../ownership.js';
import { Account, AccountBody, Balance, BalanceQuery, COMMON_ERRORS, IdParams, ListQuery, Transfer, listOf } from '../schemas.js';
import { accountView, balancesView, transferView } from '../views.js';
import { createdObjectId, objectId, refuseReservedId } from './ids.js';

const INT64_MAX = 2n ** 63n - 1n;

export function accountRoutes(app: Gateway, ctx: RouteContext): void {
  const { backends, pool } = ctx;

  app.post('/v1/accounts', { schema: { body: AccountBody, response: { 200: Account, 201: Account, ...COMMON_ERRORS } } }, async (request, reply) => {
    const merchantId = ctx.merchantOf(request);
    const body = request.body;
    const currency = currencyOf(body.currency);
    const flags = new Set(body.flags ?? []);
    if (flags.has('debits_must_not_exceed_credits') && flags.has('credits_must_not_exceed_debits')) {
      throw new ValidationError('flags', 'debits_must_not_exceed_credits and credits_must_not_exceed_debits exclude each other', 'flags_are_mutually_exclusive');
    }
    if (body.id !== undefined) refuseReservedId(body.id, 'id');
    const id = body.id?.toLowerCase() ?? createdObjectId(request, merchantId, 'account');
    const taken = () => new AppError('conflict', 'resource_already_exists', 'An account with this id exists', { field: 'id' });
    // An id the ledger holds already that is not this merchant's (an operator's account made with the ledger's CLI
    // has no owner row): its creation would be answered `exists` with the account, handing it to whoever named it.
    // Checked before claiming, so that a concurrent request of this merchant cannot have made it meanwhile.
    if (body.id !== undefined && !(await ownsAccount(id)) && (await inLedger(id))) throw taken();
    // Ownership first: a ledger account without its owner row would be nobody's.
    const claimed = await withTransaction(pool, (client) =>
      client.query(`INSERT INTO merchant_accounts (account_id, merchant_id, currency, purpose) VALUES ($1, $2, $3, 'custom') ON CONFLICT (account_id) DO NOTHING`, [id, merchantId, currency.code]),
    );
    if (claimed.rowCount === 0 && !(await ownsAccount(id))) throw taken();
    const account = newAccount({
      id,
      ledger: currency.ledger,
      code: body.code ?? 1,
      flags: { debitsMustNotExceedCredits: flags.has('debits_must_not_exceed_credits'), creditsMustNotExceedDebits: flags.has('credits_must_not_exceed_debits'), history: flags.has('history') },
      metadata: body.metadata ?? {},
    });
    const [result] = await backends.ledgerCall((ledger, options) => ledger.createAccounts([account], options), true).catch(async (error: unknown) => {
      // The ledger refused the request itself (400: an id or metadata it does not take): nothing of it may stay
      // behind. After a 5xx the claim stays: the ledger may have made the account, which must not be nobody's.
      if (error instanceof AppError && httpStatusOf(error) < 500) await unclaim();
      throw asBodyField(error, 'accounts.0.');
    });
    const code = result ? accountCodeName(result.code) : 'unspecified';
    if (code === 'ok') return reply.code(201).send(accountView({ ...account, timestamp: result!.timestamp }));
    if (code === 'exists') {
      const [existing] = await backends.ledgerCall((ledger, options) => ledger.lookupAccounts([id], options), true);
      if (existing) return reply.code(200).send(accountView(existing));
    }
    // Refused: nothing of this request may stay behind.
    await unclaim();
    throw new AppError('conflict', code, `The ledger refused the account: ${code}`, { field: code.startsWith('exists') ? 'id' : 'flags' });

    /**
     * Forgets the ownership row this request made (none if the merchant owned the id before), unless the ledger
     * holds the account: then a concurrent request of this merchant, let through by this very claim, made it (with
     * other fields, hence this refusal; the check before claiming refused any other holder), and answered 201.
     * Forgotten, that account was nobody's: 404 to the merchant, and its id taken for good.
     */
    async function unclaim(): Promise<void> {
      if (claimed.rowCount !== 1 || (await inLedger(id))) return;
      await withTransaction(pool, (client) => client.query('DELETE FROM merchant_accounts WHERE account_id = $1 AND merchant_id = $2', [id, merchantId]));
    }

    async function ownsAccount(accountId: string): Promise<boolean> {
      return requireOwnedAccount(pool, merchantId, accountId).then(
        () => true,
        () => false,
      );
    }

    /** Whether the ledger holds the account (an id it refuses to look up it holds not: the creation says why). */
    async function inLedger(accountId: string): Promise<boolean> {
      const found = await backends
        .ledgerCall((ledger, options) => ledger.lookupAccounts([accountId], options), true)
        .catch((error: unknown) => (error instanceof AppError && error.kind === 'invalid_argument' ? [] : Promise.reject(error)));
      return found.length > 0;
    }
  });

  app.get('/v1/accounts/:id', { schema: { params: IdParams, response: { 200: Account, ...COMMON_ERRORS } } }, async (request) => {
    const id = objectId(request.params.id, accountNotFound);
    await requireOwnedAccount(pool, ctx.merchantOf(request), id);
    const [account] = await backends.ledgerCall((ledger, options) => ledger.lookupAccounts([id], options), true);
    if (!account) throw accountNotFound('id');
    return accountView(account);
  });

  app.get('/v1/accounts/:id/balance', { schema: { params: IdParams, querystring: BalanceQuery, response: { 200: Balance, ...COMMON_ERRORS } } }, async (request) => {
    const id = objectId(request.params.id, accountNotFound);
    await requireOwnedAccount(pool, ctx.merchantOf(request), id);
    const at = request.query.at;
    if (at === undefined) {
      const [account] = await backends.ledgerCall((ledger, options) => ledger.lookupAccounts([id], options), true);
      if (!account) throw accountNotFound('id');
      return { object: 'balance' as const, account: id, at: null, ...balancesView(account) };
    }
    const ms = Date.parse(at);
    if (!Number.isFinite(ms) || ms < 0) throw new ValidationError('at', 'an RFC 3339 timestamp after 1970');
    // Ledger timestamps are nanoseconds below 2^63: a later time (after 2262; past 2554 it does not even fit the
    // call's uint64) asks for the same balance as that bound.
    const nanos = BigInt(ms) * 1_000_000n + 999_999n;
    const balance = await backends
      .ledgerCall((ledger, options) => ledger.getAccountBalanceAt(id, nanos < INT64_MAX ? nanos : INT64_MAX, options), true)
      // An account without the history flag has no balance as of a time: `at` is what cannot be answered.
      .catch((error: unknown) => Promise.reject(error instanceof AppError && error.code === 'history_not_enabled' ? new AppError(error.kind, error.code, error.message, { ...error.details, field: 'at' }) : error));
    const zero = { debitsPending: 0n, debitsPosted: 0n, creditsPending: 0n, creditsPosted: 0n };
    return { object: 'balance' as const, account: id, at: new Date(ms).toISOString(), ...balancesView(balance ?? zero) };
  });

  app.get('/v1/accounts/:id/transfers', { schema: { params: IdParams, querystring: ListQuery, response: { 200: listOf(Transfer), ...COMMON_ERRORS } } }, async (request) => {
    const id = objectId(request.params.id, accountNotFound);
    await requireOwnedAccount(pool, ctx.merchantOf(request), id);
    const { limit = 10, starting_after: after, ending_before: before } = request.query;
    if (after && before) throw new ValidationError('ending_before', 'give starting_after or ending_before, not both');
    // Newest first; a Stripe-style anchor id becomes the ledger's (timestamp, id) cursor.
    let cursor = '';
    const anchorId = after ?? before;
    if (anchorId) {
      // As every list answers a cursor that names nothing of the caller's (Stripe's 400 resource_missing).
      const notOfThisAccount = new ValidationError(after ? 'starting_after' : 'ending_before', 'no such transfer of this account', 'resource_missing');
      // An id the ledger refuses to look up (the nil UUID) names no transfer either.
      const [anchor] = await backends
        .ledgerCall((ledger, options) => ledger.lookupTransfers([anchorId.toLowerCase()], options), true)
        .catch((error: unknown) => Promise.reject(error instanceof AppError && error.kind === 'invalid_argument' ? notOfThisAccount : error));
      if (!anchor || (anchor.debitAccountId !== id && anchor.creditAccountId !== id)) throw notOfThisAccount;
      cursor = encodeCursor(anchor.timestamp, anchor.id);
    }
    const page = await backends.ledgerCall((ledger, options) => ledger.getAccountTransfers({ accountId: id, limit: limit + 1, reversed: !before, cursor }, options), true);
    const items = page.transfers.slice(0, limit);
    return {
      object: 'list' as const,
      data: (before ? items.reverse() : items).map(transferView),
      has_more: page.transfers.length > limit,
      url: `/v1/accounts/${id}/transfers`,
    };
  });
}
