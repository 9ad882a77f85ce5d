import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'mocha';
import { derivedId } from '../../lib/derived-id.js';
import { createLogger } from '../../lib/logger.js';
import { account, ledgerForSuite, transfer } from '../../test/ledger-harness.js';
import { PaymentFlows, routerLedger, type PaymentLedger } from './flows.js';
import { TransferCode } from './model.js';
import * as store from './store.js';

const USD = 840;


/**
 * Two drivers of one refund step (the caller and the resumer, which found it processing): the ledger refused the
 * caller's transfer (the destination was drained) and the caller recorded the refusal; then the money came back
 * and the resumer, with the step as it read it before, submits the same transfer. The refusal spent the
 * transfer's id in the ledger, so the resumer is refused too: the payment records what the ledger holds, never a
 * refund transfer in the books that the payment does not show.
 */
describe('payment steps: a second driver of a refused refund', function () {
  this.timeout(60_000);
  const suite = ledgerForSuite();

  it('the refusal recorded, then the money back: the resumer posts nothing; books and payment agree', async () => {
    const { ledger, pool } = suite;
    const merchant = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 0)', [merchant, 'm']);
    const w = account({ ledger: USD, flags: { debitsMustNotExceedCredits: true } });
    const funding = account({ ledger: USD });
    const dest = account({ ledger: USD, flags: { debitsMustNotExceedCredits: true } });
    const sink = account({ ledger: USD });
    assert.deepEqual((await ledger.client.createAccounts([w, funding, dest, sink])).map((r) => r.code), [1, 1, 1, 1]);
    for (const a of [w, funding, dest, sink]) await pool.query(`INSERT INTO merchant_accounts (account_id, merchant_id, currency, purpose) VALUES ($1, $2, 'USD', 'custom')`, [a.id, merchant]);
    assert.equal((await ledger.client.createTransfers([transfer({ ledger: USD, debitAccountId: funding.id, creditAccountId: w.id, amount: 1_000n })]))[0]?.code, 1);

    const real = routerLedger(ledger.app.router);
    const logger = createLogger('payments-test', 'silent');
    const settings = { shardCount: 8, authorizationTimeoutSeconds: 3600, riskDeadlineMs: 2000, riskFailOpenBelowAmount: 0n };
    const approve = { score: async () => ({ scorePpm: 0, decision: 1, reasons: [], modelVersion: 'approve' }) };
    // The caller's ledger holds the refund's answer until `release`: the step stays processing meanwhile.
    let answered!: () => void;
    const hasAnswer = new Promise<void>((r) => (answered = r));
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const slow: PaymentLedger = {
      createAccounts: (a) => real.createAccounts(a),
      createTransfers: async (t) => {
        const results = await real.createTransfers(t);
        if (t[0]?.code === TransferCode.refund) {
          answered();
          await gate;
        }
        return results;
      },
    };
    const caller = new PaymentFlows(pool, slow, approve, settings, logger);
    const resumer = new PaymentFlows(pool, real, approve, settings, logger);

    const payment = await caller.createPayment({
      merchantId: merchant, idempotencyKey: `p-${randomUUID()}`, amount: 500n, currency: 'USD', source: { kind: 'account', accountId: w.id },
      destinationAccountId: dest.id, captureMethod: 'automatic', metadata: {}, deviceId: '', ipCountry: '', customerId: '',
    });
    assert.equal(payment.status, 'succeeded');
    // The merchant moved the money out of the destination: a refund is refused exceeds_credits.
    assert.equal((await ledger.client.createTransfers([transfer({ ledger: USD, debitAccountId: dest.id, creditAccountId: sink.id, amount: 500n })]))[0]?.code, 1);

    const key = `r-${randomUUID()}`;
    const r = caller.refund(merchant, payment.id, 500n, key, {}).then(() => 'ok', (e: Error) => e.message);
    await hasAnswer;
    const opId = derivedId(`refund:${merchant}`, key);
    const stale = await store.findOperation(pool, opId);
    assert.equal(stale?.status, 'processing', 'the resumer reads the step while the caller still drives it');
    release();
    assert.equal(await r, 'the ledger refused the refund: exceeds_credits');
    assert.equal((await store.findOperation(pool, opId))?.status, 'failed');
    // The money comes back; the resumer drives the step as it read it.
    assert.equal((await ledger.client.createTransfers([transfer({ ledger: USD, debitAccountId: sink.id, creditAccountId: dest.id, amount: 500n })]))[0]?.code, 1);
    const s = await resumer.resume(stale!).then(() => 'ok', (e: Error) => e.message);
    assert.match(s, /exceeds_credits/, 'the resumer answers the refusal that spent the id');

    const [d] = await ledger.client.lookupAccounts([dest.id]);
    const refundedInLedger = d!.debitsPosted - 500n; // the drain took 500
    const recorded = await store.findOperation(pool, opId);
    const p = await caller.getPayment(merchant, payment.id);
    assert.deepEqual([refundedInLedger, recorded?.status, p.amountRefunded], [0n, 'failed', 0n], 'the refusal is what both the books and the payment say');
    // The refused refund released its reservation: the same amount can be refunded with another key.
    await caller.refund(merchant, payment.id, 500n, `r-${randomUUID()}`, {});
    assert.equal((await caller.getPayment(merchant, payment.id)).amountRefunded, 500n);
    const [after] = await ledger.client.lookupAccounts([dest.id]);
    assert.equal(after!.debitsPosted, 1_000n, 'the drain and one refund, no more');
  });
});
