import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { EventConsumer, type EventHandler } from '../lib/consumer.js';
import { createPool, type Pool } from '../lib/db.js';
import { callUnary } from '../lib/grpc.js';
import { createLogger } from '../lib/logger.js';
import { connectJetStream, connectNats, type NatsConnection } from '../lib/nats.js';
import { retry } from '../lib/retry.js';
import { platformAccountId } from '../ledger/payments/model.js';
import { CaptureMethod, PaymentServiceClient, PaymentStatus, type CreatePaymentRequest, type Payment } from '../proto/gen/payments/v1/payments.js';
import { Rng } from '../risk/ml/random.js';
import { startRisk } from '../risk/app.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { TestNatsServer } from '../test/nats-server.js';
import { testConfig } from '../test/support.js';
import { reconcileBatch, type DiscrepancyKind } from './reconcile.js';
import { Settler } from './settler.js';
import * as store from './store.js';
import { parseSchedule } from './windows.js';

const PAYMENTS = Number(process.env['SETTLEMENT_TEST_PAYMENTS'] ?? 10_000);
const MERCHANTS = 20;
const CURRENCIES = ['USD', 'EUR', 'JPY'] as const;
const CONCURRENCY = 32;

/**
 * The settlement promise end to end: payments through the payment service, their events relayed to JetStream,
 * consumed with failures after the effect (retried), duplicate deliveries and a consumer killed mid-stream,
 * windows closed while events flow; then every batch agrees with the ledger to the minor unit and reconciles,
 * and injected discrepancies are each reported.
 */
describe('settlement of 10,000 random payments (payments, relay, JetStream, consumer, ledger)', function () {
  this.timeout(600_000);
  const rng = new Rng(20261125);
  const logger = createLogger('settlement-test', 'error');
  let nats: TestNatsServer;
  let pool: Pool;
  let risk: Awaited<ReturnType<typeof startRisk>>;
  let ledger: TestLedger;
  let payments: PaymentServiceClient;
  let settler: Settler;
  let env: Record<string, string>;
  const merchants: string[] = [];

  before(async () => {
    nats = await TestNatsServer.start();
    pool = createPool(testConfig(), { max: 12, applicationName: 'settlement-test' });
    // Other files leave payment events unpublished (their relay is off): not this test's business.
    await pool.query('DELETE FROM outbox');
    const suffix = randomUUID().slice(0, 8);
    env = { NATS_URL: nats.url, EVENTS_STREAM: `STL_${suffix}`, EVENTS_SUBJECT_PREFIX: `stl-${suffix}` };
    risk = await startRisk(testConfig({ RISK_GRPC_LISTEN: '127.0.0.1:0', METRICS_PORT: '0', RISK_RULES_MAX_AMOUNT: '100000000' }), logger);
    ledger = await startTestLedger({ ...env, LEDGER_RELAY_ENABLED: 'true', RISK_GRPC_TARGET: risk.address, RISK_DEADLINE_MS: '5000' });
    payments = new PaymentServiceClient(ledger.app.address, credentials.createInsecure());
    settler = new Settler(pool, ledger.client, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 1 }), resumePayoutsAfterMs: 1_000 }, logger);
    for (let i = 0; i < MERCHANTS; i++) {
      const id = randomUUID();
      await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, $3)', [id, `settlement ${i}`, rng.int(0, 400)]);
      merchants.push(id);
    }
  });

  after(async () => {
    payments?.close();
    await ledger?.close();
    await risk?.close();
    await pool?.end();
    await nats?.stop();
  });

  /**
   * The payment service as a careful client uses it: UNAVAILABLE (a database conflict it gave up on, a restart)
   * is retried with the same idempotency key, which makes the retry the same operation.
   */
  const retried = <T>(work: () => Promise<T>) => retry(work, { attempts: 6, baseDelayMs: 20, maxDelayMs: 500, isRetryable: (e) => (e as ServiceError).code === status.UNAVAILABLE });
  const call = {
    create: (r: Partial<CreatePaymentRequest>) => {
      const request: CreatePaymentRequest = {
        idempotencyKey: randomUUID(), merchantId: '', amount: 0n, currency: 'USD', destinationAccountId: '', captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC,
        metadata: {}, deviceId: '', ipCountry: 'US', customerId: '', source: { kind: { $case: 'card', value: { token: 'tok', fingerprint: `fp_${randomUUID()}`, country: 'US', type: 'credit' } } }, ...r,
      };
      return retried(() => callUnary(payments, payments.createPayment, request, 30_000)).then((x) => x.payment!);
    },
    capture: (p: Payment, amount: bigint) => retried(() => callUnary(payments, payments.capturePayment, { merchantId: p.merchantId, paymentId: p.id, amount }, 30_000)),
    cancel: (p: Payment) => retried(() => callUnary(payments, payments.cancelPayment, { merchantId: p.merchantId, paymentId: p.id }, 30_000)),
    refund: (p: Payment, amount: bigint) => {
      const idempotencyKey = randomUUID();
      return retried(() => callUnary(payments, payments.createRefund, { merchantId: p.merchantId, paymentId: p.id, amount, idempotencyKey, metadata: {} }, 30_000));
    },
  };

  /** One random payment's life: authorize (automatic or manual), capture in part or cancel, refund in part or whole. */
  async function randomPayment(i: number): Promise<void> {
    const currency = CURRENCIES[i % CURRENCIES.length]!;
    const amount = BigInt(rng.int(100, 500_000));
    const manual = rng.chance(0.3);
    const p = await call.create({ merchantId: merchants[i % MERCHANTS]!, currency, amount, captureMethod: manual ? CaptureMethod.CAPTURE_METHOD_MANUAL : CaptureMethod.CAPTURE_METHOD_AUTOMATIC });
    if (p.status === PaymentStatus.PAYMENT_STATUS_DECLINED) return;
    let captured = p.amountCaptured;
    if (manual) {
      if (rng.chance(0.15)) {
        await call.cancel(p);
        return;
      }
      captured = rng.chance(0.5) ? amount : BigInt(rng.int(1, Number(amount)));
      await call.capture(p, captured);
    }
    if (rng.chance(0.25)) {
      const first = rng.chance(0.5) ? captured : BigInt(rng.int(1, Number(captured)));
      await call.refund(p, first);
      if (first < captured && rng.chance(0.3)) await call.refund(p, captured - first);
    }
  }

  async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 180_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 250));
    }
  }

  /** Per account, what the payments service recorded: captured, refunded, fees. */
  async function expectedByAccount(): Promise<Map<string, { captured: bigint; refunded: bigint; fees: bigint }>> {
    const r = await pool.query(
      `SELECT destination_account_id AS account, sum(amount_captured) AS captured, sum(amount_refunded) AS refunded, sum(fee) AS fees
       FROM payments WHERE merchant_id = ANY($1::uuid[]) AND amount_captured > 0 GROUP BY 1`,
      [merchants],
    );
    return new Map(r.rows.map((row) => [row.account as string, { captured: BigInt(row.captured), refunded: BigInt(row.refunded), fees: BigInt(row.fees) }]));
  }

  /** Per account, what settlement holds (batched or not). */
  async function settledByAccount(): Promise<Map<string, { captured: bigint; refunded: bigint; fees: bigint }>> {
    const r = await pool.query(
      `SELECT e.account_id AS account, kind, sum(amount) AS total FROM settlement_entries e
       JOIN settlement_accounts a ON a.account_id = e.account_id WHERE a.merchant_id = ANY($1::uuid[]) GROUP BY 1, 2`,
      [merchants],
    );
    const totals = new Map<string, { captured: bigint; refunded: bigint; fees: bigint }>();
    for (const row of r.rows) {
      const t = totals.get(row.account) ?? { captured: 0n, refunded: 0n, fees: 0n };
      if (row.kind === 'capture') t.captured = BigInt(row.total);
      if (row.kind === 'refund') t.refunded = BigInt(row.total);
      if (row.kind === 'fee') t.fees = BigInt(row.total);
      totals.set(row.account, t);
    }
    return totals;
  }

  const sameTotals = (a: Map<string, unknown>, b: Map<string, unknown>) => JSON.stringify([...a].sort(), (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)) === JSON.stringify([...b].sort(), (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));

  async function ourBatches(): Promise<store.Batch[]> {
    const r = await pool.query('SELECT id FROM settlement_batches WHERE merchant_id = ANY($1::uuid[]) ORDER BY account_id, window_end', [merchants]);
    return Promise.all(r.rows.map(async (row) => (await store.findBatch(pool, row.id))!));
  }

  async function clearingCredits(): Promise<Map<string, bigint>> {
    const accounts = await ledger.client.lookupAccounts(CURRENCIES.map((c) => platformAccountId('payout_clearing', c)));
    return new Map(CURRENCIES.map((c) => [c, accounts.find((a) => a.id === platformAccountId('payout_clearing', c))?.creditsPosted ?? 0n]));
  }

  it('every batch nets captured - refunded - fees from the ledger; payouts equal the clearing credits; zero discrepancies; injected ones found', async () => {
    const clearingBefore = await clearingCredits();
    const testStart = (await pool.query('SELECT now() AS t')).rows[0].t as Date;
    // Consumed with a failure after the effect now and then (the transaction rolls back and is retried).
    const flaky: EventHandler = async (event, tx) => {
      await settler.handle(event, tx);
      if (rng.chance(0.03)) throw new Error('injected failure after the effect');
    };
    const consumerConfig = testConfig(env);
    const name = `settlement-${randomUUID().slice(0, 8)}`;
    const consumerOf = (nc: NatsConnection) => new EventConsumer(nc, pool, consumerConfig, { name, filter: 'payments.>', ackWaitMs: 2_000, concurrency: 8, maxDeliver: 50 }, flaky, logger);
    const firstConnection = await connectNats(consumerConfig, { name: 'settlement-test-1' });
    const first = consumerOf(firstConnection);
    await first.start();

    // Load, with windows closing while events flow.
    let next = 0;
    let closes = 0;
    let second: EventConsumer | undefined;
    // As the service's closer does: ended windows, an on-demand close, resubmission of unconfirmed payouts. A
    // close that fails (a conflict it gave up on) is tried again by the next round.
    const closeErrors: string[] = [];
    const closer = setInterval(() => {
      void settler.closeEnded().then(() => closes++, (e: Error) => closeErrors.push(e.message));
      void settler.closeNow(merchants[rng.int(0, MERCHANTS - 1)]!, rng.pick(CURRENCIES)).then(() => closes++, (e: Error) => closeErrors.push(e.message));
      void settler.resumePayouts().catch((e: Error) => closeErrors.push(e.message));
    }, 1_500);
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < PAYMENTS) {
          const i = next++;
          // Half-way, the consumer dies without draining: what it had in hand is delivered again to the next one.
          if (i === Math.floor(PAYMENTS / 2)) {
            await firstConnection.close();
            second = consumerOf(await connectNats(consumerConfig, { name: 'settlement-test-2' }));
            await second.start();
          }
          await randomPayment(i);
        }
      }),
    );
    clearInterval(closer);

    // Some messages are delivered twice more (as a relay republishing after JetStream's dedupe window would).
    const observer = await connectNats(consumerConfig, { name: 'settlement-test-observer' });
    const { js, jsm } = await connectJetStream(observer);
    const lastSeq = (await jsm.streams.info(env['EVENTS_STREAM']!)).state.last_seq;
    let republished = 0;
    for (let seq = 1; seq <= lastSeq; seq += rng.int(10, 40)) {
      const m = await jsm.streams.getMessage(env['EVENTS_STREAM']!, { seq });
      if (!m) continue;
      await js.publish(m.subject, m.data, { msgID: `republished-${seq}` });
      republished++;
    }

    const expected = await expectedByAccount();
    await waitFor('settlement to consume every capture and refund', async () => sameTotals(expected, await settledByAccount()));
    await waitFor('the consumer to finish', async () => (await second!.lag()).pending === 0 && (await second!.lag()).inHand === 0);
    await second!.stop();
    await observer.close();
    assert.ok(closes > 0, 'windows were closed during the load');
    assert.ok(second!.stats.duplicates > 0, `duplicates were delivered and skipped (republished ${republished})`);

    // Close what is open, for every merchant and currency.
    for (const m of merchants) for (const c of CURRENCIES) await settler.closeNow(m, c);
    // Payouts whose submission failed during the load are submitted again, as the closer would.
    await waitFor('every payout to be confirmed', async () => {
      await settler.resumePayouts();
      return (await pool.query(`SELECT 1 FROM settlement_batches WHERE status = 'payout_pending' AND merchant_id = ANY($1::uuid[])`, [merchants])).rowCount === 0;
    });
    if (closeErrors.length > 0) console.log(`      (${closeErrors.length} closes failed during the load and were retried: ${[...new Set(closeErrors)].join('; ')})`);
    const unbatched = await pool.query(
      `SELECT count(*)::int AS n FROM settlement_entries e JOIN settlement_accounts a ON a.account_id = e.account_id WHERE a.merchant_id = ANY($1::uuid[]) AND e.batch_id IS NULL`,
      [merchants],
    );
    assert.equal(unbatched.rows[0].n, 0, 'every entry is in a batch');

    const batches = await ourBatches();
    assert.ok(batches.length >= MERCHANTS * CURRENCIES.length, `${batches.length} batches`);
    // The batches together: exactly what the payments recorded, per account.
    const fromBatches = new Map<string, { captured: bigint; refunded: bigint; fees: bigint }>();
    for (const b of batches) {
      const t = fromBatches.get(b.accountId) ?? { captured: 0n, refunded: 0n, fees: 0n };
      fromBatches.set(b.accountId, { captured: t.captured + b.grossCaptured, refunded: t.refunded + b.refunds, fees: t.fees + b.fees });
    }
    assert.ok(sameTotals(expected, fromBatches), 'batches add up to the payments, per account');

    // Each batch: its net is its lines' ledger transfers, signed by direction on the account, to the minor unit.
    for (const b of batches) {
      const lines = await store.batchEntries(pool, b.id);
      const transfers = lines.length ? await ledger.client.lookupTransfers(lines.map((l) => l.transferId)) : [];
      assert.equal(transfers.length, lines.length, `batch ${b.id}: every line is a ledger transfer`);
      const fromLedger = transfers.reduce((s, t) => s + (t.creditAccountId === b.accountId ? t.amount : t.debitAccountId === b.accountId ? -t.amount : 0n), 0n);
      assert.equal(b.net, fromLedger, `batch ${b.id}: net ${b.net}, ledger ${fromLedger}`);
      assert.equal(b.status, 'paid', `batch ${b.id} paid out`);
    }
    // Each account's ledger balance is what was settled less what was paid out (and what is carried is owed). Paid
    // out is what the ledger moved: a refund between a batch and its payout makes the payout move less (payout_short),
    // and the account is never left below zero by a payout.
    const accounts = await ledger.client.lookupAccounts([...fromBatches.keys()]);
    let shortPayouts = 0;
    for (const a of accounts) {
      const mine = batches.filter((b) => b.accountId === a.id);
      const net = mine.reduce((s, b) => s + b.net, 0n);
      const paid = mine.reduce((s, b) => s + store.movedPayout(b), 0n);
      shortPayouts += mine.filter((b) => b.payoutShort > 0n).length;
      assert.equal(a.creditsPosted - a.debitsPosted, net - paid, `account ${a.id}`);
      assert.equal(mine.at(-1)!.carriedOut + mine.at(-1)!.payoutShort, net - paid, `account ${a.id}: what is carried is what was not paid`);
    }
    if (shortPayouts > 0) console.log(`      (${shortPayouts} payouts moved less than decided: a refund came between the batch and its payout)`);
    // The payouts of every batch made during this test equal what the payout clearing accounts received.
    const clearingAfter = await clearingCredits();
    const paidOut = await pool.query(`SELECT currency, sum(payout - payout_short) AS total FROM settlement_batches WHERE created_at >= $1 AND status = 'paid' GROUP BY 1`, [testStart]);
    for (const c of CURRENCIES) {
      const total = BigInt(paidOut.rows.find((r) => r.currency === c)?.total ?? 0);
      assert.equal(clearingAfter.get(c)! - clearingBefore.get(c)!, total, `${c} payouts`);
    }

    // Reconciliation: nothing to report.
    for (const b of batches) {
      const r = await reconcileBatch(pool, ledger.client, b);
      assert.deepEqual(r.discrepancies, [], `batch ${b.id}`);
    }

    // Injected: a settlement line deleted.
    const victim = batches.find((b) => b.lineCount >= 3)!;
    const [line] = (await store.batchEntries(pool, victim.id)).filter((l) => l.kind === 'capture');
    await pool.query('DELETE FROM settlement_entries WHERE transfer_id = $1', [line!.transferId]);
    const afterDelete = await reconcileBatch(pool, ledger.client, victim);
    assert.ok(kinds(afterDelete.discrepancies).includes('missing_line'), JSON.stringify(kinds(afterDelete.discrepancies)));
    assert.ok(kinds(afterDelete.discrepancies).includes('batch_total_mismatch'));
    assert.ok(afterDelete.discrepancies.find((d) => d.kind === 'missing_line')!.ids.includes(line!.transferId));
    assert.ok(afterDelete.discrepancies.every((d) => ['missing_line', 'batch_total_mismatch', 'unsettled_ledger_transfer'].includes(d.kind)));

    // Injected: a line whose amount differs from the ledger and the event.
    const other = batches.find((b) => b.lineCount >= 1 && b.accountId !== victim.accountId)!;
    const [changed] = await store.batchEntries(pool, other.id);
    await pool.query('UPDATE settlement_entries SET amount = amount + 1 WHERE transfer_id = $1', [changed!.transferId]);
    const afterChange = await reconcileBatch(pool, ledger.client, other);
    const mismatches = afterChange.discrepancies.filter((d) => d.kind === 'amount_mismatch');
    assert.equal(mismatches.length, 2, 'against the ledger and against the event');
    assert.ok(mismatches.every((d) => d.ids.includes(changed!.transferId) && d.actual === d.expected + 1n));

    // Injected: a ledger transfer posted on a merchant account outside the payment flow.
    const [merchant, currency] = [other.merchantId, other.currency];
    const elsewhere = account({ ledger: (await ledger.client.lookupAccounts([other.accountId]))[0]!.ledger });
    assert.equal((await ledger.client.createAccounts([elsewhere]))[0]?.code, 1);
    const outside = transfer({ ledger: elsewhere.ledger, debitAccountId: other.accountId, creditAccountId: elsewhere.id, amount: 777n, code: 99 });
    assert.equal((await ledger.client.createTransfers([outside]))[0]?.code, 1);
    const p = await call.create({ merchantId: merchant, currency, amount: 5_000n });
    assert.equal(p.status, PaymentStatus.PAYMENT_STATUS_SUCCEEDED);
    const resumed = consumerOf(await connectNats(consumerConfig, { name: 'settlement-test-3' }));
    await resumed.start();
    await waitFor('the last payment to be consumed', async () => (await pool.query('SELECT 1 FROM settlement_events WHERE payment_id = $1', [p.id])).rowCount === 1, 30_000);
    await resumed.stop();
    const [last] = await settler.closeNow(merchant, currency);
    assert.ok(last, 'a batch for the last payment');
    const afterOutside = await reconcileBatch(pool, ledger.client, last);
    assert.deepEqual(afterOutside.discrepancies.map((d) => [d.kind, d.ids]), [['unsettled_ledger_transfer', [outside.id]]]);
  });
});

function kinds(discrepancies: readonly { kind: DiscrepancyKind }[]): DiscrepancyKind[] {
  return [...new Set(discrepancies.map((d) => d.kind))].sort();
}
