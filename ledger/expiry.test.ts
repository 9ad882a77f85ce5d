import assert from 'node:assert/strict';
import { after, before, describe, it } from 'mocha';
import type { Pool } from '../lib/db.js';
import { EventBatch, type EventEnvelope } from '../proto/gen/events/v1/events.js';
import { CreateTransferResultCode, PendingState, type Account, type Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { skewedClock, spawnLedger, type LedgerProcess } from '../test/ledger-process.js';
import { migratedScratchDatabase, testConfig, testPool } from '../test/support.js';
import { LedgerClient } from './client.js';
import { PAYMENT_OUTBOX_SHARD_BASE } from './outbox.js';
import { shardOf } from './router.js';

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

    await allExpired(first.client, pendings);

    await assertReleasedOnce(second.client, first.client, credit, debits);
    // One ledger.transfer.expired event per pending transfer in the outbox (the relay is off here).
    assertOneExpiryEventEach(await ledgerOutbox(pool), pendings);
    // Posting an expired transfer is refused with the expiry code.
    const [late] = await second.client.createTransfers([transfer({ pendingId: pendings[0]!.id, flags: { postPendingTransfer: true } })]);
    assert.equal(late?.code, CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_PENDING_TRANSFER_EXPIRED);
  });
});

/**
 * LEDGER_SHARDS lowered (8 to 4) while pending transfers of shards 4-7 wait for their timeout: those shards no
 * longer exist, and their pending transfers must still expire (through their debit account's shard of now).
 */
describe('pending expiry after LEDGER_SHARDS is lowered', function () {
  this.timeout(60_000);

  it('pending transfers of shards that no longer exist expire once, their amounts released', async () => {
    // Debit accounts whose shard of 8 is 4-7: their pending transfers are recorded on shards that 4 shards lack.
    const debits: Account[] = [];
    while (debits.length < 10) {
      const a = account();
      if (shardOf(a.id, 8) >= 4) debits.push(a);
    }
    const credit = account();
    const pendings = debits.map((d, i) => transfer({ debitAccountId: d.id, creditAccountId: credit.id, amount: BigInt(100 + i), flags: { pending: true }, timeout: 1 }));
    const eight = await startTestLedger({ LEDGER_SHARDS: '8', LEDGER_EXPIRY_SWEEP_MS: '600000' });
    try {
      assert.ok((await eight.client.createAccounts([...debits, credit])).every((r) => r.code === 1));
      assert.ok((await eight.client.createTransfers(pendings)).every((r) => r.code === 1));
    } finally {
      await eight.close();
    }
    const four = await startTestLedger({ LEDGER_SHARDS: '4', LEDGER_EXPIRY_SWEEP_MS: '20' });
    try {
      await allExpired(four.client, pendings);
      await assertReleasedOnce(four.client, four.client, credit, debits);
    } finally {
      await four.close();
    }
  });
});

/**
 * Two ledger processes owning every shard, one with its wall clock 30 s ahead and one 30 s behind
 * (test/skewed-clock.mjs, preloaded into the process and its piscina workers; no production hook).
 *
 * What skew does to expiry. A pending transfer expires `timeout` seconds after its ledger timestamp, and a
 * batch's timestamps are max(its instance's clock, the shard's last timestamp + 1): a shard's ledger time is the
 * fastest clock that has written to it. So, in wall time:
 * - a fast instance's sweeper expires early, by up to its skew, a pending transfer stamped by a slower clock
 *   (and its batches refuse a post of it as expired just as early);
 * - after a fast instance wrote to a shard, a slower one continues that shard's clock (timestamps strictly
 *   increase, as DESIGN.md promises) but its sweeper looks for candidates with its own clock: once it sweeps
 *   alone (the fast one gone, after a hand-over), an expired transfer, whose post the shard already refuses as
 *   expired, keeps its amount pending until that sweeper's clock gets there, up to the skew later;
 * - ledger timestamps (and balances "as of" a time) run ahead of the wall clock by up to the skew.
 * DESIGN.md promises strictly increasing per-shard timestamps and at-most-once resolution of a pending amount,
 * nothing about expiry to the second: both hold here whatever the clocks, and expiry is exact in ledger time
 * (never before the transfer's timestamp + timeout). Wall-clock precision of expiry is only as good as the
 * hosts' clock synchronisation.
 */
describe('pending expiry with two ledger processes whose clocks disagree by a minute', function () {
  this.timeout(120_000);
  const SKEW_MS = 30_000;
  let ahead: { process: LedgerProcess; client: LedgerClient };
  let behind: { process: LedgerProcess; client: LedgerClient };
  let pool: Pool;
  let databaseUrl: string;
  /** Each ledger shard's outbox sequence before the test: the test's batches are those after it. */
  let sequencesBefore: Map<number, bigint>;

  async function spawnSkewed(skewMs: number) {
    const clock = skewedClock(skewMs);
    const env = { DATABASE_URL: databaseUrl, LOG_LEVEL: 'error', LEDGER_SHARDS: '8', LEDGER_EXPIRY_SWEEP_MS: '20', LEDGER_RELAY_ENABLED: 'false', METRICS_PORT: '0', ...clock.env };
    const child = await spawnLedger(env, clock.nodeArgs);
    return { process: child, client: new LedgerClient(child.target) };
  }

  before(async () => {
    // A database of its own: the fast clock pushes shard clocks ahead of wall time, and later tests on the shared
    // test database would see their pending transfers expire up to SKEW_MS late (ledger time runs ahead).
    databaseUrl = await migratedScratchDatabase('ledgerline_clock_skew_test');
    pool = testPool(testConfig({ DATABASE_URL: databaseUrl }));
    [ahead, behind] = await Promise.all([spawnSkewed(SKEW_MS), spawnSkewed(-SKEW_MS)]);
    const r = await pool.query('SELECT shard, last_sequence FROM ledger_shards WHERE shard < $1', [PAYMENT_OUTBOX_SHARD_BASE]);
    sequencesBefore = new Map(r.rows.map((row) => [row.shard as number, BigInt(row.last_sequence)]));
  });
  after(async () => {
    for (const instance of [ahead, behind]) {
      instance?.client.close();
      await instance?.process.stop();
    }
    await pool?.end();
  });

  it('each pending transfer expires once, never before its timeout in ledger time; shard timestamps never go backwards', async () => {
    const debits = Array.from({ length: 16 }, () => account());
    const credit = account();
    const wallClockNs = () => BigInt(Date.now()) * 1_000_000n;
    const beforeAccounts = wallClockNs();
    const created = await ahead.client.createAccounts([...debits, credit]);
    assert.ok(created.every((r) => r.code === 1));
    // The batch ran in a piscina worker of the fast process: its timestamps are ahead of this (true) clock by the
    // skew, which no earlier batch can explain (a shard clock is at most SKEW_MS ahead of the time it was written).
    assert.ok(created.every((r) => r.timestamp >= beforeAccounts + BigInt(SKEW_MS) * 1_000_000n), 'the skewed clock reached the batch worker');

    // Rounds alternate between the instances on the same debit accounts (so the same shards): every round of
    // the slow instance writes after the fast one on those shards, a minute behind it by its own clock.
    const rounds = [ahead, behind, ahead, behind].map((instance) => ({
      instance,
      pendings: debits.map((debit, i) => transfer({ debitAccountId: debit.id, creditAccountId: credit.id, amount: BigInt(1 + i), flags: { pending: true }, timeout: 1 + (i % 2) })),
    }));
    for (const round of rounds) {
      const startedNs = wallClockNs();
      assert.ok((await round.instance.client.createTransfers(round.pendings)).every((r) => r.code === 1));
      if (round.instance === behind) {
        // Its own clock says a minute before what the fast instance wrote: it continued the shards' clocks instead.
        const stamped = await behind.client.lookupTransfers(round.pendings.map((t) => t.id));
        assert.ok(stamped.every((t) => t.timestamp > startedNs), 'the slow instance stamps after the fast one, not by its own clock');
      }
    }
    const pendings = rounds.flatMap((round) => round.pendings);
    const total = pendings.reduce((sum, t) => sum + t.amount, 0n);
    assert.equal((await behind.client.lookupAccounts([credit.id]))[0]!.creditsPending, total);

    await allExpired(behind.client, pendings);

    await assertReleasedOnce(behind.client, ahead.client, credit, debits);
    const outbox = await ledgerOutbox(pool, sequencesBefore);
    const expiries = assertOneExpiryEventEach(outbox, pendings);
    // Exact in ledger time: no transfer expired before its timestamp + timeout.
    for (const t of await ahead.client.lookupTransfers(pendings.map((p) => p.id))) {
      assert.ok(expiries.get(t.id)!.occurredAt >= t.timestamp + BigInt(t.timeout) * 1_000_000_000n, `${t.id} expired before its timeout`);
    }
    assertTimestampsIncreasePerShard(outbox);

    // A post of an expired transfer is refused with the expiry code, through either instance.
    for (const [instance, pending] of [
      [ahead, pendings[0]!],
      [behind, pendings[1]!],
    ] as const) {
      const [late] = await instance.client.createTransfers([transfer({ pendingId: pending.id, flags: { postPendingTransfer: true } })]);
      assert.equal(late?.code, CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_PENDING_TRANSFER_EXPIRED);
    }
  });
});

/** Released once: nothing pending, nothing posted, on either side (read through two instances). */
async function assertReleasedOnce(creditReader: LedgerClient, debitReader: LedgerClient, credit: Account, debits: readonly Account[]): Promise<void> {
  const [c] = await creditReader.lookupAccounts([credit.id]);
  assert.deepEqual([c!.creditsPending, c!.creditsPosted, c!.debitsPending, c!.debitsPosted], [0n, 0n, 0n, 0n]);
  for (const d of await debitReader.lookupAccounts(debits.map((a) => a.id))) assert.deepEqual([d.debitsPending, d.debitsPosted], [0n, 0n]);
}

/** Waits (up to 20 s) until every one of `pendings` is expired. */
async function allExpired(client: LedgerClient, pendings: readonly Transfer[]): Promise<void> {
  // A liveness bound, not a speed claim: the sweepers may first work through other tests' expired leftovers, on
  // a machine shared with other work (16-22 s seen under load).
  const deadline = Date.now() + 45_000;
  for (;;) {
    const states = await client.lookupTransfers(pendings.map((t) => t.id));
    if (states.every((t) => t.pendingState === PendingState.PENDING_STATE_EXPIRED)) return;
    assert.ok(Date.now() < deadline, `${states.filter((t) => t.pendingState !== PendingState.PENDING_STATE_EXPIRED).length} not expired yet`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

interface OutboxRow {
  shard: number;
  sequence: bigint;
  events: EventEnvelope[];
}

/**
 * The ledger shards' outbox rows (the relay is off in these tests, so they stay), in commit order per shard;
 * only those after `after` (a shard's sequence) when given.
 */
async function ledgerOutbox(pool: Pool, after = new Map<number, bigint>()): Promise<OutboxRow[]> {
  const r = await pool.query('SELECT shard, sequence, payload FROM outbox WHERE shard < $1 ORDER BY shard, sequence', [PAYMENT_OUTBOX_SHARD_BASE]);
  return r.rows
    .map((row) => ({ shard: row.shard as number, sequence: BigInt(row.sequence), events: EventBatch.decode(row.payload as Buffer).events }))
    .filter((row) => row.sequence > (after.get(row.shard) ?? -1n));
}

/** Asserts one ledger.transfer.expired event for each of `pendings`; those events by transfer id. */
function assertOneExpiryEventEach(outbox: readonly OutboxRow[], pendings: readonly Transfer[]): Map<string, EventEnvelope> {
  const wanted = new Set(pendings.map((t) => t.id));
  const expiries = new Map<string, EventEnvelope[]>();
  for (const e of outbox.flatMap((row) => row.events)) {
    if (e.type === 'ledger.transfer.expired' && wanted.has(e.aggregateId)) expiries.set(e.aggregateId, [...(expiries.get(e.aggregateId) ?? []), e]);
  }
  assert.equal(expiries.size, pendings.length, 'every pending transfer has its expiry event');
  assert.deepEqual([...new Set([...expiries.values()].map((events) => events.length))], [1], 'and only one');
  return new Map([...expiries].map(([id, [event]]) => [id, event!]));
}

/** Asserts that within each shard, in commit order, every event's ledger timestamp is above the one before. */
function assertTimestampsIncreasePerShard(outbox: readonly OutboxRow[]): void {
  const last = new Map<number, bigint>();
  for (const row of outbox) {
    for (const e of row.events) {
      const previous = last.get(row.shard) ?? 0n;
      assert.ok(e.occurredAt > previous, `shard ${row.shard}, batch ${row.sequence}: ${e.type} of ${e.aggregateId} at ${e.occurredAt}, not after ${previous}`);
      last.set(row.shard, e.occurredAt);
    }
  }
  assert.ok(last.size > 1, `events of ${last.size} shard(s) only: the test must write to several`);
}

/**
 * LEDGER_BATCH_MAX and LEDGER_MAX_QUEUED_EVENTS below 8,190 (the config only asks the queue to hold one batch):
 * the sweeper must still release a shard with more expired pending transfers than the queue holds, one batch's
 * worth per pass, instead of asking for more than the queue can ever admit on every pass.
 */
describe('pending expiry with a small batch size and queue', function () {
  this.timeout(60_000);

  it('more expired pending transfers on one shard than the queue holds all expire', async () => {
    // One debit account: every pending transfer is recorded on its shard. Created by an instance that does not
    // sweep, so that none expires (and takes queue room) while they are being created.
    const debit = account();
    const credit = account();
    const pendings = Array.from({ length: 120 }, (_, i) => transfer({ debitAccountId: debit.id, creditAccountId: credit.id, amount: BigInt(1 + i), flags: { pending: true }, timeout: 1 }));
    const creator = await startTestLedger({ LEDGER_EXPIRY_SWEEP_MS: '600000' });
    try {
      assert.ok((await creator.client.createAccounts([debit, credit])).every((r) => r.code === 1));
      assert.ok((await creator.client.createTransfers(pendings)).every((r) => r.code === 1));
    } finally {
      await creator.close();
    }
    const small = await startTestLedger({ LEDGER_BATCH_MAX: '50', LEDGER_MAX_QUEUED_EVENTS: '50', LEDGER_EXPIRY_SWEEP_MS: '20' });
    try {
      await allExpired(small.client, pendings);
      await assertReleasedOnce(small.client, small.client, credit, [debit]);
    } finally {
      await small.close();
    }
  });
});

/**
 * One sweep takes candidates from every owned shard: a backlog of expired pending transfers on one shard (a full
 * batch's worth, all older) must not keep those of the other shards waiting for later passes.
 */
describe('pending expiry: one shard\'s backlog and the other shards', function () {
  this.timeout(120_000);

  it('a sweep releases expired pending transfers of every shard, not only of the shard with the oldest backlog', async () => {
    // No periodic sweeps: the test sweeps once by hand.
    const ledger = await startTestLedger({ LEDGER_EXPIRY_SWEEP_MS: '600000' });
    try {
      const busy = account();
      let quiet = account();
      while (shardOf(quiet.id, 8) === shardOf(busy.id, 8)) quiet = account();
      const credit = account();
      assert.ok((await ledger.client.createAccounts([busy, quiet, credit])).every((r) => r.code === 1));
      // A full batch of pending transfers on busy's shard, then one on quiet's shard: it expires last.
      const backlog = Array.from({ length: 8190 }, () => transfer({ debitAccountId: busy.id, creditAccountId: credit.id, amount: 1n, flags: { pending: true }, timeout: 1 }));
      assert.ok((await ledger.client.createTransfers(backlog)).every((r) => r.code === 1));
      const last = transfer({ debitAccountId: quiet.id, creditAccountId: credit.id, amount: 1n, flags: { pending: true }, timeout: 1 });
      const [created] = await ledger.client.createTransfers([last]);
      assert.equal(created?.code, 1);
      // Until every one of them is past its timeout.
      while (BigInt(Date.now()) * 1_000_000n <= created.timestamp + 1_000_000_000n) await new Promise((resolve) => setTimeout(resolve, 50));

      assert.ok((await ledger.app.sweeper.sweep()) > 0);
      assert.equal((await ledger.client.lookupTransfers([last.id]))[0]?.pendingState, PendingState.PENDING_STATE_EXPIRED, 'the one on the quiet shard, by the first sweep');
      // The backlog goes in the next passes (not left to the sweepers of later tests).
      while ((await ledger.app.sweeper.sweep()) > 0);
      const states = (await ledger.client.lookupTransfers(backlog.map((t) => t.id))).map((t) => t.pendingState);
      assert.deepEqual(new Set(states), new Set([PendingState.PENDING_STATE_EXPIRED]), 'the backlog');
    } finally {
      await ledger.close();
    }
  });
});
