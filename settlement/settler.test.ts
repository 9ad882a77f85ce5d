import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Metadata, status } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { withTransaction, type Pool } from '../lib/db.js';
import { createLogger } from '../lib/logger.js';
import { feeTransferId, nowNanos, platformAccountId } from '../ledger/payments/model.js';
import type { EventEnvelope } from '../proto/gen/events/v1/events.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { testPool } from '../test/support.js';
import { batchToProto } from './service.js';
import { reconcileBatch } from './reconcile.js';
import { Settler, type SettlementLedger } from './settler.js';
import * as store from './store.js';
import { parseSchedule } from './windows.js';

const EUR = 978;
const ns = (iso: string) => BigInt(Date.parse(iso)) * 1_000_000n;

/** Window boundaries, late events, shortfalls and payouts, with events made by hand (no NATS needed). */
describe('settlement windows and payouts (real PostgreSQL and ledger)', function () {
  this.timeout(60_000);
  let ledger: TestLedger;
  let pool: Pool;
  let settler: Settler;

  before(async () => {
    pool = testPool();
    ledger = await startTestLedger();
    settler = new Settler(pool, ledger.client, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 60 }), resumePayoutsAfterMs: 1_000 }, createLogger('settlement-test', 'error'));
  });
  after(async () => {
    await ledger?.close();
    await pool?.end();
  });

  /** A merchant (settled daily at 17:00 in Paris) with a EUR balance account holding `funds` in the ledger. */
  async function merchantWithAccount(funds: bigint): Promise<{ merchantId: string; accountId: string; fund(amount: bigint): Promise<void> }> {
    const merchantId = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `settled ${merchantId.slice(0, 8)}`]);
    await store.saveProfile(pool, merchantId, { schedule: parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '17:00' }), payout: null });
    const balance = account({ ledger: EUR });
    const source = account({ ledger: EUR });
    assert.deepEqual((await ledger.client.createAccounts([balance, source])).map((r) => r.code), [1, 1]);
    const fund = async (amount: bigint) => {
      assert.equal((await ledger.client.createTransfers([transfer({ ledger: EUR, debitAccountId: source.id, creditAccountId: balance.id, amount })]))[0]?.code, 1);
    };
    if (funds > 0n) await fund(funds);
    return { merchantId, accountId: balance.id, fund };
  }

  function event(type: 'payment.captured' | 'payment.refunded', m: { merchantId: string; accountId: string }, amount: bigint, fee: bigint, occurredAt: bigint): EventEnvelope {
    const operationId = randomUUID();
    return {
      eventId: randomUUID(),
      type,
      aggregateId: randomUUID(),
      sequence: 1n,
      occurredAt,
      traceparent: '',
      payload: {
        $case: 'payment',
        value: {
          paymentId: randomUUID(), merchantId: m.merchantId, currency: 'EUR', amount, amountCaptured: amount, amountRefunded: 0n, fee, status: 'succeeded',
          operationId, operationAmount: amount, operationFee: fee, declineCode: '', sourceAccountId: randomUUID(), destinationAccountId: m.accountId,
          customerId: '', riskScorePpm: 0, riskModelVersion: '', cardFingerprint: '', cardCountry: '', cardType: '', deviceId: '', ipCountry: '',
          merchantCategory: '', createdAt: occurredAt, feeTransferId: fee > 0n ? feeTransferId(operationId) : '', sourceType: 'card',
        },
      },
    };
  }

  const consume = (e: EventEnvelope) => withTransaction(pool, (tx) => settler.handle(e, tx));
  const batchesOf = async (accountId: string) =>
    (await pool.query('SELECT id FROM settlement_batches WHERE account_id = $1 ORDER BY window_end', [accountId])).rows.map((r) => r.id as string);
  const linesOf = async (batchId: string) => (await store.batchEntries(pool, batchId)).map((l) => `${l.kind}:${l.amount}`).sort();

  it('an event dated beyond the allowed clock skew is refused (to be dead-lettered), and opens no window years ahead', async () => {
    const m = await merchantWithAccount(0n);
    const years = 2n * 365n * 86_400_000_000_000n;
    const skewed = event('payment.captured', m, 10_000n, 100n, nowNanos() + years);
    await assert.rejects(consume(skewed), /in the future/);
    const recorded = await pool.query('SELECT (SELECT count(*) FROM settlement_accounts WHERE account_id = $1)::int8 AS accounts, (SELECT count(*) FROM settlement_events WHERE event_id = $2)::int8 AS events', [m.accountId, skewed.eventId]);
    assert.deepEqual(recorded.rows[0], { accounts: 0n, events: 0n });
    // Within the skew (a producer's clock a little ahead), the event is taken as it is.
    await consume(event('payment.captured', m, 10_000n, 100n, nowNanos() + 60_000_000_000n));
    assert.equal((await pool.query('SELECT 1 FROM settlement_accounts WHERE account_id = $1', [m.accountId])).rowCount, 1);
  });

  it('an event exactly at the cut-off goes to the next window; a late event goes to the first open window, never lost, never twice', async () => {
    const m = await merchantWithAccount(1_000_000n);
    const cut = ns('2025-11-24T16:00:00Z'); // 17:00 in Paris
    await consume(event('payment.captured', m, 10_000n, 100n, cut - 1n));
    await consume(event('payment.captured', m, 20_000n, 200n, cut));
    await consume(event('payment.refunded', m, 3_000n, 0n, cut + 1n));

    // The closer runs a minute after the cut-off: one batch, [previous 17:00, 17:00), with the first capture.
    const made = await settler.closeEnded(cut + 60_000_000_000n);
    assert.equal(made.length, 1);
    const [first] = made;
    assert.deepEqual([first!.windowStart, first!.windowEnd], [cut - 86_400_000_000_000n, cut]);
    assert.deepEqual([first!.grossCaptured, first!.fees, first!.refunds, first!.net, first!.payout, first!.status], [10_000n, 100n, 0n, 9_900n, 9_900n, 'paid']);
    assert.deepEqual(await linesOf(first!.id), ['capture:10000', 'fee:100']);
    // Closing again at the same time makes nothing.
    assert.equal((await settler.closeEnded(cut + 60_000_000_000n)).length, 0);

    // A capture from before the cut-off arrives after the window closed: it counts in the next window.
    const late = event('payment.captured', m, 5_000n, 50n, cut - 3_600_000_000_000n);
    await consume(late);
    const lateEntry = (await pool.query('SELECT effective_at, batch_id FROM settlement_entries WHERE transfer_id = $1', [(late.payload as { value: { operationId: string } }).value.operationId])).rows[0];
    assert.deepEqual([lateEntry.effective_at, lateEntry.batch_id], [cut, null]);
    // The same event again (a redelivery the inbox did not catch) changes nothing.
    await consume(late);

    const next = await settler.closeEnded(cut + 86_400_000_000_000n + 1n);
    assert.equal(next.length, 1);
    assert.deepEqual([next[0]!.windowStart, next[0]!.windowEnd], [cut, cut + 86_400_000_000_000n]);
    assert.deepEqual(await linesOf(next[0]!.id), ['capture:20000', 'capture:5000', 'fee:200', 'fee:50', 'refund:3000']);
    assert.equal(next[0]!.net, 20_000n + 5_000n - 200n - 50n - 3_000n);
    const unbatched = await pool.query('SELECT count(*)::int AS n FROM settlement_entries WHERE account_id = $1 AND batch_id IS NULL', [m.accountId]);
    assert.equal(unbatched.rows[0].n, 0);

    // Paid out by the ledger: the account lost exactly the two payouts to the payout clearing account.
    const [after] = await ledger.client.lookupAccounts([m.accountId]);
    assert.equal(after!.debitsPosted, 9_900n + next[0]!.payout);
    const payouts = await ledger.client.lookupTransfers([first!.payoutTransferId, next[0]!.payoutTransferId]);
    assert.deepEqual(payouts.map((t) => [t.amount, t.creditAccountId]), [[9_900n, platformAccountId('payout_clearing', 'EUR')], [next[0]!.payout, platformAccountId('payout_clearing', 'EUR')]]);
  });

  it('idle windows are skipped in one step; a window with nothing to settle makes no batch', async () => {
    const m = await merchantWithAccount(100_000n);
    const start = ns('2026-01-10T16:00:00Z');
    await consume(event('payment.captured', m, 1_000n, 0n, start + 1n));
    // Forty days later: one batch (the first window), and the account is closed through the last cut-off.
    const made = await settler.closeEnded(start + 40n * 86_400_000_000_000n + 60_000_000_000n);
    assert.equal(made.filter((b) => b.accountId === m.accountId).length, 1);
    const state = await pool.query('SELECT closed_through FROM settlement_accounts WHERE account_id = $1', [m.accountId]);
    assert.equal(state.rows[0].closed_through, start + 40n * 86_400_000_000_000n);
  });

  it('never pays out more than the available balance: the shortfall is carried and paid when funds arrive', async () => {
    const m = await merchantWithAccount(0n);
    const cut = ns('2026-02-10T16:00:00Z');
    // The events say 50,000 was captured, but the ledger account holds 30,000 (the rest went elsewhere).
    await m.fund(30_000n);
    await consume(event('payment.captured', m, 50_000n, 0n, cut - 10n));
    const [short] = await settler.closeEnded(cut + 1n).then((b) => b.filter((x) => x.accountId === m.accountId));
    assert.deepEqual([short!.net, short!.available, short!.payout, short!.carriedOut, short!.status], [50_000n, 30_000n, 30_000n, 20_000n, 'paid']);

    // Refunds and fees above the captures: nothing is paid, the debt is carried and netted next time.
    await m.fund(25_000n);
    const next = await settler.closeEnded(cut + 86_400_000_000_000n + 1n).then((b) => b.filter((x) => x.accountId === m.accountId));
    // Nothing new was captured, but 20,000 is owed and 25,000 is available: a batch pays the carried amount.
    assert.deepEqual(next.map((b) => [b.lineCount, b.carriedIn, b.payout, b.carriedOut]), [[0, 20_000n, 20_000n, 0n]]);
    await consume(event('payment.refunded', m, 4_000n, 0n, cut + 86_400_000_000_000n + 5n));
    const debt = await settler.closeEnded(cut + 2n * 86_400_000_000_000n + 1n).then((b) => b.filter((x) => x.accountId === m.accountId));
    assert.deepEqual(debt.map((b) => [b.net, b.payout, b.carriedOut]), [[-4_000n, 0n, -4_000n]]);
    const [account] = await ledger.client.lookupAccounts([m.accountId]);
    assert.equal(account!.debitsPosted, 50_000n);
  });

  it('a refund between the batch and its payout: the payout moves what is left, never overdraws the account, and the rest is paid by the next batch', async () => {
    const m = await merchantWithAccount(10_000n);
    const cut = ns('2026-04-06T15:00:00Z');
    await consume(event('payment.captured', m, 10_000n, 0n, cut - 10n));
    // A refund of 4,000 reaches the ledger after the batch read the balance (10,000) and before its payout.
    const [customer] = [account({ ledger: EUR })];
    assert.equal((await ledger.client.createAccounts([customer]))[0]?.code, 1);
    const refundFirst: SettlementLedger = {
      createAccounts: (a) => ledger.client.createAccounts(a),
      lookupAccounts: (ids) => ledger.client.lookupAccounts(ids),
      lookupTransfers: (ids) => ledger.client.lookupTransfers(ids),
      getAccountTransfers: (f) => ledger.client.getAccountTransfers(f),
      createTransfers: async (transfers) => {
        if (transfers[0]?.debitAccountId === m.accountId) {
          const refund = transfer({ ledger: EUR, debitAccountId: m.accountId, creditAccountId: customer.id, amount: 4_000n });
          assert.equal((await ledger.client.createTransfers([refund]))[0]?.code, 1);
        }
        return ledger.client.createTransfers(transfers);
      },
    };
    const racing = new Settler(pool, refundFirst, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 60 }), resumePayoutsAfterMs: 1_000 }, createLogger('settlement-test', 'error'));
    const [batch] = await racing.closeEnded(cut + 1n).then((b) => b.filter((x) => x.accountId === m.accountId));
    assert.deepEqual([batch!.available, batch!.status], [10_000n, 'paid']);
    // The batch the close answers with (CloseWindow's answer, batchToProto) says what moved, as the stored one does.
    assert.deepEqual([batch!.payoutShort, batchToProto(batch!).payout, batchToProto(batch!).payoutShort], [4_000n, 6_000n, 4_000n], 'the batch answered by the close says what moved');
    const recorded = (await store.findBatch(pool, batch!.id))!;
    assert.deepEqual([recorded.payout, recorded.payoutShort, store.movedPayout(recorded), recorded.carriedOut], [10_000n, 4_000n, 6_000n, 0n]);
    const [after] = await ledger.client.lookupAccounts([m.accountId]);
    assert.deepEqual([after!.creditsPosted, after!.debitsPosted], [10_000n, 10_000n], 'the account is at zero, not below it');
    assert.equal((await ledger.client.lookupTransfers([batch!.payoutTransferId]))[0]?.amount, 6_000n);

    // The 4,000 not paid is carried: the next batch, once the account holds it again, pays it.
    await m.fund(4_000n);
    const [next] = await settler.closeEnded(cut + 86_400_000_000_000n + 1n).then((b) => b.filter((x) => x.accountId === m.accountId));
    assert.deepEqual([next!.carriedIn, next!.payout, next!.carriedOut], [4_000n, 4_000n, 0n]);
    assert.deepEqual((await store.carriedInto(pool, next!)).carried, 4_000n, 'the carried chain holds the part not paid');
    // Submitted again (a payout left unconfirmed), the shortened payout is recorded once, not carried twice.
    await pool.query(`UPDATE settlement_batches SET status = 'payout_pending', payout_short = 0, updated_at = now() - interval '1 hour' WHERE id = $1`, [batch!.id]);
    // Meanwhile reconciliation takes the short payout in the ledger for what it is, not a mismatch with the decided one.
    const pending = await reconcileBatch(pool, ledger.client, (await store.findBatch(pool, batch!.id))!);
    assert.deepEqual(pending.discrepancies.filter((d) => d.kind.startsWith('payout')), []);
    const carried = async () => (await pool.query('SELECT carried FROM settlement_accounts WHERE account_id = $1', [m.accountId])).rows[0].carried as bigint;
    const before = await carried();
    await settler.resumePayouts();
    const again = (await store.findBatch(pool, batch!.id))!;
    assert.deepEqual([again.status, again.payoutShort], ['paid', 4_000n]);
    assert.equal(await carried(), before + 4_000n, 'the part not moved is carried when the payout is recorded');
  });

  it('a payout left unconfirmed (crash between batch and payout) is submitted again, and posts once', async () => {
    const m = await merchantWithAccount(10_000n);
    await consume(event('payment.captured', m, 10_000n, 0n, ns('2026-03-02T10:00:00Z')));
    const [batch] = await settler.closeEnded(ns('2026-03-03T10:00:00Z')).then((b) => b.filter((x) => x.accountId === m.accountId));
    assert.equal(batch!.status, 'paid');
    // As if the process had died after posting, before recording it: the batch is still payout_pending.
    await pool.query(`UPDATE settlement_batches SET status = 'payout_pending', updated_at = now() - interval '1 hour' WHERE id = $1`, [batch!.id]);
    assert.ok((await settler.resumePayouts()) >= 1);
    assert.equal((await store.findBatch(pool, batch!.id))!.status, 'paid');
    const [account] = await ledger.client.lookupAccounts([m.accountId]);
    assert.equal(account!.debitsPosted, 10_000n, 'the payout posted once');
    assert.deepEqual(await batchesOf(m.accountId), [batch!.id]);
  });

  it('an account that cannot be closed (not in the ledger) does not stop the closer from settling every other account', async () => {
    const m = await merchantWithAccount(10_000n);
    const at = ns('2026-05-04T10:00:00Z');
    // An event that named a destination account the ledger does not hold: that account can never be closed.
    // Its id sorts before every other account, and the closer walks the accounts in id order.
    const stuck = { merchantId: m.merchantId, accountId: '00000000-0000-4000-8000-000000000000' };
    await consume(event('payment.captured', stuck, 1_000n, 0n, at));
    await consume(event('payment.captured', m, 10_000n, 0n, at));
    try {
      const made = await settler.closeEnded(ns('2026-05-05T16:00:00Z')).then((b) => b.filter((x) => x.accountId === m.accountId));
      assert.deepEqual(made.map((b) => [b.net, b.payout, b.status]), [[10_000n, 10_000n, 'paid']]);
      const stuckState = await pool.query('SELECT closed_through FROM settlement_accounts WHERE account_id = $1', [stuck.accountId]);
      assert.ok(stuckState.rows[0].closed_through < ns('2026-05-04T16:00:00Z'), 'the failing account stays open, to be closed once it can be');
      // The ledger down is no fault of one account's: the run stops, to be retried, rather than try every account.
      const unavailable = Object.assign(new Error('14 UNAVAILABLE: ledger down (simulated)'), { code: status.UNAVAILABLE, details: 'ledger down', metadata: new Metadata() });
      const down = { ...ledger.client, lookupAccounts: () => Promise.reject(unavailable), lookupTransfers: () => Promise.reject(unavailable) } as unknown as SettlementLedger;
      const closer = new Settler(pool, down, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 60 }), resumePayoutsAfterMs: 1_000 }, createLogger('settlement-test', 'silent'));
      await assert.rejects(closer.closeEnded(ns('2026-05-06T16:00:00Z')), /UNAVAILABLE/);
    } finally {
      await pool.query('DELETE FROM settlement_entries WHERE account_id = $1', [stuck.accountId]);
      await pool.query('DELETE FROM settlement_accounts WHERE account_id = $1', [stuck.accountId]);
    }
  });

  it('an event that cannot be settled fails (to be dead-lettered) and writes nothing', async () => {
    const m = await merchantWithAccount(0n);
    const bad = event('payment.captured', m, 1_000n, 2_000n, ns('2026-04-01T00:00:00Z'));
    await assert.rejects(consume(bad), /operation_fee 2000 outside 0..1000/);
    const other = event('payment.captured', { merchantId: randomUUID(), accountId: m.accountId }, 1_000n, 0n, ns('2026-04-01T00:00:00Z'));
    await consume(event('payment.captured', m, 500n, 0n, ns('2026-04-01T00:00:00Z')));
    await assert.rejects(consume(other), /is settled for/);
    const rows = await pool.query('SELECT count(*)::int AS n FROM settlement_entries WHERE account_id = $1', [m.accountId]);
    assert.equal(rows.rows[0].n, 1);
  });
});
