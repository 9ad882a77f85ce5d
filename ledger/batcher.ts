import { InternalError, ResourceExhaustedError, UnavailableError } from '../lib/errors.js';
import type { BatchTask } from './batch.js';
import type { Submission, SubmissionResult } from './model.js';
import type { WorkerReply } from './worker.js';

/** Shared bound on events waiting in all shard queues of this instance: back-pressure instead of growth. */
export class QueueBudget {
  used = 0;
  constructor(readonly max: number) {}
}

interface Waiting {
  submission: Submission;
  size: number;
  resolve: (result: SubmissionResult) => void;
  reject: (error: Error) => void;
}

export interface BatcherOptions {
  maxEvents: number;
  /** How long the first event of an idle shard waits for company; 0 sends at the next tick. */
  windowMs: number;
}

export type BatchRunner = (task: BatchTask) => Promise<WorkerReply>;

export interface BatchObserver {
  /** After every batch: its size, how long it took, and how many transaction attempts it needed (0 if it failed). */
  onBatch?(shard: number, events: number, submissions: number, ms: number, attempts: number): void;
}

/**
 * One per shard: gathers submissions into a batch of at most `maxEvents` events and keeps at most one batch in
 * flight, so a shard never races itself. While a batch runs, the next one fills up, so under load the window
 * costs nothing and batches grow by themselves.
 */
export class ShardBatcher {
  private queue: Waiting[] = [];
  private queuedEvents = 0;
  private inFlight = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly shard: number,
    private readonly run: BatchRunner,
    private readonly options: BatcherOptions,
    private readonly budget: QueueBudget,
    private readonly observer: BatchObserver = {},
  ) {}

  get depth(): number {
    return this.queuedEvents;
  }

  submit(submission: Submission): Promise<SubmissionResult> {
    const size = submission.kind === 'expirations' ? submission.pendingIds.length : submission.events.length;
    if (this.budget.used + size > this.budget.max) {
      return Promise.reject(new ResourceExhaustedError('ledger_overloaded', `ledger queue full (${this.budget.used} events waiting)`, 1));
    }
    this.budget.used += size;
    this.queuedEvents += size;
    return new Promise((resolve, reject) => {
      this.queue.push({ submission, size, resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.inFlight || this.timer || this.queue.length === 0) return;
    if (this.queuedEvents >= this.options.maxEvents || this.options.windowMs === 0) {
      this.timer = setImmediate(() => this.flush()) as unknown as NodeJS.Timeout;
    } else {
      this.timer = setTimeout(() => this.flush(), this.options.windowMs);
    }
  }

  private flush(): void {
    this.timer = undefined;
    if (this.inFlight || this.queue.length === 0) return;
    const batch: Waiting[] = [];
    let events = 0;
    while (this.queue.length > 0 && (batch.length === 0 || events + this.queue[0]!.size <= this.options.maxEvents)) {
      const next = this.queue.shift()!;
      batch.push(next);
      events += next.size;
    }
    this.queuedEvents -= events;
    this.budget.used -= events;
    this.inFlight = true;
    const started = performance.now();
    let attempts = 0;
    this.run({ shard: this.shard, submissions: batch.map((w) => w.submission) })
      .then(
        (reply) => {
          if (reply.ok) {
            attempts = reply.outcome.attempts;
            reply.outcome.results.forEach((result, i) => batch[i]!.resolve(result));
          } else {
            const error = reply.kind === 'unavailable' ? new UnavailableError('database_unavailable', reply.message) : new InternalError(reply.message);
            for (const w of batch) w.reject(error);
          }
        },
        (error: unknown) => {
          // The worker thread died or was terminated: whether the batch committed is unknown. The callers
          // retry with the same ids, which makes that safe.
          const failure = new UnavailableError('ledger_worker_failed', 'ledger worker failed; retry with the same ids', 1, { cause: error });
          for (const w of batch) w.reject(failure);
        },
      )
      .finally(() => {
        this.observer.onBatch?.(this.shard, events, batch.length, performance.now() - started, attempts);
        this.inFlight = false;
        this.schedule();
      });
  }
}
