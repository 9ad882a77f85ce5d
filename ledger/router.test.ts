import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import type { BatchTask } from './batch.js';
import { MAX_CLOCK_LEAD_NANOS, wallClockNanos } from './clock.js';
import type { AccountInput, SubmissionResult } from './model.js';
import { LedgerRouter, shardOf } from './router.js';
import type { WorkerReply } from './worker.js';
import { ResourceExhaustedError, UnavailableError } from '../lib/errors.js';

/** The router alone, its batches run by a stand-in runner: what a caller of a request split across shards hears, and when. */
describe('ledger router: a request split across shards', () => {
  /** An account id on `shard` of 2. */
  function accountOn(shard: number): AccountInput {
    for (;;) {
      const id = randomUUID();
      if (shardOf(id, 2) === shard) return { id, ledger: 1, code: 1, flags: 0, metadata: {}, balancesNonZero: false };
    }
  }

  it('is answered only once every shard\'s part has finished, even when one part fails at once', async () => {
    const happened: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const run = async (task: BatchTask): Promise<WorkerReply> => {
      if (task.shard === 0) return { ok: false, kind: 'unavailable', code: 'contention', message: 'shard 0 batch failed' };
      await held;
      happened.push('shard 1 committed');
      const results: SubmissionResult[] = task.submissions.map((s) => ({ kind: 'accounts', results: s.kind === 'accounts' ? s.events.map(() => ({ code: 'ok' as const, timestamp: 1n })) : [] }));
      return { ok: true, outcome: { results, events: 1, lastTimestamp: 1n, attempts: 1 } };
    };
    const router = new LedgerRouter(2, [0, 1], run, { maxEvents: 100, windowMs: 0, maxQueuedEvents: 1_000, readBalanceRules: async () => new Map() });
    const answered = router.createAccounts([accountOn(0), accountOn(1)]).then(
      () => happened.push('answered ok'),
      () => happened.push('answered with an error'),
    );
    // Shard 0's failure is in; shard 1's part is still running.
    await new Promise((resolve) => setTimeout(resolve, 20));
    release();
    await answered;
    // Answered earlier, the caller could retry (or the server stop) while its other part still commits.
    assert.deepEqual(happened, ['shard 1 committed', 'answered with an error']);
  });
});

/** One shard's batcher under faults of its own: whatever throws, every caller is answered and the shard goes on. */
describe('ledger router: a shard after a fault in its batch bookkeeping', () => {
  function account(): AccountInput {
    return { id: randomUUID(), ledger: 1, code: 1, flags: 0, metadata: {}, balancesNonZero: false };
  }
  const okReply = (task: BatchTask): WorkerReply => ({
    ok: true,
    outcome: { results: task.submissions.map((s) => ({ kind: 'accounts', results: s.kind === 'accounts' ? s.events.map(() => ({ code: 'ok' as const, timestamp: 1n })) : [] })), events: 1, lastTimestamp: 1n, attempts: 1 },
  });
  const options = { maxEvents: 100, windowMs: 0, maxQueuedEvents: 1_000, readBalanceRules: async () => new Map() };

  it('goes on serving after its batch observer throws', async () => {
    let observed = 0;
    const router = new LedgerRouter(1, [0], async (task) => okReply(task), options, {
      onBatch() {
        observed++;
        throw new Error('metrics exporter bug');
      },
    });
    assert.deepEqual((await router.createAccounts([account()])).map((r) => r.code), ['ok']);
    const second = await Promise.race([router.createAccounts([account()]), new Promise<'stuck'>((resolve) => setTimeout(() => resolve('stuck'), 2_000))]);
    assert.notEqual(second, 'stuck', 'the shard never took its next batch');
    assert.equal(observed, 2);
  });

  it('answers every caller UNAVAILABLE when the runner throws at once, and goes on', async () => {
    let calls = 0;
    const router = new LedgerRouter(1, [0], (task) => {
      if (calls++ === 0) throw new Error('runner bug');
      return Promise.resolve(okReply(task));
    }, options);
    const first = await Promise.race([router.createAccounts([account()]).then(() => 'ok', (e: unknown) => e), new Promise<'stuck'>((resolve) => setTimeout(() => resolve('stuck'), 2_000))]);
    assert.ok(first instanceof UnavailableError, `first call: ${String(first)}`);
    assert.deepEqual((await router.createAccounts([account()])).map((r) => r.code), ['ok']);
  });

  it('answers the callers a short reply left out, instead of leaving them waiting', async () => {
    const router = new LedgerRouter(1, [0], async (task) => {
      const reply = okReply(task);
      if (reply.ok) reply.outcome.results.pop();
      return reply;
    }, { ...options, windowMs: 20 });
    const calls = [router.createAccounts([account()]), router.createAccounts([account()])].map((p) => p.then(() => 'ok', (e: unknown) => (e instanceof UnavailableError ? 'unavailable' : String(e))));
    const answers = await Promise.race([Promise.all(calls), new Promise<'stuck'>((resolve) => setTimeout(() => resolve('stuck'), 2_000))]);
    assert.deepEqual(answers, ['unavailable', 'unavailable']);
  });

  it('admits the sweeper\'s releases when callers have filled the queue', async () => {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const router = new LedgerRouter(1, [0], async (task) => {
      await held;
      return { ok: true, outcome: { results: task.submissions.map((s) => (s.kind === 'expirations' ? { kind: 'expirations', expired: s.pendingIds.length } : { kind: 'accounts', results: s.kind === 'accounts' ? s.events.map(() => ({ code: 'ok' as const, timestamp: 1n })) : [] })), events: 1, lastTimestamp: 1n, attempts: 1 } };
    }, { ...options, maxEvents: 10, maxQueuedEvents: 10 });
    const inFlight = router.createAccounts([account()]);
    await new Promise((resolve) => setImmediate(resolve));
    const queued = router.createAccounts(Array.from({ length: 10 }, account));
    await assert.rejects(router.createAccounts([account()]), (e: unknown) => e instanceof ResourceExhaustedError);
    const expired = router.expire(0, [randomUUID(), randomUUID()]);
    release();
    assert.equal(await expired, 2);
    await Promise.all([inFlight, queued]);
  });
});

/** LedgerRouter.listingHorizon with a stand-in runner: which timestamps a listing may show while batches run. */
describe('ledger router: the listing horizon', () => {
  const options = { maxEvents: 100, windowMs: 0, maxQueuedEvents: 1_000, readBalanceRules: async () => new Map() };
  const account = (shard: number): AccountInput => {
    for (;;) {
      const id = randomUUID();
      if (shardOf(id, 2) === shard) return { id, ledger: 1, code: 1, flags: 0, metadata: {}, balancesNonZero: false };
    }
  };

  /** A runner whose shard-0 batches wait for `release`; each batch stamps from its dispatch time, `skew` ahead. */
  function heldRunner(skew = 0n) {
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const dispatched: BatchTask[] = [];
    const run = async (task: BatchTask): Promise<WorkerReply> => {
      dispatched.push(task);
      if (task.shard === 0) await held;
      const base = task.notBefore! + skew;
      const results: SubmissionResult[] = task.submissions.map((s) => ({ kind: 'accounts', results: s.kind === 'accounts' ? s.events.map((_, i) => ({ code: 'ok' as const, timestamp: base + BigInt(i) })) : [] }));
      return { ok: true, outcome: { results, events: 1, lastTimestamp: base + 9n, attempts: 1 } };
    };
    return { run, release: () => release(), dispatched };
  }

  it('waits for the batches running when it is asked, and is above what they committed', async () => {
    const runner = heldRunner();
    const router = new LedgerRouter(2, [0, 1], runner.run, options);
    const created = router.createAccounts([account(0)]);
    await new Promise((resolve) => setImmediate(resolve));
    const horizon = router.listingHorizon(10_000);
    setTimeout(runner.release, 50);
    const [answer] = await created;
    assert.ok((await horizon)! >= runner.dispatched[0]!.notBefore! + 9n);
    assert.ok(answer!.timestamp <= (await horizon)!);
  });

  it('after the wait, stays below the start of a batch still running, whatever other shards committed since', async () => {
    const runner = heldRunner();
    const router = new LedgerRouter(2, [0, 1], runner.run, options);
    const stuck = router.createAccounts([account(0)]);
    await new Promise((resolve) => setImmediate(resolve));
    const [later] = await router.createAccounts([account(1)]);
    const horizon = (await router.listingHorizon(20))!;
    assert.equal(horizon, runner.dispatched[0]!.notBefore! - 1n);
    assert.ok(later!.timestamp > horizon, 'a transfer stamped after the stuck batch started is not shown yet');
    runner.release();
    await stuck;
    assert.ok((await router.listingHorizon(20))! >= later!.timestamp);
  });

  it('is above a timestamp a batch answered with, even one ahead of the wall clock within MAX_CLOCK_LEAD_NANOS (a caller lists what it committed)', async () => {
    const runner = heldRunner(MAX_CLOCK_LEAD_NANOS / 2n);
    runner.release();
    const router = new LedgerRouter(2, [0, 1], runner.run, options);
    const [created] = await router.createAccounts([account(1)]);
    assert.ok((await router.listingHorizon(20))! >= created!.timestamp);
  });

  it('is carried no further than MAX_CLOCK_LEAD_NANOS ahead of the wall clock by a shard clock far ahead', async () => {
    const runner = heldRunner(60_000_000_000n);
    runner.release();
    const router = new LedgerRouter(2, [0, 1], runner.run, options);
    const [created] = await router.createAccounts([account(1)]);
    const horizon = (await router.listingHorizon(20))!;
    assert.ok(horizon < created!.timestamp, 'carried to the shard clock a minute ahead');
    // (A few nanoseconds more: readings within one millisecond of the wall clock count up one by one.)
    assert.ok(horizon <= wallClockNanos() + MAX_CLOCK_LEAD_NANOS + 1_000n, `${horizon} is more than the lead ahead`);
  });

  it('is undefined when other instances own shards (their batches are not known here)', async () => {
    const router = new LedgerRouter(2, [0], heldRunner().run, options);
    assert.equal(await router.listingHorizon(20), undefined);
  });
});
