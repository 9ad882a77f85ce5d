import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'mocha';
import type { PoolClient } from 'pg';
import { sleep } from '../lib/retry.js';
import { sendUntilSettled } from './chaos/client.js';
import { newMerchant, setUp } from './chaos/setup.js';
import { ChaosStack } from './chaos/stack.js';
import { untilWaitingOnLock } from './support.js';

/**
 * DESIGN.md "Failure behaviour" at the points the random kills of the chaos suite reach only by luck: a process
 * killed after the ledger committed a payment and before that was answered or recorded. The test holds a row
 * lock where the request must pass, sees the request waiting there, kills the process with SIGKILL, and checks
 * what the merchant's retry with the same Idempotency-Key gets and what the books kept.
 */
describe('crash points: processes killed between the ledger commit and the answer', function () {
  this.timeout(60_000);
  let stack: ChaosStack;
  before(async () => {
    stack = await ChaosStack.start();
  });
  after(async () => {
    await stack?.close();
  });

  async function until<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 15_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = await probe();
      if (found !== undefined) return found;
      if (Date.now() > deadline) throw new Error(`never: ${what}`);
      await sleep(50);
    }
  }

  async function begin(statement: string, values: unknown[] = []): Promise<PoolClient> {
    const holder = await stack.pool.connect();
    await holder.query('BEGIN');
    await holder.query(statement, values);
    return holder;
  }

  async function end(holder: PoolClient): Promise<void> {
    await holder.query('ROLLBACK').catch(() => undefined);
    holder.release();
  }

  /** A merchant and a customer wallet holding 10,000. */
  async function customerOfNewMerchant(): Promise<{ merchant: { id: string; key: string }; customer: string }> {
    const merchant = await newMerchant(stack, 'crash-point');
    const account = async (flags: string[]) => (await setUp(stack, merchant.key, '/v1/accounts', { id: randomUUID(), currency: 'USD', flags })).id as string;
    const funding = await account([]);
    const customer = await account(['debits_must_not_exceed_credits']);
    const other = await account(['debits_must_not_exceed_credits']);
    for (const wallet of [customer, other]) await setUp(stack, merchant.key, '/v1/transfers', { id: randomUUID(), debit_account_id: funding, credit_account_id: wallet, amount: 10_000, currency: 'USD' });
    // A first payment (of another wallet) makes the accounts made on first use (the merchant's balance, the
    // platform's): the payment under test then records its row before its first ledger batch.
    await setUp(stack, merchant.key, '/v1/payments', { amount: 1, currency: 'USD', source: { account: other }, capture_method: 'automatic' });
    return { merchant, customer };
  }

  function postPayment(merchantKey: string, idempotencyKey: string, body: unknown): Promise<number | undefined> {
    return fetch(`${stack.gatewayUrl}/v1/payments`, {
      method: 'POST',
      headers: { authorization: `Bearer ${merchantKey}`, 'content-type': 'application/json', 'idempotency-key': idempotencyKey },
      body: JSON.stringify(body),
    }).then(
      (r) => r.status,
      () => undefined,
    );
  }

  /** The payment of the key, once the ledger process has it (recorded as processing before its ledger batch). */
  async function processingPayment(idempotencyKey: string): Promise<{ id: string; operation: string }> {
    return until('the payment reached the ledger', async () => {
      const r = await stack.pool.query(
        `SELECT p.id, o.id AS operation FROM payments p JOIN payment_operations o ON o.payment_id = p.id AND o.kind = 'authorize'
         WHERE p.idempotency_key = $1 AND p.status = 'processing'`,
        [idempotencyKey],
      );
      return r.rows[0] ? { id: r.rows[0].id as string, operation: r.rows[0].operation as string } : undefined;
    });
  }

  /** The retry of the merchant: 201 with the one payment of the key, succeeded; the customer debited once; settled once. */
  async function retryFindsThePayment(merchantId: string, merchantKey: string, customer: string, idempotencyKey: string, body: unknown): Promise<void> {
    const retry = await sendUntilSettled(stack.gatewayUrl, merchantKey, '/v1/payments', { body, idempotencyKey, giveUpAt: Date.now() + 20_000 });
    assert.equal(retry?.status, 201, JSON.stringify(retry?.body));
    const payments = await stack.pool.query('SELECT id FROM payments WHERE merchant_id = $1 AND idempotency_key = $2', [merchantId, idempotencyKey]);
    assert.equal(payments.rows.length, 1);
    assert.equal(retry.body.id, payments.rows[0].id);
    assert.equal(retry.body.status, 'succeeded');
    const balance = await stack.pool.query('SELECT debits_posted, debits_pending FROM account_balances_current WHERE id = $1', [customer]);
    assert.deepEqual([balance.rows[0].debits_posted, balance.rows[0].debits_pending], [3_000n, 0n], 'the customer was debited other than once');
    // Its events were published and consumed once in effect.
    const consumed = await until('settlement consumed the capture', async () => {
      const r = await stack.pool.query(`SELECT count(*)::int AS n FROM settlement_events WHERE payment_id = $1 AND type = 'payment.captured'`, [retry.body.id]);
      return r.rows[0].n > 0 ? (r.rows[0].n as number) : undefined;
    });
    assert.equal(consumed, 1);
  }

  it('the gateway killed while the ledger commits a payment: the retry with the same Idempotency-Key is that payment, debited once', async () => {
    const { merchant, customer } = await customerOfNewMerchant();
    const idempotencyKey = randomUUID();
    const body = { amount: 3_000, currency: 'USD', source: { account: customer }, capture_method: 'automatic' };
    const shards = await begin('SELECT 1 FROM ledger_shards FOR UPDATE');
    try {
      const first = postPayment(merchant.key, idempotencyKey, body);
      // The ledger process has the payment, and its batch cannot commit yet.
      await processingPayment(idempotencyKey);
      await untilWaitingOnLock(stack.pool, '%ledger_shards%', 'a ledger batch waits for its shard', 15_000);
      const restarted = stack.killAndRestart('gateway', 0);
      assert.equal(await first, undefined, 'the killed gateway answered');
      await shards.query('ROLLBACK');
      await restarted;
    } finally {
      await end(shards);
    }
    // The ledger goes on without the gateway: the payment is committed before the merchant retries.
    await until('the payment committed without its gateway', async () =>
      (await stack.pool.query(`SELECT 1 FROM payments WHERE idempotency_key = $1 AND status = 'succeeded'`, [idempotencyKey])).rows[0],
    );
    // The dead gateway's key is still in flight; its lock goes stale after a minute (IdempotencyStore's lockTimeoutMs): passed here.
    await stack.pool.query(`UPDATE idempotency_keys SET locked_at = now() - interval '5 minutes' WHERE key = $1 AND state = 'in_flight'`, [idempotencyKey]);
    await retryFindsThePayment(merchant.id, merchant.key, customer, idempotencyKey, body);
  });

  it('the ledger killed after its batch committed a payment and before the payment was marked: the retry finishes that payment, debited once', async () => {
    const { merchant, customer } = await customerOfNewMerchant();
    const idempotencyKey = randomUUID();
    const body = { amount: 3_000, currency: 'USD', source: { account: customer }, capture_method: 'automatic' };
    const shards = await begin('SELECT 1 FROM ledger_shards FOR UPDATE');
    let step: PoolClient | undefined;
    try {
      const first = postPayment(merchant.key, idempotencyKey, body);
      const payment = await processingPayment(idempotencyKey);
      // The step's row is held: once the ledger batch commits, marking the payment waits.
      step = await begin('SELECT 1 FROM payment_operations WHERE id = $1 FOR UPDATE', [payment.operation]);
      await shards.query('ROLLBACK');
      const marking = await untilWaitingOnLock(stack.pool, '%payment_operations%', 'the payment waits to be marked', 15_000);
      const debited = await stack.pool.query('SELECT debits_posted FROM account_balances_current WHERE id = $1', [customer]);
      assert.equal(debited.rows[0].debits_posted, 3_000n, 'the ledger batch had not committed: the test missed its point');
      await stack.killAndRestart('ledger', 0);
      // The killed process's statement would still run once the lock goes (PostgreSQL notices the lost client later): end it, as its death would.
      await stack.pool.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid', [marking]);
      await step.query('ROLLBACK');
      assert.notEqual(await first, 201, 'the killed ledger answered');
    } finally {
      if (step) await end(step);
      await end(shards);
    }
    await retryFindsThePayment(merchant.id, merchant.key, customer, idempotencyKey, body);
  });
});
