import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import type { Pool } from '../lib/db.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { migratedScratchDatabase, testConfig, testPool } from '../test/support.js';
import { transferCodeName } from './convert.js';
import { shardOf } from './router.js';

const SHARDS = 8; // startTestLedger's LEDGER_SHARDS

/**
 * README "History": batches that record history for an account lock and advance its row in
 * account_history_clocks and take a timestamp above it, so that its balance rows follow commit order across
 * shards whose clocks differ. Here shards 0 and 2 run a minute ahead of shards 1 and 3 (what a previous owner
 * with a fast clock leaves behind): a history account changed on shard 0 and then on shard 1 must still get
 * increasing timestamps, also when it was created in the same batch as its first transfer (no clock row existed
 * before that batch).
 */
describe('history of an account changed on shards whose clocks differ', function () {
  this.timeout(60_000);
  let ledger: TestLedger;
  let pool: Pool;

  before(async () => {
    // A database of its own: shard clocks pushed a minute ahead would delay the expiry of later tests' pendings.
    const databaseUrl = await migratedScratchDatabase('ledgerline_history_clock_test');
    pool = testPool(testConfig({ DATABASE_URL: databaseUrl }));
    // A batch window, so that an account and a transfer sent at once reach one batch.
    ledger = await startTestLedger({ DATABASE_URL: databaseUrl, LEDGER_BATCH_WINDOW_MS: '200' });
    await pool.query('UPDATE ledger_shards SET last_timestamp = $1 WHERE shard IN (0, 2)', [BigInt(Date.now() + 60_000) * 1_000_000n]);
  });
  after(async () => {
    await ledger?.close();
    await pool?.end();
  });

  function idOnShard(shard: number): string {
    for (;;) {
      const candidate = randomUUID();
      if (shardOf(candidate, SHARDS) === shard) return candidate;
    }
  }

  for (const sameBatch of [false, true]) {
    it(`rows follow commit order when the account was created ${sameBatch ? 'in the same batch as' : 'before'} its first transfer`, async () => {
      // A shard whose clock is ahead first, then one at wall time; each case on its own pair of shards.
      const [ahead, behind] = sameBatch ? [0, 1] : [2, 3];
      const other0 = account({ id: idOnShard(ahead) });
      const other1 = account({ id: idOnShard(behind) });
      assert.deepEqual((await ledger.client.createAccounts([other0, other1])).map((r) => r.code), [1, 1]);
      const h = account({ id: idOnShard(ahead), flags: { history: true } });
      const t1 = transfer({ debitAccountId: h.id, creditAccountId: other0.id, amount: 10n });
      if (sameBatch) {
        // Both reach the batcher of h's shard within its window: one batch creates h and debits it.
        const [created, sent] = await Promise.all([ledger.client.createAccounts([h]), ledger.client.createTransfers([t1])]);
        assert.deepEqual([created[0]!.code, transferCodeName(sent[0]!.code)], [1, 'ok']);
        assert.equal(created[0]!.timestamp + 1n, sent[0]!.timestamp, 'the account and the transfer ran in one batch');
      } else {
        assert.deepEqual((await ledger.client.createAccounts([h])).map((r) => r.code), [1]);
        assert.deepEqual((await ledger.client.createTransfers([t1])).map((r) => transferCodeName(r.code)), ['ok']);
      }
      // Then, on the shard whose clock is behind (debit account other1), credit h.
      const t2 = transfer({ debitAccountId: other1.id, creditAccountId: h.id, amount: 5n });
      assert.deepEqual((await ledger.client.createTransfers([t2])).map((r) => transferCodeName(r.code)), ['ok']);

      const [r1, r2] = await ledger.client.lookupTransfers([t1.id, t2.id]);
      assert.ok(r2!.timestamp > r1!.timestamp, `t2 committed after t1 but its timestamp ${r2!.timestamp} is below t1's ${r1!.timestamp}`);
      const history = await ledger.client.getAccountBalances({ accountId: h.id });
      assert.deepEqual(
        history.balances.map((b) => [b.transferId, b.debitsPosted, b.creditsPosted]),
        [
          [t1.id, 10n, 0n],
          [t2.id, 10n, 5n],
        ],
      );
      // The balance as of t1's timestamp is t1's row, not one that already includes t2.
      assert.equal((await ledger.client.getAccountBalanceAt(h.id, r1!.timestamp))?.transferId, t1.id);
    });
  }
});
