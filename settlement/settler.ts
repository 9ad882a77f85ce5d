import { currencyOf } from '../lib/currency.js';
import { asAppError, withTransaction, type Pool, type PoolClient } from '../lib/db.js';
import { derivedId } from '../lib/derived-id.js';
import { AppError, InternalError, invariant } from '../lib/errors.js';
import { receivedFailure } from '../lib/grpc.js';
import type { Logger } from '../lib/logger.js';
import { newAccount, newTransfer, type LedgerClient } from '../ledger/client.js';
import { AccountCode, TransferCode, feeTransferId, nowNanos, platformAccountId } from '../ledger/payments/model.js';
import type { EventEnvelope } from '../proto/gen/events/v1/events.js';
import { CreateAccountResultCode, createTransferResultCodeToJSON } from '../proto/gen/ledger/v1/ledger.js';
import * as store from './store.js';
import { windowContaining, type Schedule } from './windows.js';

/** The ledger as settlement uses it: over gRPC (settlement is a service of its own). */
export type SettlementLedger = Pick<LedgerClient, 'createAccounts' | 'createTransfers' | 'lookupAccounts' | 'lookupTransfers' | 'getAccountTransfers'>;

export interface SettlementSettings {
  /** The windows of merchants without a settlement profile. */
  defaultSchedule: Schedule;
  /** A batch whose payout is unconfirmed this long is submitted again (derived transfer id: at most once). */
  resumePayoutsAfterMs: number;
  /**
   * How far ahead of this process's clock an event's occurred_at may be (producers' clocks drift a little); an
   * event dated later is refused, and dead-lettered by the consumer. Default DEFAULT_MAX_EVENT_SKEW_MS.
   */
  maxEventSkewMs?: number;
  /** Told of every batch made (scheduled or on demand), with its payout's outcome: metrics. */
  onBatch?: (batch: store.Batch) => void;
}

/** The event types that move money on a merchant's settled account. */
const SETTLED_TYPES = new Set(['payment.captured', 'payment.refunded']);
const PROFILE_CACHE_MS = 30_000;
/** Minutes of drift between the producer's clock and settlement's; an event dated further ahead is refused. */
export const DEFAULT_MAX_EVENT_SKEW_MS = 5 * 60_000;
const NS_PER_MS = 1_000_000n;

/**
 * Settlement's core. Consuming: each payment.captured / payment.refunded event becomes entries on the account
 * the payment credited (capture, its fee, refund), effective when it happened, or, if that window has closed
 * already (a late event), at the start of the first open window. Closing: the entries of an account effective
 * before the cut go into one batch (in the same transaction the cut moves forward, so an entry is in exactly
 * one batch), whose net plus what was carried in is paid out by one ledger transfer to the payout clearing
 * account, never more than the account's available balance; the rest is carried to the next batch.
 */
export class Settler {
  private readonly profiles = new Map<string, { schedule: Schedule; at: number }>();
  private readonly clearingAccounts = new Set<string>();

  constructor(
    private readonly pool: Pool,
    private readonly ledger: SettlementLedger,
    private readonly settings: SettlementSettings,
    private readonly logger: Logger,
  ) {}

  /** The consumer's handler: runs in the consumer's transaction, beside its inbox row. */
  readonly handle = async (event: EventEnvelope, tx: PoolClient): Promise<void> => {
    if (!SETTLED_TYPES.has(event.type)) return;
    const consumed = settledMovement(event, nowNanos() + BigInt(this.settings.maxEventSkewMs ?? DEFAULT_MAX_EVENT_SKEW_MS) * NS_PER_MS);
    const schedule = await this.scheduleOf(consumed.merchantId, tx);
    const account = await store.openAccount(tx, consumed.accountId, consumed.merchantId, consumed.currency, windowContaining(schedule, consumed.occurredAt).start);
    invariant(
      account.merchantId === consumed.merchantId && account.currency === consumed.currency,
      `event ${consumed.eventId}: account ${consumed.accountId} is settled for ${account.merchantId} in ${account.currency}, not ${consumed.merchantId} in ${consumed.currency}`,
    );
    const effectiveAt = consumed.occurredAt > account.closedThrough ? consumed.occurredAt : account.closedThrough;
    await store.recordEvent(tx, consumed, effectiveAt, movementEntries(consumed));
  };

  /**
   * Closes every window that has ended by `now` (each ended window its own batch; empty windows are skipped).
   * An account that fails to close is logged and left for the next run: it must not hold up every account after
   * it (an outage of the database or the ledger is thrown, to be waited out).
   */
  async closeEnded(now = nowNanos()): Promise<store.Batch[]> {
    const made: store.Batch[] = [];
    for (const account of await store.settledAccounts(this.pool)) {
      const schedule = account.profile?.schedule ?? this.settings.defaultSchedule;
      const lastBoundary = windowContaining(schedule, now).start;
      let closedThrough = account.closedThrough;
      try {
        while (closedThrough < lastBoundary) {
          const cut = windowContaining(schedule, closedThrough).end;
          const outcome = await this.closeAccount(account.accountId, cut, { schedule, upTo: lastBoundary });
          if (outcome.batch) made.push(outcome.batch);
          invariant(outcome.closedThrough > closedThrough, `settlement account ${account.accountId} did not move past ${closedThrough}`);
          closedThrough = outcome.closedThrough;
        }
      } catch (error) {
        if (isOutage(error)) throw error;
        this.logger.error({ err: error, account: account.accountId }, 'settlement account could not be closed; the others go on');
      }
    }
    return made;
  }

  /** Closes the open windows of a merchant's accounts in a currency now, before their scheduled end. */
  async closeNow(merchantId: string, currency: string): Promise<store.Batch[]> {
    currencyOf(currency);
    const known = await this.pool.query('SELECT 1 FROM merchants WHERE id = $1', [merchantId]);
    if (known.rowCount === 0) throw new AppError('not_found', 'merchant_not_found', 'no such merchant', { field: 'merchant_id' });
    const now = nowNanos();
    const made: store.Batch[] = [];
    for (const account of await store.settledAccounts(this.pool, merchantId, currency)) {
      const { batch } = await this.closeAccount(account.accountId, now);
      if (batch) made.push(batch);
    }
    return made;
  }

  /**
   * Closes one account's window at `cut`: a batch of its entries effective before the cut, and its payout.
   * With nothing to pay (no entries, nothing owed to the merchant), no batch is made; `skip` then moves the
   * account on to the window of its next entry (at most `upTo`), so idle windows cost one transaction in all.
   */
  async closeAccount(accountId: string, cut: bigint, skip?: { schedule: Schedule; upTo: bigint }): Promise<{ batch: store.Batch | null; closedThrough: bigint }> {
    const outcome = await withTransaction(this.pool, async (tx) => {
      const account = await store.lockAccount(tx, accountId);
      invariant(account, `settlement account ${accountId} vanished`);
      if (cut <= account.closedThrough) return { batch: null, closedThrough: account.closedThrough };
      const available = await this.availableBalance(tx, accountId);
      const id = derivedId('settlement-batch', `${accountId}:${cut}`);
      const lines = await store.takeEntries(tx, accountId, cut, id);
      const due = lines.reduce((s, l) => s + store.signedAmount(l.kind, l.amount), 0n) + account.carried;
      // What the merchant owes on its other accounts in the currency (a refund after their payout): held back here.
      // Settled per account alone, a debt stays on the account that ran it up, and the merchant escapes it by taking
      // its next payments into another account. Read in this transaction: a concurrent close or event that changes
      // it conflicts (SERIALIZABLE), and the next close sees the batch made here.
      const debtElsewhere = due > 0n && available > 0n ? await store.debtElsewhere(tx, account, cut) : 0n;
      if (lines.length === 0 && (account.carried - debtElsewhere <= 0n || available <= 0n)) {
        const next = skip ? await this.nextNonEmptyWindowStart(tx, accountId, cut, skip) : cut;
        await store.advanceAccount(tx, accountId, next, account.carried);
        return { batch: null, closedThrough: next };
      }
      const batch = batchOf(id, account, cut, lines, available, debtElsewhere);
      await store.insertBatch(tx, batch);
      await store.advanceAccount(tx, accountId, cut, batch.carriedOut);
      await store.writeBatchCreated(tx, batch, nowNanos());
      return { batch, closedThrough: cut, debtElsewhere };
    });
    if (outcome.batch) {
      const held = 'debtElsewhere' in outcome && outcome.debtElsewhere > 0n ? { debt_elsewhere: String(outcome.debtElsewhere) } : {};
      this.logger.info({ batch: outcome.batch.id, account: accountId, lines: outcome.batch.lineCount, net: String(outcome.batch.net), payout: String(outcome.batch.payout), ...held }, 'settlement batch made');
      // The batch answered (CloseWindow) says what the payout did: its status, what the ledger did not move, or why it refused.
      if (outcome.batch.status === 'payout_pending') Object.assign(outcome.batch, await this.payOut(outcome.batch));
      this.settings.onBatch?.(outcome.batch);
    }
    return outcome;
  }

  /** Submits the payouts of batches whose payout was not confirmed (the process stopped in between). */
  async resumePayouts(): Promise<number> {
    const pending = await store.pendingPayouts(this.pool, this.settings.resumePayoutsAfterMs);
    for (const batch of pending) {
      try {
        // Counted now that its payout is decided, as closeAccount counts the others: its close failed to submit the
        // payout (or the process stopped), so it was never counted, and a refusal here would page no one.
        const outcome = await this.payOut(batch);
        this.settings.onBatch?.({ ...batch, ...outcome });
      } catch (error) {
        // As for closing: one batch's failure must not hold up every payout after it (an outage stops the run).
        if (isOutage(error)) throw error;
        this.logger.error({ err: error, batch: batch.id }, 'payout could not be submitted again; the others go on');
      }
    }
    return pending.length;
  }

  /**
   * The payout transfer of a batch (its id derives from the batch: submitting it again is `exists`). A balancing
   * debit: the batch read the account's balance before, and a debit since (a refund, a merchant's own transfer)
   * would have left the account below zero after the payout, money the platform paid out and must recover. The
   * ledger moves at most what the account holds at that moment, and the batch records what moved. Returns the
   * batch's status, payout_short and failure code after it.
   */
  async payOut(batch: store.Batch): Promise<Pick<store.Batch, 'status' | 'payoutShort' | 'failureCode'>> {
    invariant(batch.payout > 0n, `batch ${batch.id} has nothing to pay out`);
    const currency = currencyOf(batch.currency);
    const clearing = await this.payoutClearingAccount(batch.currency);
    const [result] = await this.ledger.createTransfers([
      newTransfer({
        id: batch.payoutTransferId,
        debitAccountId: batch.accountId,
        creditAccountId: clearing,
        amount: batch.payout,
        ledger: currency.ledger,
        code: TransferCode.payout,
        flags: { balancingDebit: true },
        metadata: { settlement_batch_id: batch.id, merchant_id: batch.merchantId },
      }),
    ]);
    invariant(result, `no result for the payout of batch ${batch.id}`);
    // What moved is read from the transfer: also when it was made by an earlier submission (`exists`), or by a version
    // that sent no balancing flag (exists_with_different_fields for the same derived id: it is this batch's payout).
    const [made] = await this.ledger.lookupTransfers([batch.payoutTransferId]);
    if (made) {
      invariant(made.debitAccountId === batch.accountId && made.creditAccountId === clearing && made.code === TransferCode.payout, `payout transfer ${made.id} of batch ${batch.id} is not its payout`);
      await withTransaction(this.pool, (tx) => store.markPaid(tx, batch, made.amount));
      if (made.amount < batch.payout) this.logger.warn({ batch: batch.id, decided: String(batch.payout), moved: String(made.amount) }, 'payout moved less than decided (the balance fell since the batch); the rest is carried to the next batch');
      return { status: 'paid', payoutShort: batch.payout - made.amount, failureCode: null };
    }
    const code = createTransferResultCodeToJSON(result.code).replace('CREATE_TRANSFER_RESULT_CODE_', '').toLowerCase();
    this.logger.error({ batch: batch.id, code }, 'payout refused by the ledger; its amount is carried to the next batch');
    await withTransaction(this.pool, (tx) => store.markPayoutFailed(tx, batch, code));
    return { status: 'payout_failed', payoutShort: 0n, failureCode: code };
  }

  /**
   * What the account can pay out now: posted credits less posted and pending debits, less the payouts of its
   * batches that the ledger does not hold yet (a submission that failed, or is still to come): the next batch
   * must not pay that money a second time. Read under the account's lock (a concurrent close waits, then sees
   * the batch made before it), and the outstanding payouts before the balance: a payout posting in between is
   * then counted twice, paid a batch later, rather than not at all.
   */
  private async availableBalance(tx: PoolClient, accountId: string): Promise<bigint> {
    const outstanding = await store.outstandingPayouts(tx, accountId);
    const posted = new Set(outstanding.length === 0 ? [] : (await this.ledger.lookupTransfers(outstanding.map((b) => b.payoutTransferId))).map((t) => t.id));
    const unposted = outstanding.filter((b) => !posted.has(b.payoutTransferId)).reduce((sum, b) => sum + b.payout, 0n);
    const [account] = await this.ledger.lookupAccounts([accountId]);
    if (!account) throw new InternalError(`settled account ${accountId} is not in the ledger`);
    return account.creditsPosted - account.debitsPosted - account.debitsPending - unposted;
  }

  private async nextNonEmptyWindowStart(tx: PoolClient, accountId: string, cut: bigint, skip: { schedule: Schedule; upTo: bigint }): Promise<bigint> {
    const r = await tx.query('SELECT min(effective_at) AS earliest FROM settlement_entries WHERE account_id = $1 AND batch_id IS NULL', [accountId]);
    const earliest = r.rows[0]?.earliest as bigint | null;
    const next = earliest === null ? skip.upTo : windowContaining(skip.schedule, earliest).start;
    const bounded = next < skip.upTo ? next : skip.upTo;
    return bounded > cut ? bounded : cut;
  }

  private async payoutClearingAccount(currency: string): Promise<string> {
    const id = platformAccountId('payout_clearing', currency);
    if (this.clearingAccounts.has(id)) return id;
    const [result] = await this.ledger.createAccounts([newAccount({ id, ledger: currencyOf(currency).ledger, code: AccountCode.payoutClearing, metadata: { purpose: 'payout_clearing' } })]);
    if (result?.code !== CreateAccountResultCode.CREATE_ACCOUNT_RESULT_CODE_OK && result?.code !== CreateAccountResultCode.CREATE_ACCOUNT_RESULT_CODE_EXISTS) {
      throw new InternalError(`payout clearing account ${id} could not be created: ${result?.code}`);
    }
    this.clearingAccounts.add(id);
    return id;
  }

  /** Read through the caller's transaction: a second connection per event could exhaust the pool. */
  private async scheduleOf(merchantId: string, tx: PoolClient): Promise<Schedule> {
    const cached = this.profiles.get(merchantId);
    if (cached && Date.now() - cached.at < PROFILE_CACHE_MS) return cached.schedule;
    const schedule = (await store.findProfile(tx, merchantId))?.schedule ?? this.settings.defaultSchedule;
    this.profiles.set(merchantId, { schedule, at: Date.now() });
    return schedule;
  }
}

/**
 * The batch of `lines` closing the account's window at `cut`, with its payout decided: what is due, less what the
 * merchant owes on its other accounts in the currency (`debtElsewhere`), and never more than `available`.
 */
function batchOf(id: string, account: store.SettledAccount, cut: bigint, lines: readonly { kind: store.EntryKind; amount: bigint }[], available: bigint, debtElsewhere: bigint): store.Batch {
  const sum = (kind: store.EntryKind) => lines.filter((l) => l.kind === kind).reduce((s, l) => s + l.amount, 0n);
  const grossCaptured = sum('capture');
  const refunds = sum('refund');
  const fees = sum('fee');
  const net = grossCaptured - refunds - fees;
  const due = net + account.carried;
  // Never more than is there: a shortfall (or a debt, when refunds and fees exceed captures) is carried over, and
  // so is what is held back for the merchant's debt elsewhere (paid once that debt is covered).
  const heldForDebt = due > 0n && debtElsewhere > 0n ? (debtElsewhere < due ? debtElsewhere : due) : 0n;
  const payable = due - heldForDebt;
  const payout = payable <= 0n || available <= 0n ? 0n : payable < available ? payable : available;
  const batch: store.Batch = {
    id,
    merchantId: account.merchantId,
    accountId: account.accountId,
    currency: account.currency,
    windowStart: account.closedThrough,
    windowEnd: cut,
    grossCaptured,
    refunds,
    fees,
    lineCount: lines.length,
    net,
    carriedIn: account.carried,
    available,
    payout,
    carriedOut: due - payout,
    heldForDebt,
    payoutShort: 0n,
    payoutTransferId: derivedId('payout', id),
    status: payout > 0n ? 'payout_pending' : 'paid',
    failureCode: null,
  };
  invariant(batch.net === lines.reduce((s, l) => s + store.signedAmount(l.kind, l.amount), 0n), `batch ${id}: net differs from its lines`);
  invariant(batch.payout >= 0n && batch.payout <= (available > 0n ? available : 0n), `batch ${id}: payout ${batch.payout} outside 0..${available}`);
  invariant(batch.carriedOut === batch.net + batch.carriedIn - batch.payout, `batch ${id}: carried amounts do not add up`);
  invariant(heldForDebt >= 0n && heldForDebt <= (batch.carriedOut > 0n ? batch.carriedOut : 0n), `batch ${id}: held ${heldForDebt} for a debt beyond what it carries out`);
  return batch;
}

/** The database or the ledger is down, overloaded or slow: no fault of one account's, waited out by the caller. */
function isOutage(error: unknown): boolean {
  const cause = asAppError(error);
  if (cause instanceof AppError) return cause.retryable;
  return receivedFailure(error)?.retryable ?? false;
}

/**
 * The entries of a movement, as consumed and as journaled (reconciliation expects the same). Only money the platform
 * received is paid out: a card payment's capture and refund. A wallet payment moves money between the merchant's
 * own accounts, which it may have funded from an account allowed to go negative: settled, it would be paid to the
 * merchant's bank from nothing (or twice, once as the card payment that funded the wallet). Its fee is the
 * platform's charge all the same, and is owed.
 */
export function movementEntries(consumed: Pick<store.ConsumedEvent, 'type' | 'operationId' | 'amount' | 'fee' | 'feeTransferId' | 'cardFunded'>): store.EntryInput[] {
  // A fee has its transfer id whenever it is above 0 (settledMovement, and the journal written from it).
  const fee: store.EntryInput[] = consumed.fee > 0n && consumed.feeTransferId ? [{ transferId: consumed.feeTransferId, kind: 'fee', amount: consumed.fee }] : [];
  if (!consumed.cardFunded) return fee;
  return consumed.type === 'payment.captured' ? [{ transferId: consumed.operationId, kind: 'capture', amount: consumed.amount }, ...fee] : [{ transferId: consumed.operationId, kind: 'refund', amount: consumed.amount }];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The money movement an event describes, validated: a malformed event fails (and is dead-lettered), never guessed.
 * That includes an occurred_at after `latest` (a producer's clock far ahead): taken as it is, it would settle in a
 * window that closes only then (for a new account, every later event too, each late to that window), and moving
 * it to now would be a guess. The movement's ledger transfer shows in reconciliation (unsettled_ledger_transfer)
 * until the event is published again with its time corrected.
 */
function settledMovement(event: EventEnvelope, latest: bigint): store.ConsumedEvent {
  const p = event.payload?.$case === 'payment' ? event.payload.value : undefined;
  const bad = (why: string) => new InternalError(`event ${event.eventId} (${event.type}): ${why}`);
  if (!p) throw bad('no payment payload');
  for (const [name, value] of [['payment_id', p.paymentId], ['merchant_id', p.merchantId], ['operation_id', p.operationId], ['destination_account_id', p.destinationAccountId]] as const) {
    if (!UUID.test(value)) throw bad(`${name} ${JSON.stringify(value)} is not a UUID`);
  }
  if (p.operationAmount <= 0n) throw bad(`operation_amount ${p.operationAmount} is not positive`);
  if (p.operationFee < 0n || p.operationFee > p.operationAmount) throw bad(`operation_fee ${p.operationFee} outside 0..${p.operationAmount}`);
  if (event.occurredAt <= 0n) throw bad('no occurred_at');
  if (event.occurredAt > latest) throw bad(`occurred_at ${event.occurredAt} is in the future (later than ${latest}, the clock skew allowed)`);
  currencyOf(p.currency);
  if (!['', 'card', 'account'].includes(p.sourceType)) throw bad(`source_type ${JSON.stringify(p.sourceType)} is neither card nor account`);
  const captured = event.type === 'payment.captured';
  return {
    eventId: event.eventId,
    type: event.type,
    paymentId: p.paymentId,
    operationId: p.operationId,
    accountId: p.destinationAccountId,
    merchantId: p.merchantId,
    currency: p.currency,
    amount: p.operationAmount,
    fee: captured ? p.operationFee : 0n,
    // Events written before fee_transfer_id existed name the fee by the rule payments derive it with.
    feeTransferId: captured && p.operationFee > 0n ? p.feeTransferId || feeTransferId(p.operationId) : null,
    occurredAt: event.occurredAt,
    // Events written before source_type existed: card, as they were all settled then.
    cardFunded: p.sourceType !== 'account',
  };
}
