import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { before, describe, it } from 'mocha';
import { withTransaction } from '../lib/db.js';
import { createLogger } from '../lib/logger.js';
import { TransferCode, nowNanos } from '../ledger/payments/model.js';
import type { EventEnvelope } from '../proto/gen/events/v1/events.js';
import { CreateTransferResultCode } from '../proto/gen/ledger/v1/ledger.js';
import { account, ledgerForSuite, transfer } from '../test/ledger-harness.js';
import { reconcileBatch } from './reconcile.js';
import { Settler, type SettlementLedger } from './settler.js';
import * as store from './store.js';
import { parseSchedule, windowContaining } from './windows.js';

const EUR = 978;
const MINUTE = 60_000_000_000n;

/**
 * Reconciliation of windows no batch covers: the closer makes no batch for a window without entries, so a
 * ledger movement whose event was never consumed can sit in a skipped window (or before the first one). The
 * ledger stamps transfers with the real time; the events' times and the closer's `now` place the windows
 * around it (one-minute windows), so no test waits for a minute to pass.
 */
describe('settlement reconciliation over windows with no batch (real PostgreSQL and ledger)', function () {
  this.timeout(60_000);
  const suite = ledgerForSuite();
  let settler: Settler;

  before(() => {
    settler = new Settler(suite.pool, suite.ledger.client, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 1 }), resumePayoutsAfterMs: 1_000 }, createLogger('settlement-test', 'error'));
  });

  /** A merchant settled every minute, its EUR balance account and a customer account, in the ledger. */
  async function merchantWithAccount(): Promise<{ merchantId: string; accountId: string; customerId: string }> {
    const merchantId = randomUUID();
    await suite.pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `reconciled ${merchantId.slice(0, 8)}`]);
    await store.saveProfile(suite.pool, merchantId, { schedule: parseSchedule({ kind: 'interval', intervalMinutes: 1 }), payout: null });
    const balance = account({ ledger: EUR });
    const customer = account({ ledger: EUR });
    assert.deepEqual((await suite.ledger.client.createAccounts([balance, customer])).map((r) => r.code), [1, 1]);
    return { merchantId, accountId: balance.id, customerId: customer.id };
  }

  /** A capture posted in the ledger now, and its payment.captured event (occurred at `occurredAt`) consumed. */
  async function captured(m: { merchantId: string; accountId: string; customerId: string }, amount: bigint, occurredAt: bigint, by = settler, fields: Parameters<typeof transfer>[0] = {}): Promise<EventEnvelope> {
    const t = transfer({ ledger: EUR, debitAccountId: m.customerId, creditAccountId: m.accountId, amount, code: TransferCode.payment, ...fields });
    assert.equal((await suite.ledger.client.createTransfers([t]))[0]?.code, 1);
    const e: EventEnvelope = {
      eventId: randomUUID(), type: 'payment.captured', aggregateId: randomUUID(), sequence: 1n, occurredAt, traceparent: '',
      payload: { $case: 'payment', value: {
        paymentId: randomUUID(), merchantId: m.merchantId, currency: 'EUR', amount, amountCaptured: amount, amountRefunded: 0n, fee: 0n, status: 'succeeded',
        operationId: t.id, operationAmount: amount, operationFee: 0n, declineCode: '', sourceAccountId: m.customerId, destinationAccountId: m.accountId,
        customerId: '', riskScorePpm: 0, riskModelVersion: '', cardFingerprint: '', cardCountry: '', cardType: '', deviceId: '', ipCountry: '',
        merchantCategory: '', createdAt: occurredAt, feeTransferId: '', sourceType: 'card',
      } },
    };
    await withTransaction(suite.pool, (tx) => by.handle(e, tx));
    return e;
  }

  /** The end of the one-minute window containing `at`: the cut that closes it. */
  const cutAfter = (at: bigint) => windowContaining({ kind: 'interval', minutes: 1 }, at).end;

  /** A refund of the merchant's money posted in the ledger now, whose payment.refunded event is never consumed. */
  async function lostRefund(m: { accountId: string; customerId: string }, amount: bigint): Promise<{ id: string; timestamp: bigint }> {
    const t = transfer({ ledger: EUR, debitAccountId: m.accountId, creditAccountId: m.customerId, amount, code: TransferCode.refund });
    assert.equal((await suite.ledger.client.createTransfers([t]))[0]?.code, 1);
    const [posted] = await suite.ledger.client.lookupTransfers([t.id]);
    return { id: t.id, timestamp: posted!.timestamp };
  }

  async function reconciled(accountId: string, batches: store.Batch[]): Promise<[string, string, bigint][][]> {
    const mine = batches.filter((b) => b.accountId === accountId).sort((a, b) => (a.windowEnd < b.windowEnd ? -1 : 1));
    const found: [string, string, bigint][][] = [];
    for (const b of mine) found.push((await reconcileBatch(suite.pool, suite.ledger.client, b)).discrepancies.map((d) => [d.kind, d.ids.join(','), d.expected]));
    return found;
  }

  it('a ledger refund in a window the closer skipped (its event never consumed) is reported by the next batch, once', async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    await captured(m, 1_000n, now - 3n * MINUTE); // window A, three minutes ago
    const refund = await lostRefund(m, 400n); // now: the windows between A and C have no entries
    await captured(m, 500n, now + 3n * MINUTE); // window C, three minutes ahead

    const made = (await settler.closeEnded(now + 5n * MINUTE)).filter((b) => b.accountId === m.accountId);
    assert.equal(made.length, 2, 'a batch for A and one for C; the windows between were skipped');
    const [a, c] = made.sort((x, y) => (x.windowEnd < y.windowEnd ? -1 : 1));
    assert.ok(a!.windowEnd <= refund.timestamp && refund.timestamp < c!.windowStart, 'the refund is in no batch window');
    // The payouts exceed what the merchant kept (1,500 captured, 400 refunded): the refund must be reported.
    assert.deepEqual([a!.payout, c!.payout], [1_000n, 100n]);

    assert.deepEqual(await reconciled(m.accountId, made), [[], [['unsettled_ledger_transfer', refund.id, -400n]]]);
  });

  it('a second event for a capture already settled (arriving after its batch) is reported as duplicate_event, once', async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    const original = await captured(m, 1_000n, now - 5n * MINUTE);
    const [first] = (await settler.closeEnded(now - 3n * MINUTE)).filter((b) => b.accountId === m.accountId);
    assert.equal(first!.grossCaptured, 1_000n);
    // The payments service reports the same capture again, under another event id: the inbox does not know it,
    // the entry (keyed by the transfer) is kept once, and the journal has both events, the second one later.
    const again: EventEnvelope = { ...original, eventId: randomUUID(), occurredAt: now - 2n * MINUTE };
    await withTransaction(suite.pool, (tx) => settler.handle(again, tx));
    await captured(m, 500n, now + 2n * MINUTE);
    const later = (await settler.closeEnded(now + 4n * MINUTE)).filter((b) => b.accountId === m.accountId);
    assert.deepEqual(later.map((b) => b.grossCaptured), [500n], 'the capture was settled once');

    const found = (await reconciled(m.accountId, [first!, ...later])).flat();
    const operationId = (original.payload as { value: { operationId: string } }).value.operationId;
    assert.deepEqual(found, [['duplicate_event', `${operationId},${original.eventId},${again.eventId}`, 0n]]);
  });

  it('a ledger refund before the first window of the account is reported by its first batch', async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    // A capture whose event was lost, then a refund of it whose event was lost too, then a consumed capture.
    const t = transfer({ ledger: EUR, debitAccountId: m.customerId, creditAccountId: m.accountId, amount: 700n, code: TransferCode.payment });
    assert.equal((await suite.ledger.client.createTransfers([t]))[0]?.code, 1);
    const refund = await lostRefund(m, 300n);
    await captured(m, 500n, now + 2n * MINUTE);

    const made = (await settler.closeEnded(now + 4n * MINUTE)).filter((b) => b.accountId === m.accountId);
    assert.equal(made.length, 1);
    assert.ok(refund.timestamp < made[0]!.windowStart, 'the refund is before the first window');
    assert.deepEqual(await reconciled(m.accountId, made), [[['unsettled_ledger_transfer', t.id, 700n], ['unsettled_ledger_transfer', refund.id, -300n]]]);
  });

  it('an account with many transfers carrying full metadata is reconciled (each page of its transfers fits in a gRPC message)', async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    // The merchant's own transfers on the account, with the most metadata the ledger accepts (about 28 KB each):
    // 1,300 of them are about 36 MB, more than one message may carry (32 MB).
    const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`${i}`.padEnd(64, '€'), '€'.repeat(512)]));
    const own = Array.from({ length: 1_300 }, () => transfer({ ledger: EUR, debitAccountId: m.customerId, creditAccountId: m.accountId, amount: 1n, metadata }));
    for (let i = 0; i < own.length; i += 100) {
      assert.ok((await suite.ledger.client.createTransfers(own.slice(i, i + 100))).every((r) => r.code === 1));
    }
    await captured(m, 500n, now + 2n * MINUTE);

    const made = (await settler.closeEnded(now + 4n * MINUTE)).filter((b) => b.accountId === m.accountId);
    assert.equal(made.length, 1);
    const { discrepancies, ledgerTransfersChecked } = await reconcileBatch(suite.pool, suite.ledger.client, made[0]!);
    assert.equal(ledgerTransfersChecked, 1_302, 'the 1,300 transfers, the capture and the payout');
    // The merchant's own transfers (not payment-coded) are read, and are not settlement's to account for.
    assert.deepEqual(discrepancies, []);
  });

  it("a batch whose carried_in is not what the account's previous batch carried out is reported (carried_chain_break)", async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    await captured(m, 1_000n, now - 3n * MINUTE);
    const { batch: a } = await settler.closeAccount(m.accountId, cutAfter(now - 3n * MINUTE));
    assert.deepEqual([a!.payout, a!.carriedOut], [1_000n, 0n]);
    // Between the batches, 250 appears in what the account carries (a hand-made "correction", a bug): the next
    // batch takes it in as owed to the merchant, and pays it out of the merchant's other money.
    await suite.pool.query('UPDATE settlement_accounts SET carried = carried + 250 WHERE account_id = $1', [m.accountId]);
    await captured(m, 500n, now + 2n * MINUTE);
    const { batch: b } = await settler.closeAccount(m.accountId, cutAfter(now + 2n * MINUTE));
    assert.equal(b!.carriedIn, 250n);

    assert.deepEqual(await reconciled(m.accountId, [a!, b!]), [[], [['carried_chain_break', `${b!.id},${a!.id}`, 0n]]]);
    const [found] = (await reconcileBatch(suite.pool, suite.ledger.client, b!)).discrepancies;
    assert.deepEqual([found!.expected, found!.actual], [0n, 250n]);
  });

  it('a refused payout carried into the next batch keeps the chain of carried amounts (no discrepancy)', async () => {
    const m = await merchantWithAccount();
    const { client } = suite.ledger;
    // The ledger refuses this account's first payout: its amount is carried into the next batch.
    let refuse = true;
    const refusing = {
      createAccounts: (x) => client.createAccounts(x),
      lookupAccounts: (x) => client.lookupAccounts(x),
      lookupTransfers: (x) => client.lookupTransfers(x),
      getAccountTransfers: (x) => client.getAccountTransfers(x),
      createTransfers: (t) => {
        if (!refuse || !t.some((x) => x.code === TransferCode.payout && x.debitAccountId === m.accountId)) return client.createTransfers(t);
        refuse = false;
        return Promise.resolve(t.map((_, index) => ({ index, code: CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_ACCOUNT_CLOSED, timestamp: 0n })));
      },
    } as SettlementLedger;
    const refusingSettler = new Settler(suite.pool, refusing, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 1 }), resumePayoutsAfterMs: 1_000 }, createLogger('settlement-test', 'silent'));
    const now = nowNanos();
    await captured(m, 1_000n, now - 3n * MINUTE, refusingSettler);
    const { batch: a } = await refusingSettler.closeAccount(m.accountId, cutAfter(now - 3n * MINUTE));
    assert.equal(a!.status, 'payout_failed');
    await captured(m, 500n, now + 2n * MINUTE, refusingSettler);
    const { batch: b } = await refusingSettler.closeAccount(m.accountId, cutAfter(now + 2n * MINUTE));
    assert.deepEqual([b!.carriedIn, b!.payout, b!.status], [1_000n, 1_500n, 'paid']);

    assert.deepEqual(await reconciled(m.accountId, [(await store.findBatch(suite.pool, a!.id))!, b!]), [[], []]);
  });

  it("an entry effective in a closed batch's range that is not a line of that batch is reported (detached_entry), by that batch only", async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    const inA = now - 3n * MINUTE;
    await captured(m, 1_000n, inA);
    const { batch: a } = await settler.closeAccount(m.accountId, cutAfter(inA));
    // A capture recorded after A was made, yet effective in A's window (as a consumer that read closed_through
    // before the close, outside its transaction, would record it): A paid out without it.
    const late = await captured(m, 700n, now + 2n * MINUTE);
    const lateTransfer = (late.payload as { value: { operationId: string } }).value.operationId;
    await suite.pool.query('UPDATE settlement_entries SET effective_at = $2 WHERE transfer_id = $1', [lateTransfer, inA + 1n]);
    await suite.pool.query('UPDATE settlement_events SET effective_at = $2 WHERE event_id = $1', [late.eventId, inA + 1n]);
    assert.deepEqual(await reconciled(m.accountId, [a!]), [[['detached_entry', `${lateTransfer},${late.eventId}`, 700n]]], 'in no batch');

    // The next close takes it (late): A still reports it, now in B; B's own range is clean.
    const { batch: b } = await settler.closeAccount(m.accountId, cutAfter(now + 2n * MINUTE));
    assert.equal(b!.grossCaptured, 700n);
    assert.deepEqual(await reconciled(m.accountId, [a!, b!]), [[['detached_entry', `${lateTransfer},${late.eventId},${b!.id}`, 700n]], []]);
  });

  it("a line whose ledger transfer is pending or voided (not a posted movement) is reported (transfer_not_posted)", async () => {
    const m = await merchantWithAccount();
    const now = nowNanos();
    await captured(m, 1_000n, now - 3n * MINUTE);
    // Captures reported on reservations: one still pending, one voided since. Neither moved the merchant's money.
    const held = await captured(m, 300n, now - 3n * MINUTE, settler, { flags: { pending: true } });
    const voided = await captured(m, 200n, now - 3n * MINUTE, settler, { flags: { pending: true } });
    const idOf = (e: EventEnvelope) => (e.payload as { value: { operationId: string } }).value.operationId;
    const paymentOf = (e: EventEnvelope) => (e.payload as { value: { paymentId: string } }).value.paymentId;
    const release = transfer({ ledger: EUR, debitAccountId: m.customerId, creditAccountId: m.accountId, amount: 0n, code: TransferCode.payment, pendingId: idOf(voided), flags: { voidPendingTransfer: true } });
    assert.equal((await suite.ledger.client.createTransfers([release]))[0]?.code, 1);
    const { batch } = await settler.closeAccount(m.accountId, cutAfter(now - 3n * MINUTE));
    assert.deepEqual([batch!.grossCaptured, batch!.payout], [1_500n, 1_000n]);

    const found = (await reconcileBatch(suite.pool, suite.ledger.client, batch!)).discrepancies.map((d) => [d.kind, d.ids.join(','), d.expected, d.actual]);
    assert.deepEqual(found.sort(), [
      ['transfer_not_posted', `${idOf(held)},${paymentOf(held)},${held.eventId}`, 300n, 0n],
      ['transfer_not_posted', `${idOf(voided)},${paymentOf(voided)},${voided.eventId}`, 200n, 0n],
    ].sort());
  });
});
