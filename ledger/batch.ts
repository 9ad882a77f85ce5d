import { randomUUID } from 'node:crypto';
import { isUniqueViolation, recordStatements, sqlState, withTransaction, type Pool, type StatementTiming } from '../lib/db.js';
import { InternalError } from '../lib/errors.js';
import { wallClockNanos } from './clock.js';
import { BatchEvaluator, type BatchEffects } from './engine.js';
import { AccountFlag, hasFlag, type Submission, type SubmissionResult } from './model.js';
import { encodeEventBatch } from './outbox.js';
import {
  BatchNeedsRerun,
  NO_HINTS,
  advanceHistoryClocks,
  consolidateSlots,
  findExistingTransferIds,
  loadBatchState,
  lockHistoryClocks,
  lockShard,
  writeBatchEffects,
  type BatchHints,
} from './store.js';

export interface BatchTask {
  shard: number;
  submissions: Submission[];
  /** The batch span's traceparent (carried by the batch's events and outbox rows); '' when not traced. */
  traceparent?: string;
  /** Time the batch's statements for the batch span (the worker thread has no tracer of its own). */
  timeStatements?: boolean;
  /**
   * The instance clock when the batch was dispatched (ledger/clock.ts): the batch's timestamps are above it
   * whatever this thread's clock says, so that a listing can tell which transfers are final (LedgerRouter.listingHorizon).
   */
  notBefore?: bigint;
}

/**
 * What a batch has done so far, filled in as it runs (executeBatch's caller keeps it): a batch that fails is
 * reported with its attempts and statements too (retries counted, its SQL under its span), as a committed one.
 */
export interface BatchProgress {
  /** Transaction attempts so far. */
  attempts: number;
  /** The statements of every attempt, when asked for (timeStatements). */
  statements?: StatementTiming[];
}

export interface BatchOutcome {
  results: SubmissionResult[];
  events: number;
  /** The shard clock the batch committed (its last timestamp slot). */
  lastTimestamp: bigint;
  /** Transaction attempts (1 = no retry). */
  attempts: number;
  /** The statements of every attempt, when asked for (timeStatements). */
  statements?: StatementTiming[];
  /** Accounts of the batch that are wide (read in full from now on): routing orders their events (router.ts). */
  wideAccountIds?: string[];
}

/** SQLSTATE numeric_value_out_of_range: an INT8 balance slot overflowed. */
const NUMERIC_VALUE_OUT_OF_RANGE = '22003';

/** A batch reruns at most this often for facts it learned (existing ids, wide accounts); each adds facts. */
const MAX_RERUNS = 8;

/**
 * One shard batch as ONE database transaction, retried whole on serialization failure or deadlock. Rerun
 * with more facts when the optimistic first guess was wrong: a transfer id that already exists (committed
 * earlier, or meanwhile by another shard's batch: the rerun answers `exists` or `exists_with_different_fields`
 * instead of failing every caller) or was spent by an earlier refusal (`id_already_failed`), an account that
 * must be read in full, or a balance slot that overflowed INT8 while the account's totals are in range (its
 * slots are consolidated first: store.ts consolidateSlots).
 */
export async function executeBatch(pool: Pool, task: BatchTask, progress: BatchProgress = { attempts: 0 }): Promise<BatchOutcome> {
  let hints: BatchHints = NO_HINTS;
  if (task.timeStatements) progress.statements ??= [];
  const statements = progress.statements;
  for (let rerun = 0; ; rerun++) {
    try {
      return await withTransaction(
        pool,
        async (client) => {
          const attempt = ++progress.attempts;
          if (statements) recordStatements(client, statements, attempt);
          const clock = await lockShard(client, task.shard);
          const state = await loadBatchState(client, task.submissions, hints);
          const loadedTransferIds = new Set(state.transfers.keys());
          // Whether these are spent is asked by the write itself (the others were looked up: hints).
          const uncheckedTransferIds = transferEventIds(task.submissions).filter((id) => !state.failedTransferIds.has(id));
          // History accounts order batches across shards: their balances rows must follow commit order.
          const lockedHistoryIds = [...state.accounts.values()].filter((a) => hasFlag(a.flags, AccountFlag.history)).map((a) => a.id);
          const historyClock = await lockHistoryClocks(client, lockedHistoryIds);
          const base = maxOf(wallClockNanos(), task.notBefore ?? 0n, clock.lastTimestamp + 1n, historyClock + 1n);
          const effects = new BatchEvaluator(state, base, task.shard).evaluate(task.submissions);

          // A failed event whose id exists must be answered `exists...`; ask only about those (rare).
          const existing = await findExistingTransferIds(client, refusedTransferIds(task.submissions, effects.results, loadedTransferIds));
          if (existing.length > 0) throw new BatchNeedsRerun(existing, []);

          const batchId = randomUUID();
          const traceparent = task.traceparent ?? '';
          const outbox = { batchId, parts: encodeEventBatch(batchId, task.shard, effects.events, traceparent), traceparent };
          if (hints.consolidateSlots) await consolidateSlots(client, task.shard, effects, state);
          const { markedWide } = await writeBatchEffects(client, task.shard, effects, state, clock, outbox, uncheckedTransferIds);
          // Every history account the batch locked, created or wrote rows for: one it created here has no clock
          // row yet, and without one the next batch of another shard (clock behind) would record its next change
          // under an earlier timestamp.
          await advanceHistoryClocks(client, historyAccountIds(lockedHistoryIds, effects), maxOf(effects.lastTimestamp, historyClock));
          return {
            results: effects.results,
            events: effects.events.length,
            lastTimestamp: effects.lastTimestamp,
            attempts: progress.attempts,
            ...(statements ? { statements } : {}),
            ...(state.wideAccountIds.length + markedWide.length > 0 ? { wideAccountIds: [...state.wideAccountIds, ...markedWide] } : {}),
          };
        },
      );
    } catch (error) {
      const learned = factsLearned(error, hints);
      // Anything else (a connection lost, a statement timeout, a bug) is the caller's to hear as it is.
      if (!learned) throw error;
      if (rerun >= MAX_RERUNS) {
        const detail = (error as { detail?: unknown }).detail ?? (error instanceof Error ? error.message : String(error));
        throw new InternalError(`shard ${task.shard} batch did not settle after ${MAX_RERUNS} reruns: ${String(detail)}`, { cause: error });
      }
      hints = learned;
    }
  }
}

/** The hints a batch reruns with after `error`, or undefined when the error teaches nothing a rerun could use. */
function factsLearned(error: unknown, hints: BatchHints): BatchHints | undefined {
  if (sqlState(error) === NUMERIC_VALUE_OUT_OF_RANGE && !hints.consolidateSlots) {
    // A balance slot overflowed INT8 although the account's totals are in range (store.ts consolidateSlots).
    return { ...hints, consolidateSlots: true };
  }
  if (isUniqueViolation(error)) {
    // A transfer id of the batch exists (committed before, or meanwhile by another shard's batch).
    return { ...hints, lookUpAllTransferIds: true };
  }
  if (error instanceof BatchNeedsRerun) {
    return {
      ...hints,
      existingTransferIds: new Set([...hints.existingTransferIds, ...error.existingTransferIds]),
      failedTransferIds: new Set([...hints.failedTransferIds, ...error.failedTransferIds]),
      fullAccountIds: new Set([...hints.fullAccountIds, ...error.fullAccountIds]),
    };
  }
  return undefined;
}

/** The history accounts whose clocks a batch advances: those it locked, those it created, those it wrote rows for. */
function historyAccountIds(locked: readonly string[], effects: BatchEffects): string[] {
  const ids = new Set(locked);
  for (const a of effects.newAccounts) if (hasFlag(a.flags, AccountFlag.history)) ids.add(a.id);
  for (const h of effects.history) ids.add(h.accountId);
  return [...ids];
}

function maxOf(...values: bigint[]): bigint {
  return values.reduce((a, b) => (b > a ? b : a));
}

/** Ids of refused transfer events the batch did not look up (a spent id cannot exist: not asked). */
function refusedTransferIds(submissions: readonly Submission[], results: readonly SubmissionResult[], known: ReadonlySet<string>): string[] {
  const ids = new Set<string>();
  submissions.forEach((s, i) => {
    const r = results[i];
    if (s.kind !== 'transfers' || r?.kind !== 'transfers') return;
    s.events.forEach((e, j) => {
      const code = r.results[j]?.code;
      if (code !== 'ok' && code !== 'exists' && code !== 'id_already_failed' && !known.has(e.id)) ids.add(e.id);
    });
  });
  return [...ids];
}

function transferEventIds(submissions: readonly Submission[]): string[] {
  const ids: string[] = [];
  for (const s of submissions) if (s.kind === 'transfers') for (const e of s.events) ids.push(e.id);
  return ids;
}
