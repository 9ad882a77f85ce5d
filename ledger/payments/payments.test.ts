import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { currencyOf } from '../../lib/currency.js';
import { derivedId } from '../../lib/derived-id.js';
import { ERROR_CODE_KEY, ERROR_FIELD_KEY, callUnary } from '../../lib/grpc.js';
import { createLogger } from '../../lib/logger.js';
import { EventBatch } from '../../proto/gen/events/v1/events.js';
import {
  CaptureMethod,
  PaymentServiceClient,
  PaymentStatus,
  type CreatePaymentRequest,
} from '../../proto/gen/payments/v1/payments.js';
import { startRisk } from '../../risk/app.js';
import { account, startTestLedger, transfer, type TestLedger } from '../../test/ledger-harness.js';
import { testConfig, testPool, untilWaitingOnLock } from '../../test/support.js';
import type { Pool } from '../../lib/db.js';
import { PAYMENT_OUTBOX_SHARD_BASE } from '../outbox.js';
import { wallClockNanos } from '../clock.js';
import { PaymentFlows, routerLedger, type CreatePaymentInput, type PaymentLedger } from './flows.js';
import { PaymentResumer } from './resumer.js';
import { MAX_PAYMENTS_PER_CALL } from './service.js';

const USD = 840;
const FEE_BPS = 250;

describe('payments (gRPC, on the ledger, with the rules-only risk scorer)', function () {
  this.timeout(60_000);
  let risk: Awaited<ReturnType<typeof startRisk>>;
  let ledger: TestLedger;
  let client: PaymentServiceClient;
  let pool: Pool;

  const create = (r: Partial<CreatePaymentRequest>, on = client) => callUnary(on, on.createPayment, createRequest(r), 10_000).then((x) => x.payment!);
  const capture = (merchantId: string, paymentId: string, amount = 0n) => callUnary(client, client.capturePayment, { merchantId, paymentId, amount }, 10_000).then((x) => x.payment!);
  const cancel = (merchantId: string, paymentId: string) => callUnary(client, client.cancelPayment, { merchantId, paymentId }, 10_000).then((x) => x.payment!);
  const refund = (merchantId: string, paymentId: string, amount: bigint, idempotencyKey = '') =>
    callUnary(client, client.createRefund, { merchantId, paymentId, amount, idempotencyKey, metadata: {} }, 10_000).then((x) => x.refund!);
  const get = (merchantId: string, paymentId: string) => callUnary(client, client.getPayment, { merchantId, paymentId }, 10_000).then((x) => x.payment!);
  const list = (merchantId: string, r: { limit: number; startingAfter?: string; endingBefore?: string }) =>
    callUnary(client, client.listPayments, { merchantId, startingAfter: '', endingBefore: '', ...r }, 10_000);

  function createRequest(r: Partial<CreatePaymentRequest>): CreatePaymentRequest {
    return {
      idempotencyKey: '',
      merchantId: '',
      amount: 0n,
      currency: 'USD',
      source: undefined,
      destinationAccountId: '',
      captureMethod: CaptureMethod.CAPTURE_METHOD_MANUAL,
      metadata: {},
      deviceId: '',
      ipCountry: '',
      customerId: '',
      ...r,
    };
  }

  /** A payment from a wallet of the merchant, as PaymentFlows.createPayment takes it. */
  function walletPayment(merchantId: string, accountId: string, fields: Pick<CreatePaymentInput, 'idempotencyKey' | 'amount' | 'captureMethod'> & Partial<Pick<CreatePaymentInput, 'currency'>>): CreatePaymentInput {
    return { merchantId, currency: 'USD', source: { kind: 'account', accountId }, destinationAccountId: '', metadata: {}, deviceId: '', ipCountry: '', customerId: '', ...fields };
  }

  async function expectError(promise: Promise<unknown>, code: status, errorCode: string, field?: string): Promise<void> {
    await assert.rejects(promise, (error: ServiceError) => {
      assert.equal(error.code, code, error.message);
      assert.equal(String(error.metadata.get(ERROR_CODE_KEY)[0]), errorCode);
      if (field) assert.equal(decodeURIComponent(String(error.metadata.get(ERROR_FIELD_KEY)[0])), field);
      return true;
    });
  }

  async function newMerchant(): Promise<string> {
    const id = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, $3)', [id, `merchant ${id.slice(0, 8)}`, FEE_BPS]);
    return id;
  }

  /** A customer wallet of the merchant holding `funds`, paid in from a funding account of the merchant. */
  async function wallet(merchantId: string, funds: bigint, currency = 'USD'): Promise<string> {
    const { ledger: currencyLedger } = currencyOf(currency);
    const w = account({ ledger: currencyLedger, flags: { debitsMustNotExceedCredits: true } });
    const funding = account({ ledger: currencyLedger });
    assert.deepEqual((await ledger.client.createAccounts([w, funding])).map((r) => r.code), [1, 1]);
    for (const a of [w, funding]) await pool.query(`INSERT INTO merchant_accounts (account_id, merchant_id, currency, purpose) VALUES ($1, $2, $3, 'custom')`, [a.id, merchantId, currency]);
    if (funds > 0n) assert.equal((await ledger.client.createTransfers([transfer({ ledger: currencyLedger, debitAccountId: funding.id, creditAccountId: w.id, amount: funds })]))[0]?.code, 1);
    return w.id;
  }

  /** [debits_pending, debits_posted, credits_pending, credits_posted] */
  async function balances(accountId: string): Promise<bigint[]> {
    const [a] = await ledger.client.lookupAccounts([accountId]);
    assert.ok(a, `account ${accountId} exists`);
    return [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted];
  }

  const balanceAccount = (merchantId: string) => derivedId(`balance:${merchantId}`, 'USD');
  const revenueAccount = derivedId('platform', 'fee_revenue:USD');
  const cardClearing = derivedId('platform', 'card_clearing:USD');

  /** The envelopes of a payment's events in the outbox, in the payment's order. */
  async function paymentEnvelopes(paymentId: string) {
    const r = await pool.query('SELECT payload FROM outbox WHERE shard >= $1 ORDER BY sequence', [PAYMENT_OUTBOX_SHARD_BASE]);
    return r.rows
      .flatMap((row) => EventBatch.decode(row.payload as Buffer).events)
      .filter((e) => e.aggregateId === paymentId)
      .sort((a, b) => Number(a.sequence - b.sequence));
  }

  async function paymentEvents(paymentId: string): Promise<string[]> {
    return (await paymentEnvelopes(paymentId)).map((e) => `${e.sequence}:${e.type}`);
  }

  /** The payment events of a payment in order, as consumers read them. */
  async function paymentEventPayloads(paymentId: string) {
    return (await paymentEnvelopes(paymentId)).flatMap((e) => (e.payload?.$case === 'payment' ? [e.payload.value] : []));
  }

  /**
   * Payment flows on the real ledger whose "process" dies right after the ledger committed (before recording the
   * outcome), beside what a healthy instance of them needs.
   */
  function crashingAfterTheLedger() {
    const real = routerLedger(ledger.app.router);
    const crashing: PaymentLedger = {
      createAccounts: (a) => real.createAccounts(a),
      createTransfers: async (t) => {
        await real.createTransfers(t);
        throw new Error('process killed after the ledger committed');
      },
    };
    const logger = createLogger('payments-test', 'silent');
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 3600, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 0n };
    const riskClient = { score: async () => ({ scorePpm: 0, decision: 1, reasons: [], modelVersion: 'test-approve' }) };
    return { real, logger, settings, riskClient, dying: new PaymentFlows(pool, crashing, riskClient, settings, logger) };
  }

  before(async () => {
    pool = testPool();
    risk = await startRisk(testConfig({ RISK_GRPC_LISTEN: '127.0.0.1:0', RISK_RULES_MAX_AMOUNT: '1000000' }), createLogger('risk-test', 'error'));
    ledger = await startTestLedger({ RISK_GRPC_TARGET: risk.address, RISK_DEADLINE_MS: '2000', RISK_FAIL_OPEN_BELOW_AMOUNT: '5000' });
    client = new PaymentServiceClient(ledger.app.address, credentials.createInsecure());
  });

  after(async () => {
    client?.close();
    await ledger?.close();
    await risk?.close();
    await pool?.end();
  });

  it('authorize -> partial capture -> two partial refunds -> the rest: every balance exact, one event per step', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 50_000n);
    const revenueBefore = await balances(revenueAccount).catch(() => [0n, 0n, 0n, 0n]);

    const authorized = await create({ merchantId: merchant, amount: 10_000n, source: { kind: { $case: 'accountId', value: source } } });
    assert.equal(authorized.status, PaymentStatus.PAYMENT_STATUS_REQUIRES_CAPTURE);
    assert.deepEqual(await balances(source), [10_000n, 0n, 0n, 50_000n]);
    assert.deepEqual(await balances(balanceAccount(merchant)), [0n, 0n, 10_000n, 0n]);

    const captured = await capture(merchant, authorized.id, 6_000n);
    assert.equal(captured.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    assert.equal(captured.amountCaptured, 6_000n);
    assert.equal(captured.fee, 150n); // 2.5% of 6,000
    assert.deepEqual(await balances(source), [0n, 6_000n, 0n, 50_000n], 'the uncaptured 4,000 is released');
    assert.deepEqual(await balances(balanceAccount(merchant)), [0n, 150n, 0n, 6_000n]);
    assert.equal((await balances(revenueAccount))[3], revenueBefore[3]! + 150n);

    const r1 = await refund(merchant, authorized.id, 2_000n);
    const r2 = await refund(merchant, authorized.id, 3_000n);
    assert.deepEqual([r1.status, r2.status], ['succeeded', 'succeeded']);
    assert.equal((await get(merchant, authorized.id)).status, PaymentStatus.PAYMENT_STATUS_PARTIALLY_REFUNDED);
    await expectError(refund(merchant, authorized.id, 1_001n), status.FAILED_PRECONDITION, 'refund_exceeds_captured', 'amount');
    const rest = await refund(merchant, authorized.id, 0n);
    assert.equal(rest.amount, 1_000n);
    const done = await get(merchant, authorized.id);
    assert.equal(done.status, PaymentStatus.PAYMENT_STATUS_REFUNDED);
    assert.equal(done.amountRefunded, 6_000n);
    await expectError(refund(merchant, authorized.id, 1n), status.FAILED_PRECONDITION, 'payment_not_refundable');

    // The wallet got everything back; the merchant keeps the fee as a cost (fees are not returned on refunds).
    assert.deepEqual(await balances(source), [0n, 6_000n, 0n, 56_000n]);
    assert.deepEqual(await balances(balanceAccount(merchant)), [0n, 6_150n, 0n, 6_000n]);
    assert.deepEqual(await paymentEvents(authorized.id), ['1:payment.authorized', '2:payment.captured', '3:payment.refunded', '4:payment.refunded', '5:payment.refunded']);
  });

  it('ten concurrent refunds of one payment: each applied once, in turn, never more than was captured', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 5_000n);
    const p = await create({ merchantId: merchant, amount: 1_000n, source: { kind: { $case: 'accountId', value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC });
    const answers = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => refund(merchant, p.id, 100n, `r-${p.id}-${i}`)));
    const ok = answers.filter((a) => a.status === 'fulfilled');
    assert.equal(ok.length, 10, 'ten fit, two are refused');
    // Refused as exceeding what is left, or (once the last one went through) as a refunded payment.
    for (const a of answers) if (a.status === 'rejected') assert.match(String((a.reason as ServiceError).metadata.get(ERROR_CODE_KEY)[0]), /^(refund_exceeds_captured|payment_not_refundable)$/);
    const done = await get(merchant, p.id);
    assert.deepEqual([done.status, done.amountRefunded], [PaymentStatus.PAYMENT_STATUS_REFUNDED, 1_000n]);
    assert.deepEqual(await balances(source), [0n, 1_000n, 0n, 6_000n]);
    const events = await paymentEvents(p.id);
    assert.deepEqual(events, ['1:payment.authorized', '2:payment.captured', ...Array.from({ length: 10 }, (_, i) => `${i + 3}:payment.refunded`)]);
  });

  it('a wallet without the funds is declined with insufficient_funds; nothing is posted', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 999n);
    const p = await create({ merchantId: merchant, amount: 1_000n, source: { kind: { $case: 'accountId', value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC });
    assert.equal(p.status, PaymentStatus.PAYMENT_STATUS_DECLINED);
    assert.equal(p.declineCode, 'insufficient_funds');
    assert.deepEqual(await balances(source), [0n, 0n, 0n, 999n]);
    assert.deepEqual(await paymentEvents(p.id), ['1:payment.declined']);
    // No fee was taken: the event says so (its step would have taken one, had the capture posted).
    const [declined] = await paymentEventPayloads(p.id);
    assert.deepEqual([declined?.operationFee, declined?.feeTransferId], [0n, '']);

    // A payment that posts does carry its step's fee, on both events of the automatic capture.
    const paid = await create({ merchantId: merchant, amount: 900n, source: { kind: { $case: 'accountId', value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC });
    assert.equal(paid.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    for (const e of await paymentEventPayloads(paid.id)) assert.deepEqual([e.operationFee, e.feeTransferId !== ''], [paid.fee, paid.fee > 0n]);
  });

  it('cancel releases the authorization; capture after cancel is refused; cancel again answers the canceled payment', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 5_000n);
    const p = await create({ merchantId: merchant, amount: 5_000n, source: { kind: { $case: 'accountId', value: source } } });
    const canceled = await cancel(merchant, p.id);
    assert.equal(canceled.status, PaymentStatus.PAYMENT_STATUS_CANCELED);
    assert.deepEqual(await balances(source), [0n, 0n, 0n, 5_000n]);
    await expectError(capture(merchant, p.id), status.FAILED_PRECONDITION, 'payment_not_capturable');
    assert.equal((await cancel(merchant, p.id)).status, PaymentStatus.PAYMENT_STATUS_CANCELED);
    await expectError(refund(merchant, p.id, 1n), status.FAILED_PRECONDITION, 'payment_not_refundable');
    assert.deepEqual(await paymentEvents(p.id), ['1:payment.authorized', '2:payment.canceled']);
  });

  it('a card payment with automatic capture debits card clearing and takes the fee in one linked step', async () => {
    const merchant = await newMerchant();
    const clearingBefore = await balances(cardClearing).catch(() => [0n, 0n, 0n, 0n]);
    const p = await create({
      merchantId: merchant,
      amount: 2_000n,
      captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC,
      source: { kind: { $case: 'card', value: { token: 'tok_visa_4242', fingerprint: 'fp_1', country: 'US', type: 'credit' } } },
      ipCountry: 'US',
    });
    assert.equal(p.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    assert.equal(p.source?.kind?.$case, 'card');
    assert.equal(p.source?.kind?.$case === 'card' && p.source.kind.value.token, '', 'the token is never stored nor answered');
    assert.equal((await balances(cardClearing))[1], clearingBefore[1]! + 2_000n);
    assert.deepEqual(await balances(balanceAccount(merchant)), [0n, 50n, 0n, 2_000n]);
    assert.deepEqual(await paymentEvents(p.id), ['1:payment.authorized', '2:payment.captured']);
    const stored = await pool.query('SELECT count(*)::int AS n FROM payments WHERE id = $1 AND row_to_json(payments)::text LIKE $2', [p.id, '%tok_visa%']);
    assert.equal(stored.rows[0].n, 0);
  });

  it('the same idempotency key is the same payment, also from 50 concurrent calls; other parameters are refused', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const request = { merchantId: merchant, idempotencyKey: `key-${randomUUID()}`, amount: 700n, source: { kind: { $case: 'accountId' as const, value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC };
    // Every caller is answered with the one payment (losers of the insert drive or read the winner's).
    const ok = await Promise.all(Array.from({ length: 50 }, () => create(request)));
    assert.equal(new Set(ok.map((p) => p.id)).size, 1);
    assert.ok(ok.every((p) => p.status === PaymentStatus.PAYMENT_STATUS_SUCCEEDED));
    assert.deepEqual(await balances(source), [0n, 700n, 0n, 100_000n], 'posted once');
    const repeated = await create(request);
    assert.equal(repeated.id, ok[0]!.id);
    await expectError(create({ ...request, amount: 701n }), status.FAILED_PRECONDITION, 'idempotency_key_reused', 'idempotency_key');
    assert.deepEqual(await balances(source), [0n, 700n, 0n, 100_000n]);
  });

  it('the same idempotency key with another destination account is refused, not answered with the payment that pays elsewhere', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 10_000n);
    const elsewhere = await wallet(merchant, 0n);
    const request = { merchantId: merchant, idempotencyKey: `key-${randomUUID()}`, amount: 700n, source: { kind: { $case: 'accountId' as const, value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC };
    const paid = await create(request);
    assert.equal(paid.destinationAccountId, balanceAccount(merchant));
    await expectError(create({ ...request, destinationAccountId: elsewhere }), status.FAILED_PRECONDITION, 'idempotency_key_reused', 'idempotency_key');
    assert.equal((await create({ ...request, destinationAccountId: balanceAccount(merchant) })).id, paid.id, 'naming the account it went to is the same request');

    const named = { ...request, idempotencyKey: `key-${randomUUID()}`, destinationAccountId: elsewhere };
    const toElsewhere = await create(named);
    assert.equal(toElsewhere.destinationAccountId, elsewhere);
    await expectError(create({ ...named, destinationAccountId: '' }), status.FAILED_PRECONDITION, 'idempotency_key_reused', 'idempotency_key');
    assert.equal((await create(named)).id, toElsewhere.id);
    assert.deepEqual(await balances(elsewhere), [0n, 18n, 0n, 700n], 'paid once, its fee once (2.5% of 700, rounded up)');
  });

  it("another merchant's payments, refunds and wallets are not found", async () => {
    const [a, b] = [await newMerchant(), await newMerchant()];
    const source = await wallet(a, 10_000n);
    const p = await create({ merchantId: a, amount: 1_000n, source: { kind: { $case: 'accountId', value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC });
    const r = await refund(a, p.id, 100n);
    await expectError(get(b, p.id), status.NOT_FOUND, 'payment_not_found');
    await expectError(capture(b, p.id), status.NOT_FOUND, 'payment_not_found');
    await expectError(cancel(b, p.id), status.NOT_FOUND, 'payment_not_found');
    await expectError(refund(b, p.id, 1n), status.NOT_FOUND, 'payment_not_found');
    await expectError(callUnary(client, client.getRefund, { merchantId: b, refundId: r.id }, 10_000), status.NOT_FOUND, 'refund_not_found');
    await expectError(create({ merchantId: b, amount: 1n, source: { kind: { $case: 'accountId', value: source } } }), status.NOT_FOUND, 'account_not_found', 'source.account');
    assert.deepEqual((await list(b, { limit: 100 })).payments, []);
  });

  it('malformed requests are INVALID_ARGUMENT with the field, and write nothing', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 10_000n);
    const good = { merchantId: merchant, amount: 100n, source: { kind: { $case: 'accountId' as const, value: source } } };
    await expectError(create({ ...good, amount: 0n }), status.INVALID_ARGUMENT, 'amount_invalid', 'amount');
    await expectError(create({ ...good, currency: 'XYZ' }), status.INVALID_ARGUMENT, 'invalid_currency', 'currency');
    await expectError(create({ ...good, source: undefined }), status.INVALID_ARGUMENT, 'invalid_argument', 'source');
    await expectError(create({ ...good, captureMethod: CaptureMethod.CAPTURE_METHOD_UNSPECIFIED }), status.INVALID_ARGUMENT, 'invalid_argument', 'capture_method');
    await expectError(create({ ...good, currency: 'EUR' }), status.INVALID_ARGUMENT, 'currency_mismatch', 'source.account');
    await expectError(create({ ...good, ipCountry: 'usa' }), status.INVALID_ARGUMENT, 'invalid_argument', 'ip_country');
    const notWallet = account({ ledger: USD });
    await ledger.client.createAccounts([notWallet]);
    await pool.query(`INSERT INTO merchant_accounts (account_id, merchant_id, currency, purpose) VALUES ($1, $2, 'USD', 'custom')`, [notWallet.id, merchant]);
    await expectError(create({ ...good, source: { kind: { $case: 'accountId', value: notWallet.id } } }), status.INVALID_ARGUMENT, 'source_not_a_wallet', 'source.account');
    const count = await pool.query('SELECT count(*)::int AS n FROM payments WHERE merchant_id = $1', [merchant]);
    assert.equal(count.rows[0].n, 0);
    assert.deepEqual(await balances(source), [0n, 0n, 0n, 10_000n]);
  });

  it('CreatePayments: each item is created or refused as its own call would be, in order; a malformed batch is refused whole', async () => {
    const [merchant, other] = [await newMerchant(), await newMerchant()];
    const source = await wallet(merchant, 10_000n);
    const theirs = await wallet(other, 10_000n);
    const fromWallet = (amount: bigint, wallet = source, idempotencyKey = '') =>
      createRequest({ merchantId: merchant, amount, idempotencyKey, source: { kind: { $case: 'accountId', value: wallet } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC });
    const key = `key-${randomUUID()}`;
    const items = [
      fromWallet(1_000n, source, key),
      fromWallet(0n), // malformed
      fromWallet(500n, theirs), // another merchant's wallet
      fromWallet(20_000n), // more than the wallet holds: declined, not an error
      fromWallet(1_000n, source, key), // the first one again
    ];
    const { outcomes } = await callUnary(client, client.createPayments, { payments: items.map((request) => ({ request, traceparent: '' })) }, 10_000);
    assert.equal(outcomes.length, items.length);
    const [created, malformed, notTheirs, declined, repeated] = outcomes.map((o) => o.result);
    assert.equal(created?.$case, 'payment');
    assert.equal(repeated?.$case, 'payment');
    if (created?.$case !== 'payment' || repeated?.$case !== 'payment') return;
    assert.equal(created.value.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    assert.equal(repeated.value.id, created.value.id, 'one key, one payment');
    assert.deepEqual(malformed, { $case: 'error', value: { status: status.INVALID_ARGUMENT, message: 'amount: must be a positive integer of minor units', code: 'amount_invalid', field: 'amount', retryAfterSeconds: 0 } });
    assert.deepEqual(notTheirs, { $case: 'error', value: { status: status.NOT_FOUND, message: 'no such account', code: 'account_not_found', field: 'source.account', retryAfterSeconds: 0 } });
    assert.equal(declined?.$case === 'payment' && declined.value.declineCode, 'insufficient_funds');
    assert.deepEqual(await balances(source), [0n, 1_000n, 0n, 10_000n], 'the one payment posted once');
    assert.deepEqual(await balances(theirs), [0n, 0n, 0n, 10_000n]);
    const count = await pool.query('SELECT count(*)::int AS n FROM payments WHERE merchant_id = $1', [merchant]);
    assert.equal(count.rows[0].n, 2, 'the created and the declined payment');

    await expectError(callUnary(client, client.createPayments, { payments: [] }, 10_000), status.INVALID_ARGUMENT, 'invalid_argument', 'payments');
    const tooMany = Array.from({ length: MAX_PAYMENTS_PER_CALL + 1 }, () => ({ request: fromWallet(1n), traceparent: '' }));
    await expectError(callUnary(client, client.createPayments, { payments: tooMany }, 10_000), status.INVALID_ARGUMENT, 'invalid_argument', 'payments');
    assert.equal((await pool.query('SELECT count(*)::int AS n FROM payments WHERE merchant_id = $1', [merchant])).rows[0].n, 2, 'a refused batch writes nothing');
  });

  it('risk: a payment above the rules limit is declined with the reasons; the decision is recorded on the payment', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 5_000_000n);
    const p = await create({ merchantId: merchant, amount: 2_000_000n, source: { kind: { $case: 'accountId', value: source } } });
    assert.equal(p.status, PaymentStatus.PAYMENT_STATUS_DECLINED);
    assert.equal(p.declineCode, 'risk_declined');
    assert.ok(p.risk?.reasons.includes('amount_above_limit'), JSON.stringify(p.risk));
    assert.equal(p.risk?.decision, 'decline');
    assert.deepEqual(await balances(source), [0n, 0n, 0n, 5_000_000n]);
  });

  it('risk unavailable: fail-open below the configured amount, fail-closed at or above it, recorded on the payment', async () => {
    const noRisk = await startTestLedger({ RISK_GRPC_TARGET: '127.0.0.1:9', RISK_DEADLINE_MS: '200', RISK_FAIL_OPEN_BELOW_AMOUNT: '5000' });
    const otherClient = new PaymentServiceClient(noRisk.app.address, credentials.createInsecure());
    try {
      const merchant = await newMerchant();
      const source = await wallet(merchant, 100_000n);
      const make = (amount: bigint) =>
        create({ merchantId: merchant, amount, source: { kind: { $case: 'accountId', value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC }, otherClient);
      const small = await make(4_999n);
      assert.equal(small.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
      assert.equal(small.risk?.outcome, 2 /* FAIL_OPEN */);
      const large = await make(5_000n);
      assert.equal(large.status, PaymentStatus.PAYMENT_STATUS_DECLINED);
      assert.equal(large.declineCode, 'risk_unavailable');
      assert.equal(large.risk?.outcome, 3 /* FAIL_CLOSED */);
      assert.deepEqual(await balances(source), [0n, 4_999n, 0n, 100_000n]);
    } finally {
      otherClient.close();
      await noRisk.close();
    }
  });

  it('risk unavailable: the fail-open amount of the payment\'s currency decides where one is set', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const unavailable = { score: async () => Promise.reject(new Error('risk down')) };
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 3600, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 5_000n };
    const input = walletPayment(merchant, source, { idempotencyKey: '', amount: 1_000n, captureMethod: 'automatic' });
    const logger = createLogger('payments-test', 'silent');
    const byDefault = await new PaymentFlows(pool, routerLedger(ledger.app.router), unavailable, settings, logger).createPayment(input);
    assert.deepEqual([byDefault.status, byDefault.risk.outcome], ['succeeded', 'fail_open']);
    const ownLimit = new PaymentFlows(pool, routerLedger(ledger.app.router), unavailable, { ...settings, riskFailOpenBelowAmountByCurrency: new Map([[input.currency, 500n]]) }, logger);
    const byCurrency = await ownLimit.createPayment(input);
    assert.deepEqual([byCurrency.status, byCurrency.declineCode, byCurrency.risk.outcome], ['declined', 'risk_unavailable', 'fail_closed']);
    // A currency without a limit of its own is held to the default (5,000: 50.00 USD) by its approximate worth: 500,000.00
    // IDR (about 32 USD) is approved, 1,000,000.00 IDR (about 63 USD) is not. As minor units, both were above 5,000.
    const rupiah = await wallet(merchant, 200_000_000n, 'IDR');
    const inRupiah = (amount: bigint) => walletPayment(merchant, rupiah, { idempotencyKey: '', amount, currency: 'IDR', captureMethod: 'automatic' });
    const flows = new PaymentFlows(pool, routerLedger(ledger.app.router), unavailable, settings, logger);
    assert.deepEqual((await flows.createPayment(inRupiah(50_000_000n))).risk.outcome, 'fail_open');
    assert.deepEqual((await flows.createPayment(inRupiah(100_000_000n))).risk.outcome, 'fail_closed');
  });

  it('risk answering no decision it knows (unspecified, or a newer enum value) is not an approval: the unavailable policy applies', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 3600, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 5_000n };
    const input = walletPayment(merchant, source, { idempotencyKey: '', amount: 0n, captureMethod: 'automatic' });
    for (const decision of [0 /* UNSPECIFIED */, -1 /* UNRECOGNIZED */]) {
      const undecided = { score: async () => ({ scorePpm: 0, decision, reasons: [], modelVersion: 'test-undecided' }) };
      const flows = new PaymentFlows(pool, routerLedger(ledger.app.router), undecided, settings, createLogger('payments-test', 'silent'));
      const large = await flows.createPayment({ ...input, amount: 6_000n });
      assert.deepEqual([large.status, large.declineCode, large.risk.outcome], ['declined', 'risk_unavailable', 'fail_closed'], `decision ${decision}`);
      const small = await flows.createPayment({ ...input, amount: 100n });
      assert.deepEqual([small.status, small.risk.outcome], ['succeeded', 'fail_open'], `decision ${decision}`);
    }
    assert.deepEqual(await balances(source), [0n, 200n, 0n, 100_000n], 'only the small payments moved money');
  });

  it('a step whose resume keeps failing goes to the back of the queue: the steps behind it are still finished', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 10_000n);
    const { real, logger, settings, riskClient, dying } = crashingAfterTheLedger();
    const paymentIds: string[] = [];
    for (const amount of [1_000n, 2_000n]) {
      const key = `stuck-${randomUUID()}`;
      await assert.rejects(dying.createPayment(walletPayment(merchant, source, { idempotencyKey: key, amount, captureMethod: 'automatic' })), /process killed/);
      paymentIds.push(derivedId(`payment:${merchant}`, key));
    }
    const [stuck, behind] = paymentIds as [string, string];
    // The first one's step throws on every resume (whatever the cause); the others resume for real.
    const flows = new PaymentFlows(pool, real, riskClient, settings, logger);
    const failing = Object.assign(Object.create(flows) as PaymentFlows, {
      resume: (op: Parameters<PaymentFlows['resume']>[0]) => (op.paymentId === stuck ? Promise.reject(new Error('still failing')) : flows.resume(op)),
    });
    // One step a pass, so that a step left first in line would be all every pass takes.
    const resumer = new PaymentResumer(pool, failing, logger, 1, 3600, 1);
    for (let pass = 0; pass < 20 && (await get(merchant, behind)).status !== PaymentStatus.PAYMENT_STATUS_SUCCEEDED; pass++) {
      await new Promise((r) => setTimeout(r, 5));
      await resumer.resumeOnce();
    }
    assert.equal((await get(merchant, behind)).status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED, 'the step behind the failing one was never resumed');
    assert.equal((await get(merchant, stuck)).status, PaymentStatus.PAYMENT_STATUS_PROCESSING);
    // Finished once it stops failing, as any stale step.
    for (let pass = 0; pass < 20 && (await get(merchant, stuck)).status !== PaymentStatus.PAYMENT_STATUS_SUCCEEDED; pass++) {
      await new Promise((r) => setTimeout(r, 5));
      await new PaymentResumer(pool, flows, logger, 1, 3600, 1).resumeOnce();
    }
    assert.equal((await get(merchant, stuck)).status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
  });

  it('a crash between the ledger and the payment row: the resumer finishes the step, posting nothing twice', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 10_000n);
    const { real, logger, settings, riskClient, dying } = crashingAfterTheLedger();
    const key = `crash-${randomUUID()}`;
    const input = walletPayment(merchant, source, { idempotencyKey: key, amount: 3_000n, captureMethod: 'automatic' });
    await assert.rejects(dying.createPayment(input), /process killed/);
    const paymentId = derivedId(`payment:${merchant}`, key);
    assert.equal((await get(merchant, paymentId)).status, PaymentStatus.PAYMENT_STATUS_PROCESSING);
    assert.deepEqual(await balances(source), [0n, 3_000n, 0n, 10_000n], 'the ledger has it');

    const resumer = new PaymentResumer(pool, new PaymentFlows(pool, real, riskClient, settings, logger), logger, 1, 3600);
    await new Promise((r) => setTimeout(r, 5));
    assert.ok((await resumer.resumeOnce()) >= 1);
    const finished = await get(merchant, paymentId);
    assert.equal(finished.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    assert.equal(finished.amountCaptured, 3_000n);
    assert.deepEqual(await balances(source), [0n, 3_000n, 0n, 10_000n], 'posted once');
    assert.deepEqual(await paymentEvents(paymentId), ['1:payment.authorized', '2:payment.captured']);
    // The caller's retry with the same key now answers the finished payment.
    assert.equal((await create({ merchantId: merchant, idempotencyKey: key, amount: 3_000n, source: { kind: { $case: 'accountId', value: source } }, captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC })).status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
  });

  it('an authorization held by the ledger before a crash, retried by an instance with another authorization timeout, is authorized, not declined', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 10_000n);
    const { real, logger, settings, riskClient: approve, dying } = crashingAfterTheLedger();
    const input = walletPayment(merchant, source, { idempotencyKey: `timeout-${randomUUID()}`, amount: 3_000n, captureMethod: 'manual' });
    await assert.rejects(dying.createPayment(input), /process killed/);
    assert.deepEqual(await balances(source), [3_000n, 0n, 0n, 10_000n], 'the ledger holds the authorization');

    // PAYMENTS_AUTHORIZATION_TIMEOUT_SECONDS was changed meanwhile (a rolling deploy): the retry finds the hold.
    const redeployed = new PaymentFlows(pool, real, approve, { ...settings, authorizationTimeoutSeconds: 1800 }, logger);
    const retried = await redeployed.createPayment(input);
    assert.deepEqual([retried.status, retried.declineCode], ['requires_capture', null]);
    assert.equal((await capture(merchant, retried.id)).status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    assert.deepEqual(await balances(source), [0n, 3_000n, 0n, 10_000n]);
    assert.deepEqual(await paymentEvents(retried.id), ['1:payment.authorized', '2:payment.captured']);
  });

  it("a new merchant's first payments, arriving together, create its balance account and the platform's accounts once", async () => {
    const merchant = await newMerchant();
    const real = routerLedger(ledger.app.router);
    const created: string[] = [];
    const counting: PaymentLedger = {
      createAccounts: (accounts) => {
        created.push(...accounts.map((a) => a.id));
        return real.createAccounts(accounts);
      },
      createTransfers: (transfers) => real.createTransfers(transfers),
    };
    const approve = { score: async () => ({ scorePpm: 0, decision: 1, reasons: [], modelVersion: 'test-approve' }) };
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 3600, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 0n };
    const flows = new PaymentFlows(pool, counting, approve, settings, createLogger('payments-test', 'silent'));
    const card = { kind: 'card' as const, token: 'tok', fingerprint: 'fp', country: 'US', type: '' };
    const common = { merchantId: merchant, currency: 'USD', source: card, destinationAccountId: '', captureMethod: 'automatic' as const, metadata: {}, deviceId: '', ipCountry: '', customerId: '' };
    const payments = await Promise.all(Array.from({ length: 20 }, (_, i) => flows.createPayment({ ...common, idempotencyKey: `first-${i}`, amount: BigInt(100 + i) })));
    assert.ok(payments.every((p) => p.status === 'succeeded'));
    assert.deepEqual([...created].sort(), [cardClearing, revenueAccount, balanceAccount(merchant)].sort(), 'each account asked for once');
    const sum = (pick: (p: (typeof payments)[number]) => bigint) => payments.reduce((total, p) => total + pick(p), 0n);
    assert.deepEqual(await balances(balanceAccount(merchant)), [0n, sum((p) => p.fee), 0n, sum((p) => p.amount)], 'paid in, fees out');
  });

  it('an authorization left uncaptured past its timeout is released by the ledger and the payment canceled, once', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 1_000n);
    const logger = createLogger('payments-test', 'silent');
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 1, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 0n };
    const approve = { score: async () => ({ scorePpm: 0, decision: 1, reasons: [], modelVersion: 'test-approve' }) };
    const flows = new PaymentFlows(pool, routerLedger(ledger.app.router), approve, settings, logger);
    const p = await flows.createPayment(walletPayment(merchant, source, { idempotencyKey: '', amount: 600n, captureMethod: 'manual' }));
    assert.deepEqual(await balances(source), [600n, 0n, 0n, 1_000n]);
    await new Promise((r) => setTimeout(r, 2_300)); // past the timeout and its second of slack
    const resumer = new PaymentResumer(pool, flows, logger, 60_000, 1);
    assert.ok((await resumer.resumeOnce()) >= 1);
    assert.equal((await get(merchant, p.id)).status, PaymentStatus.PAYMENT_STATUS_CANCELED);
    assert.deepEqual(await balances(source), [0n, 0n, 0n, 1_000n]);
    await resumer.resumeOnce();
    assert.deepEqual(await paymentEvents(p.id), ['1:payment.authorized', '2:payment.canceled']);
    await expectError(capture(merchant, p.id), status.FAILED_PRECONDITION, 'payment_not_capturable');
  });

  it('an expired authorization whose cancel keeps throwing does not hold up the expired authorizations behind it', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 1_000n);
    const { real, logger, riskClient } = crashingAfterTheLedger();
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 1, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 0n };
    const flows = new PaymentFlows(pool, real, riskClient, settings, logger);
    const stuck = await flows.createPayment(walletPayment(merchant, source, { idempotencyKey: '', amount: 100n, captureMethod: 'manual' }));
    const behind = await flows.createPayment(walletPayment(merchant, source, { idempotencyKey: '', amount: 200n, captureMethod: 'manual' }));
    // The oldest payments awaiting capture in the database, in this order: first in line of every pass.
    await pool.query('UPDATE payments SET created_at = $2 WHERE id = $1', [stuck.id, '1']);
    await pool.query('UPDATE payments SET created_at = $2 WHERE id = $1', [behind.id, '2']);
    // The first one's cancel was recorded before a crash, and throws whenever it is driven again (whatever the cause).
    const crashing: PaymentLedger = {
      createAccounts: (a) => real.createAccounts(a),
      createTransfers: async () => {
        throw new Error('process killed before the ledger call');
      },
    };
    await assert.rejects(new PaymentFlows(pool, crashing, riskClient, settings, logger).cancel(merchant, stuck.id), /process killed/);
    const failing = Object.assign(Object.create(flows) as PaymentFlows, {
      cancel: (m: string, id: string) => (id === stuck.id ? Promise.reject(new Error('still failing')) : flows.cancel(m, id)),
      resume: (op: Parameters<PaymentFlows['resume']>[0]) => (op.paymentId === stuck.id ? Promise.reject(new Error('still failing')) : flows.resume(op)),
    });
    await new Promise((r) => setTimeout(r, 2_300)); // past the timeout and its second of slack
    // One expired authorization a pass: one left first in line would be all every pass takes.
    const resumer = new PaymentResumer(pool, failing, logger, 60_000, 1, 1);
    for (let pass = 0; pass < 3 && (await get(merchant, behind.id)).status !== PaymentStatus.PAYMENT_STATUS_CANCELED; pass++) await resumer.resumeOnce();
    assert.equal((await get(merchant, behind.id)).status, PaymentStatus.PAYMENT_STATUS_CANCELED, 'the expired authorization behind the failing cancel was never canceled');
    // The failing cancel is a stale step like any other: finished once it stops failing.
    await pool.query(`UPDATE payment_operations SET updated_at = now() - interval '1 hour' WHERE payment_id = $1 AND kind = 'cancel'`, [stuck.id]);
    await new PaymentResumer(pool, flows, logger, 60_000, 1).resumeOnce();
    assert.equal((await get(merchant, stuck.id)).status, PaymentStatus.PAYMENT_STATUS_CANCELED);
    assert.deepEqual(await balances(source), [0n, 0n, 0n, 1_000n]);
  });

  it('an authorization that reached the ledger after its payment was recorded is canceled by its ledger expiry, not by the payment\'s age', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 1_000n);
    const logger = createLogger('payments-test', 'silent');
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 60, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 0n };
    const approve = { score: async () => ({ scorePpm: 0, decision: 1, reasons: [], modelVersion: 'test-approve' }) };
    const real = routerLedger(ledger.app.router);
    // The process dies before the authorization reaches the ledger: the payment is recorded, nothing is held.
    const dead: PaymentLedger = {
      createAccounts: (a) => real.createAccounts(a),
      createTransfers: async () => {
        throw new Error('process killed before the ledger call');
      },
    };
    const key = `late-${randomUUID()}`;
    const input = walletPayment(merchant, source, { idempotencyKey: key, amount: 600n, captureMethod: 'manual' });
    await assert.rejects(new PaymentFlows(pool, dead, approve, settings, logger).createPayment(input), /process killed/);
    const paymentId = derivedId(`payment:${merchant}`, key);
    // The caller retries with its key two minutes later (the payment keeps the time it was first recorded): the
    // authorization is held from now, for the 60 s timeout.
    await pool.query('UPDATE payments SET created_at = created_at - $2::INT8 WHERE id = $1', [paymentId, String(120n * 1_000_000_000n)]);
    const flows = new PaymentFlows(pool, real, approve, settings, logger);
    assert.equal((await flows.createPayment(input)).status, 'requires_capture');
    assert.deepEqual(await balances(source), [600n, 0n, 0n, 1_000n]);

    await new PaymentResumer(pool, flows, logger, 60_000, 60).resumeOnce();
    assert.equal((await get(merchant, paymentId)).status, PaymentStatus.PAYMENT_STATUS_REQUIRES_CAPTURE, 'the ledger holds the authorization for another minute');
    assert.deepEqual(await balances(source), [600n, 0n, 0n, 1_000n]);
    assert.equal((await capture(merchant, paymentId)).status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    assert.deepEqual(await balances(source), [0n, 600n, 0n, 1_000n]);
    assert.deepEqual(await paymentEvents(paymentId), ['1:payment.authorized', '2:payment.captured']);
  });

  it('lists a merchant\'s payments newest first with starting_after / ending_before', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await create({ merchantId: merchant, amount: BigInt(100 + i), source: { kind: { $case: 'accountId', value: source } } })).id);
    const newest = [...ids].reverse();
    const first = await list(merchant, { limit: 2 });
    assert.deepEqual(first.payments.map((p) => p.id), newest.slice(0, 2));
    assert.equal(first.hasMore, true);
    const second = await list(merchant, { limit: 2, startingAfter: newest[1]! });
    assert.deepEqual(second.payments.map((p) => p.id), newest.slice(2, 4));
    const back = await list(merchant, { limit: 2, endingBefore: newest[2]! });
    assert.deepEqual(back.payments.map((p) => p.id), newest.slice(0, 2));
    const last = await list(merchant, { limit: 10, startingAfter: newest[3]! });
    assert.deepEqual([last.payments.map((p) => p.id), last.hasMore], [[newest[4]], false]);
  });

  /**
   * Holds the insert of the payment that `key` creates for `merchantId` after its created_at was stamped: a session
   * of the test inserts a copy of payment `templateId` under that payment's id (derived from the key) and keeps it
   * uncommitted. `untilWaiting` resolves once an insert of payments waits for it; `release` rolls it back.
   */
  async function holdPaymentInsert(merchantId: string, templateId: string, key: string) {
    const holder = await pool.connect();
    let held = true;
    const release = async () => {
      if (!held) return;
      held = false;
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
    };
    try {
      await holder.query('BEGIN');
      await holder.query('CREATE TEMP TABLE held ON COMMIT DROP AS SELECT * FROM payments WHERE id = $1', [templateId]);
      await holder.query('UPDATE held SET id = $1, idempotency_key = NULL', [derivedId(`payment:${merchantId}`, key)]);
      await holder.query('INSERT INTO payments SELECT * FROM held');
    } catch (error) {
      await release();
      throw error;
    }
    const untilWaiting = () => untilWaitingOnLock(pool, '%INSERT INTO payments%', 'the held payment waited for its id', 5_000);
    return { untilWaiting, release };
  }

  it('a merchant polling for new payments with ending_before misses none that a concurrent insert committed late', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const pay = (amount: bigint, idempotencyKey: string) => create({ merchantId: merchant, amount, idempotencyKey, source: { kind: { $case: 'accountId', value: source } } });
    const first = await pay(100n, randomUUID());
    const slowKey = randomUUID();
    const hold = await holdPaymentInsert(merchant, first.id, slowKey);
    try {
      const slowAnswer = pay(200n, slowKey);
      await hold.untilWaiting();
      const fast = await pay(300n, randomUUID());
      // The merchant polls for payments newer than the newest it has seen, while the slow insert is held.
      const seen = (await list(merchant, { limit: 10, endingBefore: first.id })).payments.map((p) => p.id);
      await hold.release();
      const slow = await slowAnswer;
      assert.ok(slow.createdAt < fast.createdAt, 'stamped first, committed last');
      const next = (await list(merchant, { limit: 10, endingBefore: seen[0] ?? first.id })).payments.map((p) => p.id);
      assert.deepEqual([...next, ...seen], [fast.id, slow.id], 'the poller stepped over a payment');
      assert.deepEqual(seen, [], 'the fast payment was listed while the slow one, stamped before it, could still commit');
    } finally {
      await hold.release();
    }
  });

  it("another merchant's payment creation held in flight neither delays a merchant's listing nor hides the payment it was answered for", async () => {
    const other = await newMerchant();
    const otherSource = await wallet(other, 100_000n);
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const first = await create({ merchantId: other, amount: 100n, idempotencyKey: randomUUID(), source: { kind: { $case: 'accountId', value: otherSource } } });
    // The other merchant's payment insert is held after its created_at was stamped.
    const slowKey = randomUUID();
    const hold = await holdPaymentInsert(other, first.id, slowKey);
    try {
      const slowAnswer = create({ merchantId: other, amount: 200n, idempotencyKey: slowKey, source: { kind: { $case: 'accountId', value: otherSource } } });
      await hold.untilWaiting();
      const mine = await create({ merchantId: merchant, amount: 300n, idempotencyKey: randomUUID(), source: { kind: { $case: 'accountId', value: source } } });
      const started = performance.now();
      const listed = (await list(merchant, { limit: 10 })).payments.map((p) => p.id);
      const took = performance.now() - started;
      await hold.release();
      await slowAnswer;
      assert.deepEqual(listed, [mine.id], 'the payment the merchant was answered for is missing from its listing');
      assert.ok(took < 500, `the listing waited ${Math.round(took)} ms for another merchant's payment`);
    } finally {
      await hold.release();
    }
  });

  it('a payment created after a restart onto a clock behind the former instance\'s is stamped above what that instance made: a merchant polling with ending_before sees it', async () => {
    const merchant = await newMerchant();
    const source = await wallet(merchant, 100_000n);
    const pay = (amount: bigint) => create({ merchantId: merchant, amount, idempotencyKey: randomUUID(), source: { kind: { $case: 'accountId', value: source } } });
    const seen = await pay(100n);
    // The instance before the restart ran its clock 90 ms ahead of this one's (NTP keeps clocks within the
    // ledger's MAX_CLOCK_LEAD_NANOS): its payment, and the shard batch that authorized it after, are stamped so.
    const ahead = wallClockNanos() + 90_000_000n;
    await pool.query('UPDATE payments SET created_at = $2 WHERE id = $1', [seen.id, String(ahead)]);
    // What startLedger does with the shards' clocks (latestShardClock) when this instance starts.
    ledger.app.router.commits.observe(ahead);
    const next = await pay(200n);
    const polled = (await list(merchant, { limit: 10, endingBefore: seen.id })).payments.map((p) => p.id);
    assert.deepEqual(polled, [next.id], 'the poller stepped over a payment stamped below the newest it had seen');
  });
});
