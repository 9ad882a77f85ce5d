import { randomUUID } from 'node:crypto';
import { status, type ServiceError } from '@grpc/grpc-js';
import { compareWithLimit, currencyOf, type Currency } from '../../lib/currency.js';
import { isUniqueViolation, withTransaction, type Pool } from '../../lib/db.js';
import { Coalescer } from '../../lib/coalesce.js';
import { derivedId } from '../../lib/derived-id.js';
import { AppError, InternalError, ValidationError, invariant } from '../../lib/errors.js';
import type { Logger } from '../../lib/logger.js';
import { Decision, type ScoreRequest, type ScoreResponse } from '../../proto/gen/risk/v1/risk.js';
import { AccountFlag, TransferFlag, hasFlag, type AccountInput, type AccountResultCode, type EventResult, type Metadata, type TransferInput, type TransferResultCode } from '../model.js';
import { lookupAccounts, lookupTransfers, spendingRefusal } from '../queries.js';
import type { LedgerRouter } from '../router.js';
import { CommitHorizon, MonotonicClock } from '../clock.js';
import { AccountCode, TransferCode, feeOf, feeTransferId, merchantBalanceAccountId, platformAccountId, type PlatformAccount, nowNanos, statusAfterRefund, type CaptureMethod, type OperationRow, type PaymentRow, type RiskAssessment } from './model.js';
import * as store from './store.js';
import { traceparentOf } from '../../observability/tracing.js';

/** The ledger as payments use it: in-process, through the shard router (batched with every other caller). */
export interface PaymentLedger {
  createAccounts(accounts: AccountInput[]): Promise<EventResult<AccountResultCode>[]>;
  createTransfers(transfers: TransferInput[]): Promise<EventResult<TransferResultCode>[]>;
}

export function routerLedger(router: LedgerRouter): PaymentLedger {
  return {
    createAccounts: (accounts) => router.createAccounts(accounts),
    // Every transfer payments make names its debit account; a linked chain follows its first event.
    createTransfers: (transfers) => router.createTransfers(transfers, (t) => t.debitAccountId),
  };
}

export interface RiskScorer {
  score(request: ScoreRequest, deadlineMs: number): Promise<ScoreResponse>;
}

export interface PaymentSettings {
  shardCount: number;
  authorizationTimeoutSeconds: number;
  riskDeadlineMs: number;
  /** Below this (US cents; another currency by its approximate worth in cents) a payment is approved when risk is unavailable. */
  riskFailOpenBelowAmount: bigint;
  /** The fail-open amount of the currencies named here instead (RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY). */
  riskFailOpenBelowAmountByCurrency?: ReadonlyMap<string, bigint>;
  /**
   * How long a listing waits for the payment creations in flight when it starts (LEDGER_LISTING_WAIT_MS), for
   * `listPayments`' horizon; unset: no horizon (another instance may be creating the merchant's payments).
   */
  listingWaitMs?: number;
  /**
   * The clock stamping `created_at`: the instance's (LedgerRouter.commits), started at the latest shard clock, so
   * payments stamp above those a former instance made (their authorizations were stamped after them there).
   */
  clock?: MonotonicClock;
}

export interface CreatePaymentInput {
  merchantId: string;
  idempotencyKey: string;
  amount: bigint;
  currency: string;
  source: { kind: 'account'; accountId: string } | { kind: 'card'; token: string; fingerprint: string; country: string; type: string };
  destinationAccountId: string;
  captureMethod: CaptureMethod;
  metadata: Metadata;
  deviceId: string;
  ipCountry: string;
  customerId: string;
}

type StepEvents = store.PaymentEventType[];
type Apply = (current: PaymentRow) => { next: PaymentRow; events: StepEvents };
/** A step's end that changes nothing of the payment (nothing moved). */
const unchanged: Apply = (p) => ({ next: p, events: [] });
interface FinishStep {
  op: OperationRow;
  status: 'succeeded' | 'failed';
  failureCode: string | null;
  apply: Apply;
  /** The caller's trace: the step's events carry it (the group commit serves several callers). */
  traceparent: string;
}

/**
 * Ledger refusals of a payment's transfers, by what they mean. Every refusal is deterministic (the same transfer
 * against the same accounts is refused again), so none may leave its step processing: the resumer would submit
 * it forever. Transient failures (the ledger unavailable, a deadline) are exceptions, not result codes, and do
 * leave the step processing for a retry or the resumer.
 *
 * Refusals that the payment's own accounts cause, i.e. the buyer's funds or the merchant's configuration of its
 * accounts: an authorization is declined with the decline code the merchant sees; a capture or refund fails with
 * the ledger code (402 for a lack of funds, 422 otherwise, as for transfers).
 * - exceeds_credits: an account that cannot be overdrawn: the wallet source of an authorization (the buyer's
 *   insufficient funds), the destination of a refund (the merchant moved the money out).
 * - exceeds_debits: an account with credits_must_not_exceed_debits, only ever the destination (the source is a
 *   wallet, whose flag excludes this one, or card clearing, without flags): the merchant chose an account that
 *   refuses the payment's credit. Not refused at validation: such an account accepts credits up to its debits.
 * - account_closed: an account closed in the ledger.
 * - overflow: a balance of the payment's accounts would pass the ledger's limit.
 * Every other code (an account or the authorization not found, a ledger mismatch, an id taken by other fields, a
 * pending transfer resolved outside the payment) means the books and the payment disagree: an invariant broken,
 * not a business answer. See brokenStep.
 */
const BUSINESS_REFUSALS: ReadonlySet<TransferResultCode> = new Set(['exceeds_credits', 'exceeds_debits', 'account_closed', 'overflow']);

/** The decline code of an authorization refused for a business reason (BUSINESS_REFUSALS). */
const DECLINES: Partial<Record<TransferResultCode, string>> = {
  exceeds_credits: 'insufficient_funds',
  exceeds_debits: 'destination_account_refused',
  account_closed: 'account_closed',
  overflow: 'balance_overflow',
};

const notFound = (what: 'payment' | 'refund' | 'account' | 'merchant', field: string) => new AppError('not_found', `${what}_not_found`, `no such ${what}`, { field });
const conflict = (code: string, message: string, field?: string) => new AppError('conflict', code, message, field ? { field } : {});

/**
 * Payment steps on the ledger. Each step is recorded `processing` first, then its ledger transfers are
 * submitted with ids derived from the step (so a second submission is `exists`, never a second posting), then
 * the step, the payment and its event are finished in one transaction. Retrying any call, or the resumer,
 * drives a step left processing to the same end.
 */
export class PaymentFlows {
  /**
   * Ledger accounts created or being created, by id (platform and merchant balance accounts are created on first
   * use): concurrent first payments wait for the one creation; a failed one is forgotten and tried again.
   */
  private readonly accountCreations = new Map<string, Promise<void>>();
  /** The merchant and any earlier payment of concurrent creations, read by one statement (ids validated before). */
  private readonly lookups = new Coalescer((asked: { merchantId: string; paymentId: string }[]) => store.loadMerchantsWithPayments(this.pool, asked));
  /**
   * Payment creations from their `created_at` stamp until their insert has ended: concurrent inserts commit in any
   * order, so a listing reads only up to what none of them can still precede (listPayments). Scoped by merchant:
   * a listing is one merchant's, and another merchant's slow insert must neither delay it nor hide its payments.
   */
  private readonly creations: CommitHorizon;
  /** Concurrent payment creations are inserted together, one statement per event-loop turn. */
  private readonly inserts = new Coalescer((items: { payment: PaymentRow; op: OperationRow }[]) => store.insertPaymentsWithOperations(this.pool, items));
  /**
   * Concurrent step completions are written together, one transaction per event-loop turn, one at a time: two
   * such transactions read and update payments on the same recent heap pages, which SERIALIZABLE's page-level
   * read locks see as a conflict (one of them retried). One at a time: as fast, 65 instead of 166 40001s in a
   * 20 s run of bench/payments.ts.
   */
  private readonly finishes = new Coalescer((steps: FinishStep[]) => this.finishMany(steps), 1_000, 1);

  constructor(
    private readonly pool: Pool,
    private readonly ledger: PaymentLedger,
    private readonly risk: RiskScorer,
    private readonly settings: PaymentSettings,
    private readonly logger: Logger,
  ) {
    this.creations = new CommitHorizon(settings.clock ?? new MonotonicClock());
  }

  async createPayment(input: CreatePaymentInput): Promise<PaymentRow> {
    const currency = currencyOf(input.currency);
    const id = input.idempotencyKey ? derivedId(`payment:${input.merchantId}`, input.idempotencyKey) : randomUUID();
    const { merchant, payment: existing } = await this.lookups.add({ merchantId: input.merchantId, paymentId: id });
    if (!merchant) throw notFound('merchant', 'merchant_id');
    if (existing) return this.repeatCreate(existing, input);
    // Every refusal first, then the accounts made on first use: a refused payment (404, 400) writes nothing.
    const sourceAccountId = await this.sourceAccount(input, currency);
    const destinationAccountId = await this.destinationAccount(input, currency);
    if (sourceAccountId === destinationAccountId) throw new ValidationError('destination_account_id', 'must differ from the source account', 'accounts_must_be_different');
    if (input.source.kind === 'card') await this.platformAccount('card_clearing', currency, AccountCode.cardClearing);
    // The fee transfer of a capture credits the platform's revenue account: it must exist before any capture.
    await this.platformAccount('fee_revenue', currency, AccountCode.platformRevenue);
    if (!input.destinationAccountId) await this.merchantBalanceAccount(input, destinationAccountId, currency);

    const risk = await this.assess(input, id, merchant.category);
    const decline = riskDecline(risk);
    const automatic = input.captureMethod === 'automatic';
    const creation = this.creations.begin(input.merchantId);
    const payment: PaymentRow = {
      id,
      merchantId: input.merchantId,
      idempotencyKey: input.idempotencyKey || null,
      amount: input.amount,
      currency: currency.code,
      captureMethod: input.captureMethod,
      sourceKind: input.source.kind,
      sourceAccountId,
      cardFingerprint: input.source.kind === 'card' ? input.source.fingerprint : null,
      cardCountry: input.source.kind === 'card' ? input.source.country : null,
      cardType: input.source.kind === 'card' && input.source.type ? input.source.type : null,
      merchantCategory: merchant.category,
      destinationAccountId,
      customerId: input.customerId || null,
      deviceId: input.deviceId || null,
      ipCountry: input.ipCountry || null,
      status: decline ? 'declined' : 'processing',
      amountCaptured: 0n,
      amountRefunded: 0n,
      feeBps: merchant.feeBps,
      fee: 0n,
      declineCode: decline?.code ?? null,
      declineReason: decline?.reason ?? null,
      risk,
      metadata: input.metadata,
      version: decline ? 1n : 0n,
      createdAt: creation.timestamp,
    };
    const authorization = this.newOperation(payment, 'authorize', derivedId('operation', `${id}:authorize`), input.amount, automatic ? feeOf(input.amount, merchant.feeBps) : 0n);
    if (decline) {
      authorization.status = 'failed';
      authorization.failureCode = decline.code;
    }
    let inserted: boolean;
    try {
      inserted = decline
        ? await withTransaction(
            this.pool,
            async (client) => {
              if (!(await store.insertPayment(client, payment))) return false;
              await store.insertOperation(client, authorization);
              await store.writePaymentEvents(client, this.settings.shardCount, [{ type: 'payment.declined', payment }], authorization);
              return true;
            },
            { retryIf: isUniqueViolation },
          )
        : await this.inserts.add({ payment, op: authorization });
    } finally {
      this.creations.end(creation);
    }
    if (!inserted) {
      // The same key arrived twice at once: the other call recorded it; continue from what it recorded.
      const recorded = await store.findPayment(this.pool, input.merchantId, id);
      invariant(recorded, `payment ${id} neither inserted nor found`);
      return this.repeatCreate(recorded, input);
    }
    return decline ? payment : this.driveAuthorization(authorization, payment);
  }

  async capture(merchantId: string, paymentId: string, amount: bigint): Promise<PaymentRow> {
    const payment = await this.requirePayment(merchantId, paymentId);
    const opId = derivedId('operation', `${paymentId}:capture`);
    const earlier = await store.findOperation(this.pool, opId);
    if (earlier) return this.repeatCapture(earlier, amount);
    if (payment.status !== 'requires_capture') throw conflict('payment_not_capturable', `a ${payment.status} payment cannot be captured`);
    const captureAmount = amount === 0n ? payment.amount : amount;
    if (captureAmount > payment.amount) throw new ValidationError('amount', `exceeds the authorized amount ${payment.amount}`, 'amount_too_large');
    const op = this.newOperation(payment, 'capture', opId, captureAmount, feeOf(captureAmount, payment.feeBps));
    const started = await this.startStep(op, (current, ops) => {
      if (current.status !== 'requires_capture' || ops.some((o) => o.kind === 'cancel')) throw conflict('payment_not_capturable', `a ${current.status} payment cannot be captured`);
    });
    if (!started) return this.repeatCapture((await store.findOperation(this.pool, opId))!, amount);
    return this.driveCapture(op);
  }

  /** The capture asked again: the one it was, for the amount it was made for (or none named). */
  private repeatCapture(earlier: OperationRow, amount: bigint): Promise<PaymentRow> {
    if (amount !== 0n && amount !== earlier.amount) throw conflict('payment_already_captured', `payment was captured for ${earlier.amount}`, 'amount');
    return this.repeatStep(earlier);
  }

  async cancel(merchantId: string, paymentId: string): Promise<PaymentRow> {
    const payment = await this.requirePayment(merchantId, paymentId);
    const opId = derivedId('operation', `${paymentId}:cancel`);
    const earlier = await store.findOperation(this.pool, opId);
    if (earlier) return this.repeatStep(earlier);
    if (payment.status !== 'requires_capture') throw conflict('payment_not_cancelable', `a ${payment.status} payment cannot be canceled`);
    const op = this.newOperation(payment, 'cancel', opId, payment.amount, 0n);
    const started = await this.startStep(op, (current, ops) => {
      // A failed capture moved nothing: the authorization can still be released.
      if (current.status !== 'requires_capture' || ops.some((o) => o.kind === 'capture' && o.status !== 'failed')) throw conflict('payment_not_cancelable', `a ${current.status} payment cannot be canceled`);
    });
    if (!started) return this.repeatStep((await store.findOperation(this.pool, opId))!);
    return this.driveCancel(op);
  }

  async refund(merchantId: string, paymentId: string, amount: bigint, idempotencyKey: string, metadata: Metadata): Promise<OperationRow> {
    const id = idempotencyKey ? derivedId(`refund:${merchantId}`, idempotencyKey) : randomUUID();
    const earlier = await store.findOperation(this.pool, id);
    if (earlier) return this.repeatRefund(earlier, paymentId, amount);
    const payment = await this.requirePayment(merchantId, paymentId);
    const op = this.newOperation(payment, 'refund', id, amount, 0n);
    op.idempotencyKey = idempotencyKey || null;
    op.metadata = metadata;
    const started = await this.startStep(op, (current, ops) => {
      if (current.status !== 'succeeded' && current.status !== 'partially_refunded') throw conflict('payment_not_refundable', `a ${current.status} payment cannot be refunded`);
      // Refunds in flight count: two concurrent refunds can never return more than was captured together.
      const reserved = ops.filter((o) => o.kind === 'refund' && o.status !== 'failed').reduce((sum, o) => sum + o.amount, 0n);
      const remaining = current.amountCaptured - reserved;
      op.amount = amount === 0n ? remaining : amount;
      if (remaining <= 0n || op.amount > remaining) throw conflict('refund_exceeds_captured', `at most ${remaining} of the captured amount can still be refunded`, 'amount');
    });
    if (!started) return this.repeatRefund((await store.findOperation(this.pool, id))!, paymentId, amount);
    await this.driveRefund(op);
    return (await store.findOperation(this.pool, id))!;
  }

  /** The refund of an idempotency key asked again: the one it was, if asked with its payment and amount. */
  private async repeatRefund(earlier: OperationRow, paymentId: string, amount: bigint): Promise<OperationRow> {
    if (earlier.paymentId !== paymentId || (amount !== 0n && amount !== earlier.amount)) {
      throw conflict('idempotency_key_reused', 'this idempotency key was used for another refund', 'idempotency_key');
    }
    await this.repeatStep(earlier);
    return (await store.findOperation(this.pool, earlier.id))!;
  }

  async getPayment(merchantId: string, paymentId: string): Promise<PaymentRow> {
    return this.requirePayment(merchantId, paymentId);
  }

  listPayments(merchantId: string, limit: number, startingAfter: string | null, endingBefore: string | null): Promise<store.PaymentPage> {
    const waitMs = this.settings.listingWaitMs;
    return store.listPayments(this.pool, merchantId, limit, startingAfter, endingBefore, waitMs === undefined ? undefined : () => this.creations.horizon(waitMs, { scope: merchantId }));
  }

  async getRefund(merchantId: string, refundId: string): Promise<OperationRow> {
    const op = await store.findOperation(this.pool, refundId);
    if (!op || op.kind !== 'refund' || op.merchantId !== merchantId) throw notFound('refund', 'refund_id');
    return op;
  }

  /** Drives a step that was left processing (its caller crashed or timed out) to its end. */
  async resume(op: OperationRow): Promise<void> {
    await this.repeatStep(op);
  }

  // --- steps ---------------------------------------------------------------------------------------------

  private async driveAuthorization(op: OperationRow, known?: PaymentRow): Promise<PaymentRow> {
    const payment = known ?? (await this.requirePayment(op.merchantId, op.paymentId));
    const automatic = payment.captureMethod === 'automatic';
    const main: TransferInput = {
      ...this.transfer(payment, op.id, payment.sourceAccountId, payment.destinationAccountId, payment.amount, TransferCode.payment),
      flags: automatic ? (op.fee > 0n ? TransferFlag.linked : 0) : TransferFlag.pending,
      timeout: automatic ? 0 : this.settings.authorizationTimeoutSeconds,
    };
    let code = await this.submit([main, ...(automatic ? this.feeTransfer(payment, op) : [])]);
    if (code === 'exists_with_different_fields' && !automatic && (await this.heldWithOtherTimeout(main))) code = undefined;
    if (code === undefined) {
      return this.finish(op, 'succeeded', null, (p) => ({
        next: automatic ? { ...p, status: 'succeeded', amountCaptured: p.amount, fee: op.fee } : { ...p, status: 'requires_capture' },
        events: automatic ? ['payment.authorized', 'payment.captured'] : ['payment.authorized'],
      }));
    }
    const declineCode = DECLINES[code];
    if (!declineCode) {
      return this.brokenStep(op, code, (p) => ({
        next: { ...p, status: 'declined', declineCode: 'processing_error', declineReason: `the ledger refused the authorization: ${code}` },
        events: ['payment.declined'],
      }));
    }
    const refused = code === 'exceeds_debits' ? 'the destination account refused the credit (credits_must_not_exceed_debits)' : 'the ledger refused the transfer';
    return this.finish(op, 'failed', declineCode, (p) => ({
      next: { ...p, status: 'declined', declineCode, declineReason: `${refused}: ${code}` },
      events: ['payment.declined'],
    }));
  }

  private async driveCapture(op: OperationRow): Promise<PaymentRow> {
    const payment = await this.requirePayment(op.merchantId, op.paymentId);
    const post: TransferInput = {
      ...this.transfer(payment, op.id, payment.sourceAccountId, payment.destinationAccountId, op.amount, TransferCode.payment),
      pendingId: authorizationId(payment.id),
      flags: TransferFlag.postPendingTransfer | (op.fee > 0n ? TransferFlag.linked : 0),
    };
    const code = await this.submit([post, ...this.feeTransfer(payment, op)]);
    if (code === undefined) {
      return this.finish(op, 'succeeded', null, (p) => ({ next: { ...p, status: 'succeeded', amountCaptured: op.amount, fee: op.fee }, events: ['payment.captured'] }));
    }
    if (code === 'pending_transfer_expired') {
      await this.finish(op, 'failed', 'authorization_expired', (p) => ({ next: { ...p, status: 'canceled' }, events: ['payment.canceled'] }));
      throw conflict('authorization_expired', 'the authorization expired before the capture; the amount was released');
    }
    if (BUSINESS_REFUSALS.has(code)) {
      // The payment stays authorized (nothing moved): it can be canceled, or its authorization expires.
      await this.finish(op, 'failed', code, unchanged);
      throw conflict(code, `the ledger refused the capture: ${code}`);
    }
    return this.brokenStep(op, code);
  }

  private async driveCancel(op: OperationRow): Promise<PaymentRow> {
    const payment = await this.requirePayment(op.merchantId, op.paymentId);
    const voidTransfer: TransferInput = {
      ...this.transfer(payment, op.id, payment.sourceAccountId, payment.destinationAccountId, 0n, TransferCode.payment),
      pendingId: authorizationId(payment.id),
      flags: TransferFlag.voidPendingTransfer,
    };
    const code = await this.submit([voidTransfer]);
    // An expired authorization released its amount already: the cancel only records it. A void refused otherwise
    // (no business refusal applies to releasing an amount) is a broken invariant.
    if (code !== undefined && code !== 'pending_transfer_expired') return this.brokenStep(op, code);
    return this.finish(op, 'succeeded', null, (p) => ({ next: { ...p, status: 'canceled' }, events: ['payment.canceled'] }));
  }

  private async driveRefund(op: OperationRow): Promise<PaymentRow> {
    const payment = await this.requirePayment(op.merchantId, op.paymentId);
    const back = this.transfer(payment, op.id, payment.destinationAccountId, payment.sourceAccountId, op.amount, TransferCode.refund);
    const code = await this.submit([back]);
    if (code === undefined) {
      return this.finish(op, 'succeeded', null, (p) => {
        const amountRefunded = p.amountRefunded + op.amount;
        return { next: { ...p, amountRefunded, status: statusAfterRefund(p.amountCaptured, amountRefunded) }, events: ['payment.refunded'] };
      });
    }
    if (BUSINESS_REFUSALS.has(code)) {
      // A business rejection, answered as POST /v1/transfers answers it (the ledger code: exceeds_credits, a drained
      // destination, is 402). The refund stays recorded as failed, as a declined payment is: its reservation of the
      // refundable amount is released, and a repeat of the refund (same key, same id) answers the same. The refusal
      // is final in the ledger too (submit: the id is spent), so no other driver of this step can post it later.
      await this.finish(op, 'failed', code, unchanged);
      throw conflict(code, `the ledger refused the refund: ${code}`);
    }
    return this.brokenStep(op, code);
  }

  /**
   * Submits a step's transfers; answers the refusal of the first one refused, or undefined when all are in the
   * books (`ok`, or `exists` from an earlier submission). A refusal is final: the ledger spends the id of a
   * transfer refused for a reason of the moment, so the step's transfers sent again by another driver of the step
   * (a repeat, the resumer) are answered `id_already_failed`, which stands for the refusal that spent the id.
   * Every driver of a step thus reaches the same end, whatever the accounts did in between (the money back in a
   * drained destination), without holding the step's row across the ledger call.
   */
  private async submit(transfers: TransferInput[]): Promise<TransferResultCode | undefined> {
    const results = await this.ledger.createTransfers(transfers);
    const i = results.findIndex((r) => r.code !== 'ok' && r.code !== 'exists' && r.code !== 'linked_event_failed');
    const refused = results[i];
    if (!refused) return undefined;
    if (refused.code !== 'id_already_failed') return refused.code;
    const first = await spendingRefusal(this.pool, transfers[i]!.id);
    invariant(first, `transfer ${transfers[i]!.id} answered id_already_failed but is not spent`);
    return first;
  }

  /**
   * Whether the pending transfer of a manual authorization, refused exists_with_different_fields, is in the books
   * as sent but for its timeout: an earlier driver of the step (before a crash; the caller's retry or the resumer
   * drives it again) submitted it under another PAYMENTS_AUTHORIZATION_TIMEOUT_SECONDS (a deploy in between). The
   * ledger holds that authorization, with the expiry it was given then: declining the payment would hold the
   * buyer's funds for a payment that says it took nothing, and that nobody could capture or cancel.
   */
  private async heldWithOtherTimeout(sent: TransferInput): Promise<boolean> {
    const [held] = await lookupTransfers(this.pool, [sent.id]);
    return (
      held !== undefined &&
      held.debitAccountId === sent.debitAccountId &&
      held.creditAccountId === sent.creditAccountId &&
      held.amount === sent.amount &&
      held.ledger === sent.ledger &&
      held.code === sent.code &&
      held.flags === sent.flags &&
      held.metadata['payment_id'] === sent.metadata['payment_id']
    );
  }

  /**
   * A step the ledger refused with a code that means the books and the payment disagree (not BUSINESS_REFUSALS):
   * retrying cannot help, so the step ends failed with `processing_error` (the payment as `apply` makes it,
   * unchanged by default: nothing moved) instead of staying processing for the resumer to resubmit forever. It is
   * still an internal error: logged for an operator, and this call answers 500; a repeat answers the recorded
   * outcome (a declined payment, or the failed step's processing_error).
   */
  private async brokenStep(op: OperationRow, code: TransferResultCode, apply: Apply = unchanged): Promise<never> {
    this.logger.error({ operation: op.id, kind: op.kind, payment: op.paymentId, ledgerCode: code }, 'payment step refused by the ledger against its invariants; ended as failed');
    await this.finish(op, 'failed', 'processing_error', apply);
    throw new InternalError(`${op.kind} ${op.id} of payment ${op.paymentId} refused by the ledger: ${code}`);
  }

  /** A step asked again (same id): drive it if it is still processing, answer what it became otherwise. */
  private async repeatStep(op: OperationRow): Promise<PaymentRow> {
    if (op.status === 'processing') {
      switch (op.kind) {
        case 'authorize':
          return this.driveAuthorization(op);
        case 'capture':
          return this.driveCapture(op);
        case 'cancel':
          return this.driveCancel(op);
        case 'refund':
          return this.driveRefund(op);
      }
    }
    if (op.status === 'failed' && op.kind !== 'authorize') throw conflict(op.failureCode ?? 'step_failed', `the ${op.kind} failed: ${op.failureCode}`);
    return this.requirePayment(op.merchantId, op.paymentId);
  }

  private async repeatCreate(existing: PaymentRow, input: CreatePaymentInput): Promise<PaymentRow> {
    const sameSource =
      input.source.kind === existing.sourceKind &&
      (input.source.kind === 'account' ? input.source.accountId === existing.sourceAccountId : input.source.fingerprint === existing.cardFingerprint);
    // Where the money goes is a parameter too: no destination named is the merchant's balance account.
    const sameDestination = (input.destinationAccountId || merchantBalanceAccountId(input.merchantId, existing.currency)) === existing.destinationAccountId;
    if (existing.amount !== input.amount || existing.currency !== input.currency || existing.captureMethod !== input.captureMethod || !sameSource || !sameDestination) {
      throw conflict('idempotency_key_reused', 'this idempotency key was used for a payment with other parameters', 'idempotency_key');
    }
    if (existing.status !== 'processing') return existing;
    const op = await store.findOperation(this.pool, authorizationId(existing.id));
    invariant(op, `payment ${existing.id} is processing without its authorization`);
    return this.repeatStep(op);
  }

  /**
   * Records a new step as processing after `check` accepts the payment's current state and steps; false when the
   * same step (same id) was recorded meanwhile. Concurrent starts of one step: one records it, the others are
   * answered by repeatStep with what it becomes (not a refusal: their step is that one, already under way).
   */
  private async startStep(op: OperationRow, check: (current: PaymentRow, ops: OperationRow[]) => void): Promise<boolean> {
    return withTransaction(this.pool, async (client) => {
      const current = await store.findPayment(client, op.merchantId, op.paymentId);
      invariant(current, `payment ${op.paymentId} vanished`);
      const ops = await store.operationsOf(client, op.paymentId);
      // Before the check: the step may have moved the payment on already (a capture made it succeeded).
      if (ops.some((o) => o.id === op.id)) return false;
      check(current, ops);
      return store.insertOperation(client, op);
    });
  }

  /**
   * Finishes a step once: the step's status, the payment's new state (computed from the payment as it is
   * now, since refunds may finish concurrently) and one outbox event per transition, in one transaction.
   */
  private async finish(op: OperationRow, status: 'succeeded' | 'failed', failureCode: string | null, apply: Apply): Promise<PaymentRow> {
    const finished = await this.finishes.add({ op, status, failureCode, apply, traceparent: traceparentOf() });
    // Finished by someone else meanwhile (a concurrent retry or the resumer): answer what they wrote.
    return finished ?? this.requirePayment(op.merchantId, op.paymentId);
  }

  /**
   * Finishes the steps of one event-loop turn in one transaction (group commit): each step once, each payment's
   * new state computed from its state now (several steps of one payment apply in turn), one update per payment
   * and one outbox message per step. A payment that moved under a step fails the whole batch (an invariant).
   */
  private async finishMany(steps: FinishStep[]): Promise<(PaymentRow | null)[]> {
    return withTransaction(
      this.pool,
      async (client) => {
        const current = await store.finishOperationsReadPayments(client, steps.map((s) => ({ id: s.op.id, status: s.status, failureCode: s.failureCode })));
        const latest = new Map<string, { payment: PaymentRow; expectedVersion: bigint }>();
        const written: { events: { type: store.PaymentEventType; payment: PaymentRow }[]; op: OperationRow; traceparent: string }[] = [];
        const results = steps.map((step) => {
          const read = current.get(step.op.id);
          if (!read) return null;
          const before = latest.get(read.id)?.payment ?? read;
          const { next, events } = step.apply(before);
          checkPaymentInvariants(next);
          const versioned = events.map((type, i) => ({ type, payment: { ...next, version: before.version + BigInt(i + 1) } }));
          const after = { ...next, version: before.version + BigInt(events.length) };
          latest.set(read.id, { payment: after, expectedVersion: latest.get(read.id)?.expectedVersion ?? read.version });
          written.push({ events: versioned, op: step.op, traceparent: step.traceparent });
          return after;
        });
        const updates = [...latest.values()].map((l) => ({ after: l.payment, expectedVersion: l.expectedVersion }));
        invariant((await store.updatePayments(client, updates)) === updates.length, 'a payment changed under its step');
        await store.writePaymentEventsMany(client, this.settings.shardCount, written);
        return results;
      },
      { retryIf: isUniqueViolation },
    );
  }

  // --- accounts, risk ------------------------------------------------------------------------------------

  /** The payment's source account, validated; a card's clearing account is created by the caller afterwards. */
  private async sourceAccount(input: CreatePaymentInput, currency: Currency): Promise<string> {
    if (input.source.kind === 'card') return platformAccountId('card_clearing', currency.code);
    const accountId = input.source.accountId;
    await this.requireOwnAccount(input.merchantId, accountId, currency, 'source.account');
    const [account] = await lookupAccounts(this.pool, [accountId]);
    if (!account) throw notFound('account', 'source.account');
    if (!hasFlag(account.flags, AccountFlag.debitsMustNotExceedCredits)) {
      throw new ValidationError('source.account', 'must be a wallet: an account with the debits_must_not_exceed_credits flag', 'source_not_a_wallet');
    }
    return accountId;
  }

  /**
   * The payment's destination account, validated: the merchant's own account in the payment's currency that the
   * ledger knows (an owner row whose ledger account was never created would refuse the authorization with
   * credit_account_not_found), or its balance account, created by the caller afterwards.
   */
  private async destinationAccount(input: CreatePaymentInput, currency: Currency): Promise<string> {
    if (input.destinationAccountId) {
      await this.requireOwnAccount(input.merchantId, input.destinationAccountId, currency, 'destination_account_id');
      const [account] = await lookupAccounts(this.pool, [input.destinationAccountId]);
      if (!account) throw notFound('account', 'destination_account_id');
      return input.destinationAccountId;
    }
    return merchantBalanceAccountId(input.merchantId, currency.code);
  }

  private async merchantBalanceAccount(input: CreatePaymentInput, id: string, currency: Currency): Promise<void> {
    await this.ensureAccount(id, async () => {
      // Ownership first: a ledger account nobody owns would be invisible to the merchant.
      await withTransaction(this.pool, (client) => store.recordBalanceAccount(client, input.merchantId, id, currency.code));
      await this.createAccount({ id, ledger: currency.ledger, code: AccountCode.merchantBalance, flags: 0, metadata: { merchant_id: input.merchantId, purpose: 'balance' }, balancesNonZero: false });
    });
  }

  private async requireOwnAccount(merchantId: string, accountId: string, currency: Currency, field: string): Promise<void> {
    const owner = await store.accountOwner(this.pool, accountId);
    if (!owner || owner.merchantId !== merchantId) throw notFound('account', field);
    if (owner.currency !== currency.code) throw new ValidationError(field, `is a ${owner.currency} account, the payment is in ${currency.code}`, 'currency_mismatch');
  }

  private async platformAccount(purpose: PlatformAccount, currency: Currency, code: number): Promise<string> {
    const id = platformAccountId(purpose, currency.code);
    await this.ensureAccount(id, () => this.createAccount({ id, ledger: currency.ledger, code, flags: 0, metadata: { purpose }, balancesNonZero: false }));
    return id;
  }

  /**
   * Runs `create` for an account not known to exist yet, once for all concurrent callers (the first payments of
   * a merchant or currency arrive in bursts: each would otherwise record and create the same account).
   */
  private async ensureAccount(id: string, create: () => Promise<void>): Promise<void> {
    let creation = this.accountCreations.get(id);
    if (!creation) {
      creation = create();
      creation.catch(() => this.accountCreations.delete(id));
      this.accountCreations.set(id, creation);
    }
    await creation;
  }

  private async createAccount(account: AccountInput): Promise<void> {
    const [result] = await this.ledger.createAccounts([account]);
    if (result?.code !== 'ok' && result?.code !== 'exists') throw new InternalError(`ledger account ${account.id} could not be created: ${result?.code}`);
  }

  private async assess(input: CreatePaymentInput, paymentId: string, merchantCategory: string): Promise<RiskAssessment> {
    const request: ScoreRequest = {
      paymentId,
      merchantId: input.merchantId,
      customerId: input.customerId,
      amount: input.amount,
      currency: input.currency,
      cardFingerprint: input.source.kind === 'card' ? input.source.fingerprint : '',
      deviceId: input.deviceId,
      cardCountry: input.source.kind === 'card' ? input.source.country : '',
      ipCountry: input.ipCountry,
      cardType: input.source.kind === 'card' ? input.source.type : '',
      merchantCategory,
    };
    try {
      const r = await this.risk.score(request, this.settings.riskDeadlineMs);
      // No decision (unspecified, or an enum value newer than this code) is no answer, not an approval.
      if (r.decision !== Decision.DECISION_APPROVE && r.decision !== Decision.DECISION_REVIEW && r.decision !== Decision.DECISION_DECLINE) {
        throw new Error(`risk answered no known decision (${r.decision})`);
      }
      return { outcome: 'scored', scorePpm: r.scorePpm, decision: decisionName(r.decision), reasons: r.reasons, modelVersion: r.modelVersion };
    } catch (error) {
      // No answer in time (or the scorer failed): the configured policy decides, and the payment records it.
      const failOpen = compareWithLimit(input.amount, request.currency, this.settings.riskFailOpenBelowAmount, this.settings.riskFailOpenBelowAmountByCurrency) < 0;
      // A gRPC status (deadline, unavailable) is an expected condition with nothing to debug in its stack, and
      // under overload it is every payment: logged by code and message only.
      const code = (error as Partial<ServiceError>).code;
      const cause = typeof code === 'number' ? { grpcCode: status[code], reason: (error as ServiceError).details } : { err: error };
      this.logger.warn({ ...cause, paymentId, failOpen }, 'risk score unavailable');
      return { outcome: failOpen ? 'fail_open' : 'fail_closed', scorePpm: 0, decision: failOpen ? 'approve' : 'decline', reasons: ['risk_unavailable'], modelVersion: '' };
    }
  }

  // --- helpers --------------------------------------------------------------------------------------------

  private async requirePayment(merchantId: string, paymentId: string): Promise<PaymentRow> {
    const payment = await store.findPayment(this.pool, merchantId, paymentId);
    if (!payment) throw notFound('payment', 'payment_id');
    return payment;
  }

  private newOperation(payment: PaymentRow, kind: OperationRow['kind'], id: string, amount: bigint, fee: bigint): OperationRow {
    return { id, paymentId: payment.id, merchantId: payment.merchantId, kind, amount, fee, status: 'processing', failureCode: null, idempotencyKey: null, metadata: {}, createdAt: nowNanos() };
  }

  private transfer(payment: PaymentRow, id: string, debit: string, credit: string, amount: bigint, code: number): TransferInput {
    const currency = currencyOf(payment.currency);
    return { id, debitAccountId: debit, creditAccountId: credit, amount, pendingId: '', ledger: currency.ledger, code, flags: 0, timeout: 0, metadata: { payment_id: payment.id } };
  }

  /** The platform fee of a capture, linked to it (the capture and its fee post together or not at all). */
  private feeTransfer(payment: PaymentRow, op: OperationRow): TransferInput[] {
    if (op.fee === 0n) return [];
    const revenue = platformAccountId('fee_revenue', payment.currency);
    return [this.transfer(payment, feeTransferId(op.id), payment.destinationAccountId, revenue, op.fee, TransferCode.fee)];
  }
}

function authorizationId(paymentId: string): string {
  return derivedId('operation', `${paymentId}:authorize`);
}

function riskDecline(risk: RiskAssessment): { code: string; reason: string } | null {
  if (risk.outcome === 'fail_closed') return { code: 'risk_unavailable', reason: 'fraud screening was unavailable and the amount is above the fail-open limit' };
  if (risk.decision === 'decline') return { code: 'risk_declined', reason: `fraud screening declined the payment: ${risk.reasons.join(', ') || 'score above threshold'}` };
  return null;
}

function decisionName(decision: Decision): string {
  if (decision === Decision.DECISION_DECLINE) return 'decline';
  if (decision === Decision.DECISION_REVIEW) return 'review';
  return 'approve';
}

function checkPaymentInvariants(p: PaymentRow): void {
  invariant(p.amountCaptured <= p.amount, `payment ${p.id} captured ${p.amountCaptured} of ${p.amount}`);
  invariant(p.amountRefunded <= p.amountCaptured, `payment ${p.id} refunded ${p.amountRefunded} of ${p.amountCaptured} captured`);
  invariant(p.fee <= p.amountCaptured, `payment ${p.id} fee ${p.fee} above the captured ${p.amountCaptured}`);
}
