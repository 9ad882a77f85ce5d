import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'mocha';
import { withTransaction } from '../lib/db.js';
import { createLogger } from '../lib/logger.js';
import { TransferCode } from '../ledger/payments/model.js';
import type { EventEnvelope } from '../proto/gen/events/v1/events.js';
import { account, ledgerForSuite, transfer } from '../test/ledger-harness.js';
import { CreateTransferResultCode, type CreateTransferResult, type Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { parse } from 'csv-parse/sync';
import { batchReportCsv } from '../settlement/report.js';
import { Settler, type SettlementLedger } from '../settlement/settler.js';
import * as store from '../settlement/store.js';
import { parseSchedule } from '../settlement/windows.js';

const EUR = 978;
const ns = (iso: string) => BigInt(Date.parse(iso)) * 1_000_000n;
const DAY = 86_400_000_000_000n;

/**
 * A batch's payout that the ledger does not hold yet (its submission failed: a deadline, the ledger restarting)
 * is still owed from the account: the next batch must not pay the same money out again.
 */
describe('settlement: a batch whose payout is still outstanding', function () {
  this.timeout(60_000);
  const suite = ledgerForSuite();

  /** The suite's ledger as settlement sees it, with payout submissions answered by `payout` (undefined: the ledger's). */
  function ledgerWith(payout: (t: Transfer[]) => Promise<CreateTransferResult[]> | undefined): SettlementLedger {
    const { client } = suite.ledger;
    return {
      createAccounts: (a) => client.createAccounts(a),
      lookupAccounts: (a) => client.lookupAccounts(a),
      lookupTransfers: (a) => client.lookupTransfers(a),
      getAccountTransfers: (a) => client.getAccountTransfers(a),
      createTransfers: (t) => (t.some((x) => x.code === TransferCode.payout) ? payout(t) : undefined) ?? client.createTransfers(t),
    } as SettlementLedger;
  }

  const settlerOn = (ledger: SettlementLedger) =>
    new Settler(suite.pool, ledger, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 60 }), resumePayoutsAfterMs: 1_000 }, createLogger('settlement-test', 'silent'));

  /**
   * A merchant settled daily at 00:00 UTC, its balance account funded with `funded` from a source account, and the
   * payment.captured event of `captured` consumed at `at` (a merchant balance account: flags 0, as payments make it).
   */
  async function capturedPayment(settler: Settler, funded: bigint, captured: bigint, at: bigint): Promise<{ balance: string; source: string }> {
    const { ledger, pool } = suite;
    const merchantId = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `m ${merchantId.slice(0, 8)}`]);
    await store.saveProfile(pool, merchantId, { schedule: parseSchedule({ kind: 'daily', timeZone: 'UTC', cutoff: '00:00' }), payout: null });
    const [balance, source] = [account({ ledger: EUR }), account({ ledger: EUR })];
    await ledger.client.createAccounts([balance, source]);
    await ledger.client.createTransfers([transfer({ ledger: EUR, debitAccountId: source.id, creditAccountId: balance.id, amount: funded })]);
    const event: EventEnvelope = {
      eventId: randomUUID(), type: 'payment.captured', aggregateId: randomUUID(), sequence: 1n, occurredAt: at + 1n, traceparent: '',
      payload: { $case: 'payment', value: {
        paymentId: randomUUID(), merchantId, currency: 'EUR', amount: captured, amountCaptured: captured, amountRefunded: 0n, fee: 0n, status: 'succeeded',
        operationId: randomUUID(), operationAmount: captured, operationFee: 0n, declineCode: '', sourceAccountId: source.id, destinationAccountId: balance.id,
        customerId: '', riskScorePpm: 0, riskModelVersion: '', cardFingerprint: '', cardCountry: '', cardType: '', deviceId: '', ipCountry: '',
        merchantCategory: '', createdAt: at, feeTransferId: '', sourceType: 'card',
      } },
    };
    await withTransaction(pool, (tx) => settler.handle(event, tx));
    return { balance: balance.id, source: source.id };
  }

  it('the next batch does not pay out money that the outstanding payout will take (no overpayment)', async () => {
    const { ledger, pool } = suite;
    // A ledger whose first payout submission fails (gRPC deadline, ledger restarting): the batch stays payout_pending.
    let failNextPayout = true;
    const settler = settlerOn(
      ledgerWith(() => {
        if (!failNextPayout) return undefined;
        failNextPayout = false;
        return Promise.reject(new Error('DEADLINE_EXCEEDED (simulated)'));
      }),
    );
    // 15,000 captured, but 5,000 of it left the account (the merchant's own transfer): 10,000 available.
    const day1 = ns('2025-05-10T00:00:00Z');
    const { balance, source } = await capturedPayment(settler, 15_000n, 15_000n, day1);
    await ledger.client.createTransfers([transfer({ ledger: EUR, debitAccountId: balance, creditAccountId: source, amount: 5_000n })]);

    // Day 1 closes: payout 10,000 (all that is there), 5,000 carried; the payout submission fails.
    // (This account only: closeEnded would close whatever else the shared test database holds first.)
    await assert.rejects(settler.closeAccount(balance, day1 + DAY), /simulated/);
    const [b1] = (await pool.query('SELECT id FROM settlement_batches WHERE account_id = $1', [balance])).rows;
    const batch1 = (await store.findBatch(pool, b1.id))!;
    assert.deepEqual([batch1.payout, batch1.carriedOut, batch1.status], [10_000n, 5_000n, 'payout_pending']);

    // Day 2 closes (the closer runs before the resubmission picks batch 1 up): nothing new, 5,000 carried.
    const { batch: second } = await settler.closeAccount(balance, day1 + 2n * DAY);
    const made = second ? [second] : [];
    // Then the outstanding payout of batch 1 is resubmitted.
    await pool.query(`UPDATE settlement_batches SET updated_at = now() - interval '1 hour' WHERE id = $1`, [batch1.id]);
    await settler.resumePayouts();

    const [acc] = await ledger.client.lookupAccounts([balance]);
    const paidOut = (await pool.query(`SELECT COALESCE(sum(payout), 0)::int8 AS s FROM settlement_batches WHERE account_id = $1 AND status = 'paid'`, [balance])).rows[0].s as bigint;
    // 10,000 was all the account ever held for the merchant to be paid: paying more overdraws the merchant account.
    assert.ok(paidOut <= 10_000n, `paid out ${paidOut} from an account that held 10,000 (second batch: ${made.map((b) => `payout ${b.payout} available ${b.available}`).join()}); ledger balance now ${acc!.creditsPosted - acc!.debitsPosted}`);
  });

  it("a refused payout is not in the batch's report as paid: its report carries it, as the next batch does", async () => {
    const { pool } = suite;
    // A ledger that refuses the first payout (the merchant account was closed, then reopened by an operator).
    let refuseNextPayout = true;
    const settler = settlerOn(
      ledgerWith((t) => {
        if (!refuseNextPayout) return undefined;
        refuseNextPayout = false;
        return Promise.resolve(t.map((_, index) => ({ index, code: CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_ACCOUNT_CLOSED, timestamp: 0n })));
      }),
    );
    const day1 = ns('2025-06-10T00:00:00Z');
    const { balance } = await capturedPayment(settler, 10_000n, 10_000n, day1);

    const { batch: first } = await settler.closeAccount(balance, day1 + DAY);
    assert.deepEqual([first!.payout, first!.status, first!.failureCode], [10_000n, 'payout_failed', 'account_closed'], 'the batch a close answers with says why, as the stored one');
    const { batch: second } = await settler.closeAccount(balance, day1 + 2n * DAY);
    assert.deepEqual([second!.lineCount, second!.carriedIn, second!.payout, second!.status], [0, 10_000n, 10_000n, 'paid']);

    // The report of the first batch: nothing was paid, and the 10,000 was carried into the second batch.
    const totals = (b: store.Batch) =>
      Object.fromEntries((parse(batchReportCsv(b, []), { columns: true }) as Record<string, string>[]).filter((r) => r['record'] === 'total').map((r) => [r['kind'], r['amount']]));
    const firstTotals = totals((await store.findBatch(pool, first!.id))!);
    assert.deepEqual([firstTotals['net'], firstTotals['payout'], firstTotals['carried_out']], ['10000', '0', '10000']);
    assert.equal(firstTotals['carried_out'], totals(second!)['carried_in'], "what one report carries out, the next carries in");
  });

  it('a batch whose payout is decided on resubmission is counted then (settlement_batches_total), a refusal as payout_failed', async () => {
    const { pool } = suite;
    // The first submission of this account's payout fails (a deadline); its resubmission is refused (account closed).
    let mine = '';
    let submissions = 0;
    const counted: { id: string; status: string }[] = [];
    const settler = new Settler(
      suite.pool,
      ledgerWith((t) => {
        if (!t.some((x) => x.debitAccountId === mine)) return undefined;
        if (submissions++ === 0) return Promise.reject(new Error('DEADLINE_EXCEEDED (simulated)'));
        return Promise.resolve(t.map((_, index) => ({ index, code: CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_ACCOUNT_CLOSED, timestamp: 0n })));
      }),
      { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 60 }), resumePayoutsAfterMs: 1_000, onBatch: (b) => counted.push({ id: b.id, status: b.status }) },
      createLogger('settlement-test', 'silent'),
    );
    const day1 = ns('2025-08-10T00:00:00Z');
    const { balance } = await capturedPayment(settler, 2_000n, 2_000n, day1);
    mine = balance;
    await assert.rejects(settler.closeAccount(balance, day1 + DAY), /simulated/);
    const [made] = (await pool.query('SELECT id FROM settlement_batches WHERE account_id = $1', [balance])).rows;
    assert.equal(counted.length, 0, 'not counted while its payout is undecided');
    await pool.query(`UPDATE settlement_batches SET updated_at = now() - interval '1 hour' WHERE id = $1`, [made.id]);
    await settler.resumePayouts();
    assert.equal((await store.findBatch(pool, made.id))!.status, 'payout_failed');
    assert.deepEqual(counted.filter((c) => c.id === made.id), [{ id: made.id, status: 'payout_failed' }]);
    // The next window pays what was carried (and leaves nothing owed for the closers of other tests).
    mine = '';
    const { batch: next } = await settler.closeAccount(balance, day1 + 2n * DAY);
    assert.deepEqual([next!.carriedIn, next!.payout, next!.status], [2_000n, 2_000n, 'paid']);
  });

  it('a pending payout that fails again and again does not hold up the resubmission of the others', async () => {
    const { pool } = suite;
    // Every payout submission fails at first (the batches stay payout_pending); later only one batch's keeps failing.
    let phase: 'all fail' | 'one fails' = 'all fail';
    let stuckPayout = '';
    const settler = settlerOn(
      ledgerWith((t) => (phase === 'all fail' || t.some((x) => x.id === stuckPayout) ? Promise.reject(new Error('payout refused by a bug (simulated)')) : undefined)),
    );
    const day1 = ns('2025-07-10T00:00:00Z');
    const batches: store.Batch[] = [];
    for (let i = 0; i < 2; i++) {
      const { balance } = await capturedPayment(settler, 1_000n, 1_000n, day1);
      await assert.rejects(settler.closeAccount(balance, day1 + DAY), /simulated/);
      const [row] = (await pool.query('SELECT id FROM settlement_batches WHERE account_id = $1', [balance])).rows;
      batches.push((await store.findBatch(pool, row.id))!);
    }
    // The stuck one is the older: the resubmission takes it first.
    const [stuck, other] = batches as [store.Batch, store.Batch];
    stuckPayout = stuck.payoutTransferId;
    phase = 'one fails';
    await pool.query(`UPDATE settlement_batches SET updated_at = now() - interval '2 hours' WHERE id = $1`, [stuck.id]);
    await pool.query(`UPDATE settlement_batches SET updated_at = now() - interval '1 hour' WHERE id = $1`, [other.id]);
    await settler.resumePayouts();
    const status = async (b: store.Batch) => (await store.findBatch(pool, b.id))!.status;
    assert.deepEqual([await status(stuck), await status(other)], ['payout_pending', 'paid']);
    // Left for the next run, which pays it once it can be (and leaves no pending payout for other tests' resumers).
    stuckPayout = '';
    await pool.query(`UPDATE settlement_batches SET updated_at = now() - interval '1 hour' WHERE id = $1`, [stuck.id]);
    await settler.resumePayouts();
    assert.equal(await status(stuck), 'paid');
  });
});
