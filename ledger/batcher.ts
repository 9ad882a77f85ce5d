import { context, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';
import { InternalError, ResourceExhaustedError, UnavailableError } from '../lib/errors.js';
import type { StatementTiming } from '../lib/db.js';
import { linksTo, traceparentOf, tracer } from '../observability/tracing.js';
import type { BatchTask } from './batch.js';
import { CommitHorizon } from './clock.js';
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
  /** The caller's trace context: the batch span links to it. */
  context: Context;
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
  /** After every batch: its size, how long it took, its transaction attempts (0 if unknown: the worker died), and whether it failed. */
  onBatch?(shard: number, events: number, submissions: number, ms: number, attempts: number, failed: boolean): void;
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
    /** Shared by the shards of one instance (LedgerRouter): each batch is a write open from dispatch to answer. */
    private readonly commits: CommitHorizon = new CommitHorizon(),
  ) {}

  get depth(): number {
    return this.queuedEvents;
  }

  submit(submission: Submission): Promise<SubmissionResult> {
    const size = submission.kind === 'expirations' ? submission.pendingIds.length : submission.events.length;
    // The sweeper's releases are admitted whatever the callers filled: under sustained overload they would
    // otherwise never run, and the expired holds stay on the accounts. They stay bounded (a batch's worth per
    // shard and pass, one pass at a time: ExpirySweeper) and count against the callers' room while they wait.
    if (submission.kind !== 'expirations' && this.budget.used + size > this.budget.max) {
      return Promise.reject(new ResourceExhaustedError('ledger_overloaded', `ledger queue full (${this.budget.used} events waiting)`, 1));
    }
    this.budget.used += size;
    this.queuedEvents += size;
    return new Promise((resolve, reject) => {
      this.queue.push({ submission, size, context: context.active(), resolve, reject });
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
    // Its timestamps are at least the stamp of its dispatch (batch.ts): listings know what it can still commit.
    const write = this.commits.begin();
    this.inFlight = true;
    // runBatch settles every caller and never rejects. Whatever happens in there, the shard takes its next batch:
    // one stuck flag would hang every later call of it.
    void this.runBatch(batch, events, write.timestamp).finally(() => {
      this.commits.end(write);
      this.inFlight = false;
      this.schedule();
    });
  }

  /** Runs one batch and settles every caller in it, whatever throws: the runner, the worker or this bookkeeping. */
  private async runBatch(batch: readonly Waiting[], events: number, notBefore: bigint): Promise<void> {
    const started = performance.now();
    let attempts = 0;
    let failed = true;
    let span: Span | undefined;
    try {
      span = batchSpan(this.shard, batch, events);
      const traced = span.isRecording();
      let reply: WorkerReply;
      try {
        reply = await this.run({
          shard: this.shard,
          submissions: batch.map((w) => w.submission),
          traceparent: traced ? traceparentOf(trace.setSpan(ROOT_CONTEXT, span)) : '',
          timeStatements: traced,
          notBefore,
        });
      } catch (error) {
        // The worker thread died or was terminated: whether the batch committed is unknown. The callers
        // retry with the same ids, which makes that safe.
        span.setStatus({ code: SpanStatusCode.ERROR, message: 'worker failed' });
        rejectAll(batch, new UnavailableError('ledger_worker_failed', 'ledger worker failed; retry with the same ids', 1, { cause: error }));
        return;
      }
      if (reply.ok) {
        attempts = reply.outcome.attempts;
        if (reply.outcome.results.length !== batch.length) throw new InternalError(`batch of ${batch.length} submissions answered with ${reply.outcome.results.length} results`);
        // Before any caller hears of it: a listing a caller makes next must count these timestamps as committed.
        this.commits.observe(reply.outcome.lastTimestamp);
        reply.outcome.results.forEach((result, i) => batch[i]!.resolve(result));
        failed = false;
        if (traced) statementSpans(span, reply.outcome.statements ?? []);
      } else {
        // Its attempts and statements too: a failed batch's trace shows which statement failed, how often.
        attempts = reply.attempts ?? 0;
        if (traced) statementSpans(span, reply.statements ?? []);
        span.setStatus({ code: SpanStatusCode.ERROR, message: reply.message });
        rejectAll(batch, reply.kind === 'unavailable' ? new UnavailableError(reply.code, reply.message) : new InternalError(reply.message));
      }
    } catch (error) {
      // A fault of this process's own (a span, a reply shorter than the batch): whether the batch committed is
      // unknown to the callers not answered yet (settling the others again does nothing); their retries with the
      // same ids are safe.
      rejectAll(batch, new UnavailableError('ledger_batch_failed', 'ledger batch failed; retry with the same ids', 1, { cause: error }));
    } finally {
      try {
        span?.setAttribute('ledger.batch.attempts', attempts);
        span?.end();
        this.observer.onBatch?.(this.shard, events, batch.length, performance.now() - started, attempts, failed);
      } catch {
        // Metrics and traces are not worth a stuck shard; their own failures show in them.
      }
    }
  }
}

function rejectAll(batch: readonly Waiting[], error: Error): void {
  for (const w of batch) w.reject(error);
}

const ledgerTracer = tracer('ledger');

/**
 * One batch serves many requests: its span is a child of the first traced caller (so a lone request's trace
 * is one tree) and links to every caller's span (so each request's trace finds the batch that served it).
 */
function batchSpan(shard: number, batch: readonly Waiting[], events: number): Span {
  const parent = batch.find((w) => trace.getSpan(w.context)?.isRecording())?.context ?? batch[0]?.context ?? ROOT_CONTEXT;
  return ledgerTracer.startSpan(
    'ledger.batch',
    {
      kind: SpanKind.INTERNAL,
      attributes: { 'ledger.shard': shard, 'ledger.batch.events': events, 'ledger.batch.submissions': batch.length },
      links: linksTo(batch.map((w) => w.context)),
    },
    parent,
  );
}

/** The worker's statements as CLIENT spans under the batch span, with the times the worker measured. */
function statementSpans(batch: Span, statements: readonly StatementTiming[]): void {
  const parent = trace.setSpan(ROOT_CONTEXT, batch);
  for (const t of statements) {
    const span = ledgerTracer.startSpan(
      `pg ${t.name || t.operation}`,
      { kind: SpanKind.CLIENT, startTime: t.start, attributes: { 'db.system.name': 'postgresql', 'db.operation.name': t.operation, 'ledger.batch.attempt': t.attempt } },
      parent,
    );
    if (t.failed) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end(t.end || t.start);
  }
}
