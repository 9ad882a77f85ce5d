import { randomUUID } from 'node:crypto';
import { isUniqueViolation, withTransaction, type Pool } from '../lib/db.js';
import { BatchEvaluator } from './engine.js';
import type { Submission, SubmissionResult } from './model.js';
import { encodeEventBatch } from './outbox.js';
import { loadBatchState, lockShard, writeBatchEffects } from './store.js';

export interface BatchTask {
  shard: number;
  submissions: Submission[];
}

export interface BatchOutcome {
  results: SubmissionResult[];
  events: number;
  /** Transaction attempts (1 = no retry). */
  attempts: number;
}

/**
 * One shard batch as ONE database transaction. Retried whole on serialization failure or deadlock, and on a
 * unique violation: the same transfer id committed meanwhile by another shard's batch, which the retry then
 * finds and answers `exists` (or `exists_with_different_fields`) instead of failing every caller.
 */
export async function executeBatch(pool: Pool, task: BatchTask): Promise<BatchOutcome> {
  let attempts = 0;
  return withTransaction(
    pool,
    async (client) => {
      attempts++;
      const clock = await lockShard(client, task.shard);
      const state = await loadBatchState(client, task.submissions);
      const now = BigInt(Date.now()) * 1_000_000n;
      const base = now > clock.lastTimestamp ? now : clock.lastTimestamp + 1n;
      const effects = new BatchEvaluator(state, base, task.shard).evaluate(task.submissions);
      const batchId = randomUUID();
      const outbox = effects.events.length > 0 ? { batchId, payload: encodeEventBatch(batchId, task.shard, effects.events) } : null;
      await writeBatchEffects(client, task.shard, effects, clock, outbox);
      return { results: effects.results, events: effects.events.length, attempts };
    },
    { retryIf: isUniqueViolation },
  );
}
