import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import type { PoolClient } from 'pg';
import type { Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { testPool } from '../test/support.js';
import type { Pool } from '../lib/db.js';
import { transferCodeName } from './convert.js';
import { shardOf } from './router.js';

const SHARDS = 8;

/**
 * GetAccountTransfers while another shard's batch is still running (ledger/README.md "Timestamps"): a batch is
 * stamped when it starts, so a transfer of a slow batch can commit below one already listed. A reader tailing an
 * account (resuming after the newest transfer it saw) must never step over it.
 */
describe('listing an account\'s transfers while a batch of another shard still runs', function () {
  this.timeout(60_000);
  let pool: Pool;
  before(() => {
    pool = testPool();
  });
  after(async () => {
    await pool.end();
  });

  function idOnShard(shard: number): string {
    for (;;) {
      const candidate = randomUUID();
      if (shardOf(candidate, SHARDS) === shard) return candidate;
    }
  }

  /**
   * The listed account, and two transfers into it from accounts on shards 0 and 1. The first one's batch is held
   * after it has taken its timestamps: a session of the test inserts a row with its id and keeps it uncommitted,
   * so the batch's insert waits on the id's index entry until `release`.
   */
  async function slowAndFast(ledger: TestLedger) {
    const listed = account();
    const slowDebit = account({ id: idOnShard(0) });
    const fastDebit = account({ id: idOnShard(1) });
    assert.deepEqual((await ledger.client.createAccounts([listed, slowDebit, fastDebit])).map((r) => r.code), [1, 1, 1]);
    const slow = transfer({ debitAccountId: slowDebit.id, creditAccountId: listed.id, amount: 1n });
    const fast = transfer({ debitAccountId: fastDebit.id, creditAccountId: listed.id, amount: 2n });
    const holder: PoolClient = await pool.connect();
    await holder.query('BEGIN');
    await holder.query(
      `INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, flags, "timestamp", shard)
       VALUES ($1, $2, $3, 1, 978, 1, 0, 1, 0)`,
      [slow.id, slowDebit.id, listed.id],
    );
    const slowAnswer = ledger.client.createTransfers([slow]);
    await waitForBlockedBatch();
    const [fastResult] = await ledger.client.createTransfers([fast]);
    assert.equal(transferCodeName(fastResult!.code), 'ok');
    const release = async () => {
      await holder.query('ROLLBACK');
      holder.release();
      const [slowResult] = await slowAnswer;
      assert.equal(transferCodeName(slowResult!.code), 'ok');
      // The case in point: stamped first, committed last.
      assert.ok(slowResult!.timestamp < fastResult!.timestamp, `slow ${slowResult!.timestamp} is not below fast ${fastResult!.timestamp}`);
    };
    return { listed, slow, fast, release };
  }

  /** Until a ledger worker's statement waits for a lock (the held id). */
  async function waitForBlockedBatch(): Promise<void> {
    for (let i = 0; i < 500; i++) {
      const r = await pool.query(`SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ledger-worker' AND wait_event_type = 'Lock'`);
      if (r.rows[0].n > 0) return;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    throw new Error('the slow batch never waited for the held id');
  }

  const ids = (transfers: readonly Transfer[]) => transfers.map((t) => t.id);

  it('hides what a batch still running after the wait could precede, so a reader resuming after its last one misses nothing', async () => {
    const ledger = await startTestLedger({ LEDGER_SHARDS: String(SHARDS), LEDGER_LISTING_WAIT_MS: '200' });
    try {
      const { listed, slow, fast, release } = await slowAndFast(ledger);
      // A reader tailing the account reads while the slow batch is held, oldest first and newest first.
      const first = await ledger.client.getAccountTransfers({ accountId: listed.id });
      const newestFirst = await ledger.client.getAccountTransfers({ accountId: listed.id, reversed: true });
      assert.deepEqual(ids(newestFirst.transfers), ids(first.transfers));
      await release();
      // It resumes after the newest transfer it saw (from the start if it saw none).
      const seen = first.transfers.at(-1);
      const next = await ledger.client.getAccountTransfers({ accountId: listed.id, timestampMin: seen ? seen.timestamp + 1n : 0n });
      assert.deepEqual([...ids(first.transfers), ...ids(next.transfers)], [slow.id, fast.id], 'the reader stepped over a transfer');
      assert.deepEqual(ids(first.transfers), [], 'the fast transfer was listed while the slow batch, started before it, could still commit below it');
    } finally {
      await ledger.close();
    }
  });

  it('waits for a batch that ends within LEDGER_LISTING_WAIT_MS, and then lists both', async () => {
    const ledger = await startTestLedger({ LEDGER_SHARDS: String(SHARDS), LEDGER_LISTING_WAIT_MS: '30000' });
    try {
      const { listed, slow, fast, release } = await slowAndFast(ledger);
      const listing = ledger.client.getAccountTransfers({ accountId: listed.id });
      await new Promise((resolve) => setTimeout(resolve, 200));
      await release();
      assert.deepEqual(ids((await listing).transfers), [slow.id, fast.id]);
    } finally {
      await ledger.close();
    }
  });

  it('lists a caller\'s transfer as soon as it is answered', async () => {
    const ledger = await startTestLedger({ LEDGER_SHARDS: String(SHARDS) });
    try {
      const [listed, other] = [account(), account()];
      assert.deepEqual((await ledger.client.createAccounts([listed, other])).map((r) => r.code), [1, 1]);
      for (let i = 0; i < 20; i++) {
        const t = transfer({ debitAccountId: other.id, creditAccountId: listed.id, amount: 1n });
        assert.equal(transferCodeName((await ledger.client.createTransfers([t]))[0]!.code), 'ok');
        const newest = await ledger.client.getAccountTransfers({ accountId: listed.id, reversed: true, limit: 1 });
        assert.deepEqual(ids(newest.transfers), [t.id]);
      }
    } finally {
      await ledger.close();
    }
  });
});
