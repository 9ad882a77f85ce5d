import assert from 'node:assert/strict';
import { after, before, describe, it } from 'mocha';
import type { Pool } from '../lib/db.js';
import { EventBatch } from '../proto/gen/events/v1/events.js';
import { CreateTransferResultCode, PendingState } from '../proto/gen/ledger/v1/ledger.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { testPool } from '../test/support.js';

/**
 * Pending transfers expire exactly once, even with two sweepers on the same shards at once (two ledger
 * instances owning every shard: a misconfiguration, or a hand-over where the old owner is still running).
 * Each instance's expiry goes through its own shard batcher; the batches of one shard serialize on the shard's
 * row in the database, and an expiry batch re-checks that the transfer is still pending.
 */
describe('pending expiry with two sweepers running', function () {
  this.timeout(60_000);
  let first: TestLedger;
  let second: TestLedger;
  let pool: Pool;

  before(async () => {
    pool = testPool();
    first = await startTestLedger({ LEDGER_EXPIRY_SWEEP_MS: '20' });
    second = await startTestLedger({ LEDGER_EXPIRY_SWEEP_MS: '20' });
  });
  after(async () => {
    await first?.close();
    await second?.close();
    await pool?.end();
  });

  it('each of 300 pending transfers expires once: balances released once, one expiry event each', async () => {
    const debits = Array.from({ length: 30 }, () => account());
    const credit = account();
    assert.ok((await first.client.createAccounts([...debits, credit])).every((r) => r.code === 1));
    const pendings = Array.from({ length: 300 }, (_, i) => transfer({ debitAccountId: debits[i % debits.length]!.id, creditAccountId: credit.id, amount: BigInt(1 + i), flags: { pending: true }, timeout: 1 }));
    // Created through both instances, so both sweepers see candidates of every shard.
    const results = await Promise.all([first.client.createTransfers(pendings.slice(0, 150)), second.client.createTransfers(pendings.slice(150))]);
    assert.ok(results.flat().every((r) => r.code === 1));
    const total = pendings.reduce((s, t) => s + t.amount, 0n);
    assert.equal((await first.client.lookupAccounts([credit.id]))[0]!.creditsPending, total);

    const deadline = Date.now() + 20_000;
    for (;;) {
      const states = await first.client.lookupTransfers(pendings.map((t) => t.id));
      if (states.every((t) => t.pendingState === PendingState.PENDING_STATE_EXPIRED)) break;
      assert.ok(Date.now() < deadline, `${states.filter((t) => t.pendingState !== PendingState.PENDING_STATE_EXPIRED).length} not expired yet`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    // Released once: nothing pending, nothing posted, on either side.
    const [c] = await second.client.lookupAccounts([credit.id]);
    assert.deepEqual([c!.creditsPending, c!.creditsPosted, c!.debitsPending, c!.debitsPosted], [0n, 0n, 0n, 0n]);
    for (const d of await first.client.lookupAccounts(debits.map((a) => a.id))) assert.deepEqual([d.debitsPending, d.debitsPosted], [0n, 0n]);
    // One ledger.transfer.expired event per pending transfer in the outbox (the relay is off here).
    const wanted = new Set(pendings.map((t) => t.id));
    const expiries = new Map<string, number>();
    for (const row of (await pool.query('SELECT payload FROM outbox WHERE shard < 10000')).rows) {
      for (const e of EventBatch.decode(row.payload as Buffer).events) {
        if (e.type === 'ledger.transfer.expired' && wanted.has(e.aggregateId)) expiries.set(e.aggregateId, (expiries.get(e.aggregateId) ?? 0) + 1);
      }
    }
    assert.equal(expiries.size, pendings.length, 'every pending transfer has its expiry event');
    assert.deepEqual([...new Set(expiries.values())], [1], 'and only one');
    // Posting an expired transfer is refused with the expiry code.
    const [late] = await second.client.createTransfers([transfer({ pendingId: pendings[0]!.id, flags: { postPendingTransfer: true } })]);
    assert.equal(late?.code, CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_PENDING_TRANSFER_EXPIRED);
  });
});
