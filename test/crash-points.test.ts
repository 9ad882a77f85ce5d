import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'mocha';
import { sendUntilSettled } from './chaos/client.js';
import { newMerchant, setUp } from './chaos/setup.js';
import { ChaosStack } from './chaos/stack.js';

/**
 * DESIGN.md "Failure behaviour" at the point the random kills of the chaos suite reach only by luck: the gateway
 * killed after the ledger committed a payment and before the merchant got the answer. The ledger's batch is held
 * at its shard lock by the test, the gateway is killed with SIGKILL while it waits, the lock is let go so the
 * ledger commits with nobody to answer, and the merchant's retry with the same Idempotency-Key must find that
 * payment, not make a second one.
 */
describe('crash points: the gateway killed between the ledger commit and its answer', function () {
  this.timeout(60_000);
  let stack: ChaosStack;
  before(async () => {
    stack = await ChaosStack.start();
  });
  after(async () => {
    await stack?.close();
  });

  it('a payment retried with the same Idempotency-Key after its gateway died is the one payment, debited once', async () => {
    const merchant = await newMerchant(stack, 'crash-point');
    const account = async (flags: string[]) => (await setUp(stack, merchant.key, '/v1/accounts', { id: randomUUID(), currency: 'USD', flags })).id as string;
    const funding = await account([]);
    const customer = await account(['debits_must_not_exceed_credits']);
    await setUp(stack, merchant.key, '/v1/transfers', { id: randomUUID(), debit_account_id: funding, credit_account_id: customer, amount: 10_000, currency: 'USD' });

    const idempotencyKey = randomUUID();
    const body = { amount: 3_000, currency: 'USD', source: { account: customer }, capture_method: 'automatic' };
    const holder = await stack.pool.connect();
    try {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM ledger_shards FOR UPDATE');
      const first = fetch(`${stack.gatewayUrl}/v1/payments`, {
        method: 'POST',
        headers: { authorization: `Bearer ${merchant.key}`, 'content-type': 'application/json', 'idempotency-key': idempotencyKey },
        body: JSON.stringify(body),
      }).catch(() => undefined);
      // The payment's ledger batch waits for the shard the test holds: the request is inside the ledger.
      const deadline = Date.now() + 15_000;
      for (;;) {
        const waiting = await stack.pool.query(`SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE '%ledger_shards%'`);
        if (waiting.rows.length > 0) break;
        if (Date.now() > deadline) throw new Error('the payment never reached the ledger batch');
        await new Promise((r) => setTimeout(r, 50));
      }
      const restarted = stack.killAndRestart('gateway', 0);
      assert.equal(await first, undefined, 'the killed gateway answered');
      await holder.query('ROLLBACK');
      await restarted;
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
    }
    // The ledger goes on without the gateway: the payment is committed (its resumer finishes any step left).
    const committedBy = Date.now() + 20_000;
    while ((await stack.pool.query(`SELECT 1 FROM payments WHERE idempotency_key = $1 AND status = 'succeeded'`, [idempotencyKey])).rows.length === 0) {
      if (Date.now() > committedBy) throw new Error('the payment was not committed without its gateway');
      await new Promise((r) => setTimeout(r, 100));
    }
    // The dead gateway's key is still in flight; its lock goes stale after a minute (IdempotencyStore's lockTimeoutMs): passed here.
    await stack.pool.query(`UPDATE idempotency_keys SET locked_at = now() - interval '5 minutes' WHERE key = $1 AND state = 'in_flight'`, [idempotencyKey]);

    const retry = await sendUntilSettled(stack.gatewayUrl, merchant.key, '/v1/payments', { body, idempotencyKey, giveUpAt: Date.now() + 20_000 });
    assert.equal(retry?.status, 201, JSON.stringify(retry?.body));
    const payments = await stack.pool.query('SELECT id, status, amount_captured FROM payments WHERE merchant_id = $1 AND idempotency_key = $2', [merchant.id, idempotencyKey]);
    assert.equal(payments.rows.length, 1);
    assert.equal(retry.body.id, payments.rows[0].id);
    assert.equal(retry.body.status, 'succeeded');
    const customerBalance = await stack.pool.query('SELECT debits_posted, debits_pending FROM account_balances_current WHERE id = $1', [customer]);
    assert.deepEqual([customerBalance.rows[0].debits_posted, customerBalance.rows[0].debits_pending], [3_000n, 0n], 'the customer was debited other than once');
  });
});
