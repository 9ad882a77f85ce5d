/**
 * The piscina worker: runs shard batches on its own small connection pool. One task is one batch, never one
 * event (a task costs ~28 µs of thread hand-off). Errors come back as plain data: class identity does not
 * survive the thread boundary.
 */
import { workerData } from 'piscina';
import type { Config } from '../lib/config.js';
import { asAppError, createPool, type Pool, type StatementTiming } from '../lib/db.js';
import { AppError } from '../lib/errors.js';
import { executeBatch, type BatchOutcome, type BatchProgress, type BatchTask } from './batch.js';

/**
 * A failed batch: unavailable (nothing committed; the callers may retry) with its code, or a bug; with the
 * attempts it made and, when timed, their statements (for its span and ledger_batch_retries_total).
 */
export type WorkerReply =
  | { ok: true; outcome: BatchOutcome }
  | { ok: false; kind: 'unavailable' | 'internal'; code: string; message: string; attempts?: number; statements?: StatementTiming[] };

let pool: Pool | undefined;

function getPool(): Pool {
  if (!pool) {
    // The parent's validated configuration, not this thread's environment: one source of truth per process.
    const { config } = workerData as { config: Config };
    pool = createPool(config, { max: config.LEDGER_WORKER_CONCURRENCY, applicationName: 'ledger-worker', keyAccessOnly: true });
  }
  return pool;
}

export default async function runBatch(task: BatchTask): Promise<WorkerReply> {
  const progress: BatchProgress = { attempts: 0 };
  try {
    return { ok: true, outcome: await executeBatch(getPool(), task, progress) };
  } catch (error) {
    const done = { attempts: progress.attempts, ...(progress.statements ? { statements: progress.statements } : {}) };
    // A batch still in conflict after its retries committed nothing: UNAVAILABLE, for the caller to retry.
    const failure = asAppError(error);
    if (failure instanceof AppError && failure.kind === 'unavailable') return { ok: false, kind: 'unavailable', code: failure.code, message: failure.message, ...done };
    return { ok: false, kind: 'internal', code: 'internal', message: error instanceof Error ? error.message : String(error), ...done };
  }
}
