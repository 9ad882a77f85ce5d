import type { Pool } from '../lib/db.js';
import { ValidationError } from '../lib/errors.js';
import { unary } from '../lib/grpc.js';
import type { Logger } from '../lib/logger.js';
import type { LedgerServiceServer, Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { encodedAccountSizeBound, encodedSizeBound } from './encoded-size.js';
import { accountResultToProto, accountToProto, balanceToProto, transferResultToProto, transferToProto } from './convert.js';
import { TransferFlag, hasFlag, type TransferInput } from './model.js';
import * as queries from './queries.js';
import type { LedgerRouter } from './router.js';
import { checkBatchSize, parseAccounts, parseId, parseTransfers } from './validation.js';
import type { AccountFilter as ProtoAccountFilter } from '../proto/gen/ledger/v1/ledger.js';

/**
 * ledger.v1.LedgerService: validation, routing to shard batchers for writes, direct reads for queries.
 * `listingWaitMs`: how long an account's transfer listing waits for the batches running when it starts
 * (LEDGER_LISTING_WAIT_MS; LedgerRouter.listingHorizon).
 */
export function createLedgerService(router: LedgerRouter, pool: Pool, logger: Logger, listingWaitMs = 1000): LedgerServiceServer {
  const parseIds = (ids: readonly string[]) => {
    checkBatchSize(ids.length, 'ids');
    return ids.map((id, i) => parseId(id, `ids.${i}`));
  };
  const parseFilter = (f: ProtoAccountFilter | undefined): queries.AccountFilter => ({
    accountId: parseId(f?.accountId ?? '', 'filter.account_id'),
    timestampMin: f?.timestampMin ?? 0n,
    timestampMax: f?.timestampMax ?? 0n,
    debits: f?.debits ?? false,
    credits: f?.credits ?? false,
    reversed: f?.reversed ?? false,
    limit: f?.limit ?? 0,
    cursor: f?.cursor ?? '',
  });

  return {
    createAccounts: unary(logger, 'CreateAccounts', async (request) => {
      const results = await router.createAccounts(parseAccounts(request.accounts));
      return { results: results.map(accountResultToProto) };
    }),

    createTransfers: unary(logger, 'CreateTransfers', async (request) => {
      const transfers = parseTransfers(request.transfers);
      // A post/void goes to the shard of its pending's debit account (a pending of an earlier request is looked up).
      // One of a pending of the same request goes with it, whatever this key says: the router keeps such
      // dependent chains together (a pending inside a chain runs on the shard of the chain's first event).
      const inRequest = new Set(transfers.filter((t) => hasFlag(t.flags, TransferFlag.pending)).map((t) => t.id));
      const earlier = await queries.pendingAccounts(pool, resolvedPendingIds(transfers).filter((pendingId) => !inRequest.has(pendingId)));
      const debitOfPending = new Map(transfers.filter((t) => inRequest.has(t.id)).map((t) => [t.id, t.debitAccountId]));
      for (const [pendingId, { debit }] of earlier) if (!debitOfPending.has(pendingId)) debitOfPending.set(pendingId, debit);
      const routingKey = (t: TransferInput) => t.debitAccountId || debitOfPending.get(t.pendingId) || t.id;
      // A post/void changes its pending's accounts, whichever it names (other names are refused; one of a pending
      // of the same request is ordered with it anyway).
      const accountsOf = (t: TransferInput): string[] => {
        const pending = isResolution(t) ? earlier.get(t.pendingId) : undefined;
        return pending ? [pending.debit, pending.credit] : [t.debitAccountId, t.creditAccountId].filter((id) => id !== '');
      };
      const results = await router.createTransfers(transfers, routingKey, accountsOf);
      return { results: results.map(transferResultToProto) };
    }),

    lookupAccounts: unary(logger, 'LookupAccounts', async (request) => {
      const accounts = (await queries.lookupAccounts(pool, parseIds(request.ids))).map(accountToProto);
      assertFitsInReply(accounts, encodedAccountSizeBound, 'accounts');
      return { accounts };
    }),

    lookupTransfers: unary(logger, 'LookupTransfers', async (request) => {
      const transfers = (await queries.lookupTransfers(pool, parseIds(request.ids))).map(transferToProto);
      assertFitsInReply(transfers, encodedSizeBound, 'transfers');
      return { transfers };
    }),

    getAccountTransfers: unary(logger, 'GetAccountTransfers', async (request) => {
      // Only transfers that no running batch can still precede: a reader resuming after this page's last one
      // misses none (ledger/README.md "Timestamps").
      const filter = parseFilter(request.filter);
      const readsUpTo = filter.timestampMax === 0n ? undefined : filter.timestampMax;
      const page = await queries.getAccountTransfers(pool, filter, () => router.listingHorizon(listingWaitMs, readsUpTo));
      return fitInReply(page.items.map(transferToProto), page.nextCursor);
    }),

    getAccountBalances: unary(logger, 'GetAccountBalances', async (request) => {
      const page = await queries.getAccountBalances(pool, parseFilter(request.filter));
      return { balances: page.items.map(balanceToProto), nextCursor: page.nextCursor };
    }),

    getAccountBalanceAt: unary(logger, 'GetAccountBalanceAt', async (request) => {
      const row = await queries.getAccountBalanceAt(pool, parseId(request.accountId, 'account_id'), request.timestamp);
      return {
        balance: row
          ? balanceToProto(row)
          : { transferId: '', timestamp: 0n, debitsPending: 0n, debitsPosted: 0n, creditsPending: 0n, creditsPosted: 0n },
      };
    }),
  };
}

/**
 * Most bytes of transfers in one reply. The server sends at most 32 MiB (app.ts), and with metadata at its limits
 * a transfer encodes to about 28 KB: a full page of 8,190 would be refused whole (RESOURCE_EXHAUSTED, which
 * callers take for overload and retry). The same margin as the client's merged requests (client.ts).
 */
const MAX_REPLY_BYTES = 24 * 1024 * 1024;

/**
 * The longest prefix of a page that surely fits MAX_REPLY_BYTES; when cut short, the cursor continues after its
 * last transfer. A bound, not the encoding (which would cost a second encoding of every page, ~60 ms for 8,190).
 */
function fitInReply(transfers: Transfer[], nextCursor: string): { transfers: Transfer[]; nextCursor: string } {
  let bytes = 0;
  for (let i = 0; i < transfers.length; i++) {
    bytes += encodedSizeBound(transfers[i]!);
    // i > 0: one transfer alone always fits (its metadata is bounded far below the budget).
    if (bytes > MAX_REPLY_BYTES && i > 0) {
      const last = transfers[i - 1]!;
      return { transfers: transfers.slice(0, i), nextCursor: queries.encodeCursor(last.timestamp, last.id) };
    }
  }
  return { transfers, nextCursor };
}

/**
 * A lookup's answer must fit one reply too, and has no cursor to continue with (leaving some out would read as
 * "not found"): when it does not, the caller is told to ask for fewer ids, instead of the RESOURCE_EXHAUSTED of a
 * message too large, which callers take for overload and retry as it is.
 */
function assertFitsInReply<T>(objects: readonly T[], sizeBound: (o: T) => number, what: string): void {
  const bytes = objects.reduce((sum, o) => sum + sizeBound(o), 0);
  if (bytes > MAX_REPLY_BYTES) {
    throw new ValidationError('ids', `the ${objects.length} ${what} found make more than ${MAX_REPLY_BYTES / 1024 / 1024} MiB with their metadata: look them up in smaller requests`, 'reply_too_large');
  }
}

const isResolution = (t: TransferInput) => t.pendingId !== '' && hasFlag(t.flags, TransferFlag.postPendingTransfer | TransferFlag.voidPendingTransfer);

/**
 * Pending transfers that post/void events name: one naming no debit account goes to the shard of its pending's,
 * and each is ordered with the other events of its pending's accounts (router.ts).
 */
function resolvedPendingIds(transfers: readonly TransferInput[]): string[] {
  return [...new Set(transfers.filter(isResolution).map((t) => t.pendingId))];
}
