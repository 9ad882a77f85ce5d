import { currencyOf } from '../../lib/currency.js';
import { derivedId } from '../../lib/derived-id.js';
import { AppError, ValidationError } from '../../lib/errors.js';
import { newTransfer } from '../../ledger/client.js';
import { transferCodeName } from '../../ledger/convert.js';
import { TransferCode } from '../../ledger/payments/model.js';
import type { Transfer as LedgerTransfer } from '../../proto/gen/ledger/v1/ledger.js';
import type { Gateway, RouteContext } from '../app.js';
import { asBodyField } from '../errors.js';
import { ownedAccounts } from '../ownership.js';
import { BatchBody, BatchResult, COMMON_ERRORS, EmptyBody, IdParams, PostBody, Transfer, TransferBody } from '../schemas.js';
import { transferView } from '../views.js';
import { createdObjectId, objectId, refuseReservedId } from './ids.js';

/**
 * The ledger code of the transfers this API makes. Payments and settlement make theirs with codes of their own
 * and drive them through their own steps.
 */
const API_TRANSFER_CODE = TransferCode.merchantTransfer;

const transferNotFound = (field: string) => new AppError('not_found', 'resource_missing', 'No such transfer', { field });

/**
 * A ledger refusal as the API's error: the ledger's result code is the error code (402 for a lack of funds); the
 * codes about the id itself (taken by another transfer, or spent by a refusal) name the `id` field.
 */
function refused(code: string): AppError {
  const message =
    code === 'id_already_failed'
      ? 'An earlier transfer with this id was refused, and a refused id stays refused: send the transfer again with a new id'
      : `The ledger refused the transfer: ${code}`;
  return new AppError('conflict', code, message, code.startsWith('exists') || code === 'id_already_failed' ? { field: 'id' } : {});
}

export function transferRoutes(app: Gateway, ctx: RouteContext): void {
  const { backends, pool } = ctx;

  /**
   * Validates one transfer body against the merchant's accounts; the ledger event, or the error. `unnamedId` is
   * the transfer's id when the body names none (see createdObjectId: derived from the Idempotency-Key if any).
   */
  async function toLedger(merchantId: string, body: TransferBody, owned: Map<string, string>, unnamedId: () => string, field = (name: string) => name): Promise<LedgerTransfer> {
    const currency = currencyOf(body.currency, field('currency'));
    const debit = body.debit_account_id.toLowerCase();
    const credit = body.credit_account_id.toLowerCase();
    for (const [accountId, name] of [
      [debit, 'debit_account_id'],
      [credit, 'credit_account_id'],
    ] as const) {
      const accountCurrency = owned.get(accountId);
      if (!accountCurrency) throw new AppError('not_found', 'resource_missing', 'No such account', { field: field(name) });
      if (accountCurrency !== currency.code) throw new ValidationError(field('currency'), `the ${name.replace('_id', '')} is a ${accountCurrency} account`, 'currency_mismatch');
    }
    if (body.timeout_seconds !== undefined && !body.pending) throw new ValidationError(field('timeout_seconds'), 'only pending transfers expire', 'timeout_reserved_for_pending_transfer');
    if (body.id !== undefined) refuseReservedId(body.id, field('id'));
    return newTransfer({
      id: body.id?.toLowerCase() ?? unnamedId(),
      debitAccountId: debit,
      creditAccountId: credit,
      amount: BigInt(body.amount),
      ledger: currency.ledger,
      code: API_TRANSFER_CODE,
      flags: { pending: body.pending ?? false },
      timeout: body.timeout_seconds ?? 0,
      metadata: body.metadata ?? {},
    });
  }

  async function lookUp(id: string): Promise<LedgerTransfer | undefined> {
    const [found] = await backends.ledgerCall((ledger, options) => ledger.lookupTransfers([id], options), true);
    return found;
  }

  /** The transfer if one of its accounts is the merchant's (with how many are); 404 otherwise. */
  async function ownedTransfer(merchantId: string, id: string): Promise<{ transfer: LedgerTransfer; ownedAccountCount: number }> {
    const transfer = await lookUp(id);
    const ownedAccountCount = transfer ? (await ownedAccounts(pool, merchantId, [transfer.debitAccountId, transfer.creditAccountId])).size : 0;
    if (!transfer || ownedAccountCount === 0) throw transferNotFound('id');
    return { transfer, ownedAccountCount };
  }

  /** Submits one transfer: 201 created, 200 for the same transfer again, the ledger's code otherwise. */
  async function submit(transfer: LedgerTransfer): Promise<{ status: 201 | 200; body: ReturnType<typeof transferView> }> {
    const [result] = await backends
      .ledgerCall((ledger, options) => ledger.createTransfers([transfer], options), true)
      .catch((error: unknown) => Promise.reject(asBodyField(error, 'transfers.0.')));
    const code = result ? transferCodeName(result.code) : 'unspecified';
    if (code === 'ok' || code === 'exists') {
      const stored = await lookUp(transfer.id);
      if (stored) return { status: code === 'ok' ? 201 : 200, body: transferView(stored) };
    }
    throw refused(code);
  }

  app.post('/v1/transfers', { schema: { body: TransferBody, response: { 200: Transfer, 201: Transfer, 402: COMMON_ERRORS[400]!, ...COMMON_ERRORS } } }, async (request, reply) => {
    const merchantId = ctx.merchantOf(request);
    const owned = await ownedAccounts(pool, merchantId, [request.body.debit_account_id.toLowerCase(), request.body.credit_account_id.toLowerCase()]);
    const { status, body } = await submit(await toLedger(merchantId, request.body, owned, () => createdObjectId(request, merchantId, 'transfer')));
    return reply.code(status).send(body);
  });

  app.post('/v1/transfers/batch', { schema: { body: BatchBody, response: { 200: BatchResult, ...COMMON_ERRORS } } }, async (request) => {
    const merchantId = ctx.merchantOf(request);
    const bodies = request.body.transfers;
    const owned = await ownedAccounts(pool, merchantId, bodies.flatMap((t) => [t.debit_account_id.toLowerCase(), t.credit_account_id.toLowerCase()]));
    // Every item is checked before anything is submitted: a malformed item refuses the whole request.
    const transfers = await Promise.all(
      bodies.map((body, i) =>
        toLedger(
          merchantId,
          body,
          owned,
          () => createdObjectId(request, merchantId, 'transfer', i),
          (name) => `transfers.${i}.${name}`,
        ),
      ),
    );
    if (new Set(transfers.map((t) => t.id)).size !== transfers.length) throw new ValidationError('transfers', 'ids must be unique within a batch', 'duplicate_id');
    const results = await backends.ledgerCall((ledger, options) => ledger.createTransfers(transfers, options), true);
    const codes = results.map((r) => transferCodeName(r.code));
    const inBooks = transfers.filter((_, i) => codes[i] === 'ok' || codes[i] === 'exists').map((t) => t.id);
    // The ledger refuses an empty lookup (400): a batch whose every item was refused has nothing to read back.
    const found = inBooks.length === 0 ? [] : await backends.ledgerCall((ledger, options) => ledger.lookupTransfers(inBooks, options), true);
    const stored = new Map(found.map((t) => [t.id, t]));
    return {
      object: 'transfer_batch' as const,
      results: transfers.map((t, i) => {
        const code = codes[i]!;
        const found = stored.get(t.id);
        if ((code === 'ok' || code === 'exists') && found) return { id: t.id, status: code === 'ok' ? ('created' as const) : ('exists' as const), transfer: transferView(found) };
        return { id: t.id, status: 'failed' as const, code };
      }),
    };
  });

  app.get('/v1/transfers/:id', { schema: { params: IdParams, response: { 200: Transfer, ...COMMON_ERRORS } } }, async (request) => {
    return transferView((await ownedTransfer(ctx.merchantOf(request), objectId(request.params.id, transferNotFound))).transfer);
  });

  // Posting or voiding a pending transfer: the resolving transfer's id derives from the pending's, so a
  // repeated call is the same resolution, never a second one.
  for (const action of ['post', 'void'] as const) {
    app.post(`/v1/transfers/:id/${action}`, { schema: { params: IdParams, body: action === 'post' ? PostBody : EmptyBody, response: { 200: Transfer, 201: Transfer, 402: COMMON_ERRORS[400]!, ...COMMON_ERRORS } } }, async (request, reply) => {
      const merchantId = ctx.merchantOf(request);
      const { transfer: pending, ownedAccountCount } = await ownedTransfer(merchantId, objectId(request.params.id, transferNotFound));
      if (!pending.flags?.pending) throw new AppError('conflict', 'pending_transfer_not_pending', 'Only pending transfers can be posted or voided');
      // Only transfers this API made, between the merchant's own accounts. A payment's authorization is posted by
      // its capture and voided by its cancel, which also take the fee, move the payment's state and emit its
      // events: a post or void from here would skip all of that.
      if (pending.code !== API_TRANSFER_CODE || ownedAccountCount < 2) {
        throw new AppError('conflict', 'pending_transfer_managed_by_platform', 'This pending transfer was made by a payment or payout: capture or cancel the payment instead');
      }
      const amount = (request.body as { amount?: number } | undefined)?.amount;
      if (amount !== undefined && BigInt(amount) > pending.amount) throw new ValidationError('amount', `exceeds the pending amount ${pending.amount}`, 'exceeds_pending_amount');
      const { status, body } = await submit(
        newTransfer({
          id: derivedId(`transfer-${action}`, pending.id),
          debitAccountId: pending.debitAccountId,
          creditAccountId: pending.creditAccountId,
          amount: action === 'post' ? (amount !== undefined ? BigInt(amount) : pending.amount) : 0n,
          pendingId: pending.id,
          ledger: pending.ledger,
          code: pending.code,
          flags: action === 'post' ? { postPendingTransfer: true } : { voidPendingTransfer: true },
          metadata: {},
        }),
      );
      return reply.code(status).send(body);
    });
  }
}
