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

async function waitFor(condition: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    assert.ok(Date.now() < deadline, 'condition not reached in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Two drivers of one refund step (the caller and the resumer, which found it processing): the ledger refused the
 * caller's transfer (the destination was drained), then the money came back and the resumer could post the same
 * transfer. The step's drivers take turns on its row lock, so whatever each saw, the payment records what the
 * ledger holds: never a refund transfer in the books that the payment does not show.
 */
describe('payment steps: two drivers of one refund take turns', function () {
  this.timeout(60_000);
  const suite = ledgerForSuite();

  it('a refusal recorded while the money came back: the resumer waits for it and posts nothing; books and payment agree', async () => {
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
    /** The real ledger, holding each refund's answer (after telling `answered`) until `release` is called. */
    const slowOnRefunds = (answered: () => void = () => undefined) => {
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
      return { slow, release };
    };
    // Request R: its refund is refused by the ledger, and its process is slow to act on the answer.
    let rRefused!: () => void;
    const rHasAnswer = new Promise<void>((r) => (rRefused = r));
    const { slow: slowR, release: releaseR } = slowOnRefunds(() => rRefused());
    // The resumer, driving the same step once the money is back.
    const { slow: slowS, release: releaseS } = slowOnRefunds();
    const flowsR = new PaymentFlows(pool, slowR, approve, settings, logger);
    const flowsS = new PaymentFlows(pool, slowS, approve, settings, logger);

    const payment = await flowsR.createPayment({
      merchantId: merchant, idempotencyKey: `p-${randomUUID()}`, amount: 500n, currency: 'USD', source: { kind: 'account', accountId: w.id },
      destinationAccountId: dest.id, captureMethod: 'automatic', metadata: {}, deviceId: '', ipCountry: '', customerId: '',
    });
    assert.equal(payment.status, 'succeeded');
    // The merchant moved the money out of the destination: a refund is refused exceeds_credits.
    assert.equal((await ledger.client.createTransfers([transfer({ ledger: USD, debitAccountId: dest.id, creditAccountId: sink.id, amount: 500n })]))[0]?.code, 1);

    const key = `r-${randomUUID()}`;
    const r = flowsR.refund(merchant, payment.id, 500n, key, {}).then(() => 'ok', (e: Error) => e.message);
    await rHasAnswer;
    // The money comes back; the resumer (step looked stale) drives the same processing step.
    assert.equal((await ledger.client.createTransfers([transfer({ ledger: USD, debitAccountId: sink.id, creditAccountId: dest.id, amount: 500n })]))[0]?.code, 1);
    const opId = derivedId(`refund:${merchant}`, key);
    const op = await store.findOperation(pool, opId);
    assert.equal(op?.status, 'processing');
    const s = flowsS.resume(op!).then(() => 'ok', (e: Error) => e.message);
    // The resumer waits for the step's row lock, which R holds until it has recorded its end.
    await waitFor(async () => (await pool.query(`SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%payment_operations%FOR UPDATE%'`)).rowCount === 1);
    releaseR();
    releaseS();
    assert.equal(await r, 'the ledger refused the refund: exceeds_credits');
    assert.match(await s, /exceeds_credits/, 'the resumer answers the recorded refusal');

    const [d] = await ledger.client.lookupAccounts([dest.id]);
    const refundedInLedger = d!.debitsPosted - 500n; // the drain took 500
    const recorded = await store.findOperation(pool, opId);
    const p = await flowsR.getPayment(merchant, payment.id);
    assert.deepEqual([refundedInLedger, recorded?.status, p.amountRefunded], [0n, 'failed', 0n], 'the refusal is what both the books and the payment say');
    // The refused refund released its reservation: the same amount can be refunded with another key.
    await flowsR.refund(merchant, payment.id, 500n, `r-${randomUUID()}`, {});
    assert.equal((await flowsR.getPayment(merchant, payment.id)).amountRefunded, 500n);
  });
});
