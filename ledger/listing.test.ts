import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { status, type ServiceError } from '@grpc/grpc-js';
import type { PoolClient } from 'pg';
import type { Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { migratedScratchDatabase, testConfig, testPool, untilWaitingOnLock } from '../test/support.js';
import type { Pool } from '../lib/db.js';
import { transferCodeName } from './convert.js';
import { encodeCursor } from './queries.js';
import { shardOf } from './router.js';

const SHARDS = 8;

function idOnShard(shard: number): string {
  for (;;) {
    const candidate = randomUUID();
    if (shardOf(candidate, SHARDS) === shard) return candidate;
  }
}

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
    await untilWaitingOnLock(pool, '%INSERT INTO transfers%', 'the slow batch waited for the held id', 5_000);
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
      // A malformed listing is answered at once, not after the wait.
      const started = Date.now();
      await assert.rejects(ledger.client.getAccountTransfers({ accountId: listed.id, limit: 9_000 }), (e: ServiceError) => e.code === status.INVALID_ARGUMENT);
      assert.ok(Date.now() - started < 5_000, `a malformed listing waited ${Date.now() - started} ms for the running batch`);
      // Nor is one whose window ends before the slow batch started (what settlement's reconciliation reads).
      const [listedAccount] = await ledger.client.lookupAccounts([listed.id]);
      const windowStarted = Date.now();
      const window = await ledger.client.getAccountTransfers({ accountId: listed.id, timestampMax: listedAccount!.timestamp });
      assert.deepEqual(ids(window.transfers), []);
      assert.ok(Date.now() - windowStarted < 5_000, `a listing of a past window waited ${Date.now() - windowStarted} ms for the running batch`);
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

  /**
   * `old` commits; then a batch of shard 0 (`slow`) is held after taking its timestamps; then `mid` (shard 1) and
   * `anchor` (shard 2) commit, both stamped above the slow batch's start, so above every horizon while it runs.
   * A client walking the account's transfers older than `anchor` (REST `starting_after`: the gateway turns the
   * anchor's id into a cursor) must get `mid` and `old`, both committed: stepping over `mid` loses it for good.
   */
  it('a newest-first page from a cursor above the horizon does not step over committed transfers below the cursor', async () => {
    const ledger: TestLedger = await startTestLedger({ LEDGER_SHARDS: String(SHARDS), LEDGER_LISTING_WAIT_MS: '100' });
    const holder: PoolClient = await pool.connect();
    try {
      const listed = account();
      const debits = [0, 1, 2, 3].map((shard) => account({ id: idOnShard(shard) }));
      assert.ok((await ledger.client.createAccounts([listed, ...debits])).every((r) => r.code === 1));
      const old = transfer({ debitAccountId: debits[3]!.id, creditAccountId: listed.id, amount: 1n });
      assert.equal(transferCodeName((await ledger.client.createTransfers([old]))[0]!.code), 'ok');

      const slow = transfer({ debitAccountId: debits[0]!.id, creditAccountId: listed.id, amount: 2n });
      await holder.query('BEGIN');
      await holder.query(
        `INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, flags, "timestamp", shard)
         VALUES ($1, $2, $3, 1, 978, 1, 0, 1, 0)`,
        [slow.id, debits[0]!.id, listed.id],
      );
      const slowAnswer = ledger.client.createTransfers([slow]);
      await untilWaitingOnLock(pool, '%INSERT INTO transfers%', 'the slow batch waited for the held id', 5_000);
      const mid = transfer({ debitAccountId: debits[1]!.id, creditAccountId: listed.id, amount: 3n });
      const [midResult] = await ledger.client.createTransfers([mid]);
      assert.equal(transferCodeName(midResult!.code), 'ok');
      const anchor = transfer({ debitAccountId: debits[2]!.id, creditAccountId: listed.id, amount: 4n });
      const [anchorResult] = await ledger.client.createTransfers([anchor]);
      assert.equal(transferCodeName(anchorResult!.code), 'ok');

      // Older than the anchor, newest first (as GET /v1/accounts/{id}/transfers?starting_after=anchor asks).
      const older = await ledger.client.getAccountTransfers({ accountId: listed.id, reversed: true, cursor: encodeCursor(anchorResult!.timestamp, anchor.id) });
      await holder.query('ROLLBACK');
      assert.equal(transferCodeName((await slowAnswer)[0]!.code), 'ok');
      assert.deepEqual(ids(older.transfers), [mid.id, old.id], 'a walk to older transfers stepped over a committed one');
      assert.equal(older.nextCursor, '');
    } finally {
      holder.release();
      await ledger.close();
    }
  });
});

/**
 * The instance clock (ledger/clock.ts) follows committed timestamps, but a shard clock far ahead of the wall clock
 * (a former owner's fast clock) must not carry every shard's timestamps with it: expiry is reckoned from
 * timestamps, so a pending transfer recorded before, on another shard, would be refused as expired while its
 * timeout has not passed by any clock.
 */
describe('instance clock: a shard clock ahead of the wall clock', function () {
  this.timeout(60_000);

  it('does not expire a pending transfer of another shard before its timeout', async () => {
    // A database of its own: shard clocks pushed ahead would delay the expiry of later tests' pendings.
    const databaseUrl = await migratedScratchDatabase('ledgerline_clock_lead_test');
    const pool = testPool(testConfig({ DATABASE_URL: databaseUrl }));
    try {
      const first = await startTestLedger({ DATABASE_URL: databaseUrl, LEDGER_SHARDS: String(SHARDS) });
      const debit = account({ id: idOnShard(1) });
      const credit = account({ id: idOnShard(1) });
      const pending = transfer({ debitAccountId: debit.id, creditAccountId: credit.id, amount: 5n, flags: { pending: true }, timeout: 60 });
      try {
        assert.ok((await first.client.createAccounts([debit, credit])).every((r) => r.code === 1));
        assert.equal(transferCodeName((await first.client.createTransfers([pending]))[0]!.code), 'ok');
      } finally {
        await first.close();
      }
      // What a former owner of shard 0 whose clock ran two minutes fast leaves behind.
      await pool.query('UPDATE ledger_shards SET last_timestamp = GREATEST(last_timestamp, $1) WHERE shard = 0', [BigInt(Date.now() + 120_000) * 1_000_000n]);
      const second = await startTestLedger({ DATABASE_URL: databaseUrl, LEDGER_SHARDS: String(SHARDS) });
      try {
        const [posted] = await second.client.createTransfers([transfer({ pendingId: pending.id, flags: { postPendingTransfer: true } })]);
        assert.equal(transferCodeName(posted!.code), 'ok', 'posted within its timeout of 60 s, on a shard whose clock is right');
      } finally {
        await second.close();
      }
    } finally {
      await pool.end();
    }
  });
});
