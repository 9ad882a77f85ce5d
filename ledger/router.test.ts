import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import type { BatchTask } from './batch.js';
import type { AccountInput, SubmissionResult } from './model.js';
import { LedgerRouter, shardOf } from './router.js';
import type { WorkerReply } from './worker.js';

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
      return { ok: true, outcome: { results, events: 1, attempts: 1 } };
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
