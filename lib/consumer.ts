import type { Meter } from '@opentelemetry/api';
import { AckPolicy, DeliverPolicy, JetStreamApiCodes, JetStreamApiError, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { EventBatch, type EventEnvelope } from '../proto/gen/events/v1/events.js';
import type { Config } from './config.js';
import { asAppError, deleteInChunks, withTransaction, type Pool, type PoolClient } from './db.js';
import { AppError } from './errors.js';
import type { Logger } from './logger.js';
import { connectJetStream, type JetStreamClient, type NatsConnection } from './nats.js';
import { PeriodicTask } from './periodic.js';
import { sleep } from './retry.js';
import { ensureDeadLetterStream, ensureEventStream } from './streams.js';
import { SpanKind } from '@opentelemetry/api';
import { contextOf, inSpan, tracer } from '../observability/tracing.js';

const consumerTracer = tracer('consumer');

/** Applies one event inside the consumer's transaction; throwing rolls the whole message back. */
export type EventHandler = (event: EventEnvelope, tx: PoolClient) => Promise<void>;

export interface ConsumerOptions {
  /** Durable consumer name; also the inbox key, so keep it stable. */
  name: string;
  /** Subjects under EVENTS_SUBJECT_PREFIX, e.g. `ledger.>`. */
  filter: string;
  /** Attempts at a failing event before it goes to the dead-letter subject. */
  maxDeliver?: number;
  /** How long a delivery may take before JetStream delivers it again. */
  ackWaitMs?: number;
  /** Messages processed at once (messages of one subject are still processed one after the other). */
  concurrency?: number;
  /** Where to start a new durable: everything (default), or from a stream sequence or time (replays). */
  start?: { sequence: number } | { time: Date };
}

export interface ConsumerStats {
  messages: number;
  events: number;
  duplicates: number;
  redeliveries: number;
  deadLettered: number;
}

/** How often a consumer prunes its inbox (each run deletes every row past the retention). */
const INBOX_PRUNE_INTERVAL_MS = 10 * 60_000;
/** Inbox rows deleted per statement when pruning: short transactions beside the consumer's own inserts. */
const INBOX_PRUNE_ROWS = 5_000;

/**
 * Deletes a consumer's inbox rows applied more than `retentionHours` ago; returns how many. Without this the
 * inbox grows by a row per event for ever. A row may go once no delivery of its event can come any more: the
 * stream discards events after EVENTS_MAX_AGE_HOURS, which the retention is at least (lib/config.ts), so a
 * redelivery or a replay still finds the row. A relay publishing a committed row again (after a crash before
 * it deleted the row) does so when its ledger is back: within the retention unless it was down longer.
 */
export async function pruneInbox(pool: Pool, consumer: string, retentionHours: number, rowsPerStatement = INBOX_PRUNE_ROWS): Promise<number> {
  return deleteInChunks(
    pool,
    {
      name: 'consumer-inbox-prune',
      text: `DELETE FROM consumer_inbox WHERE (consumer, event_id) IN (
               SELECT consumer, event_id FROM consumer_inbox WHERE consumer = $1 AND processed_at < now() - ($2::INT8 * INTERVAL '1 hour')
               ORDER BY processed_at LIMIT $3)`,
      values: [consumer, retentionHours],
    },
    rowsPerStatement,
  );
}

/** Subject of a consumer's dead letters; outside the events stream, captured by the DEADLETTER stream. */
export function deadLetterSubject(prefix: string, consumer: string): string {
  return `deadletter.${prefix}.${consumer}`;
}

/**
 * The consumer framework of the risk and settlement services: a durable pull consumer on the events stream,
 * explicit acks only after the handler's transaction commits, an inbox row per event written in that same
 * transaction (a redelivery is a no-op), a failing event isolated from the rest of its message, retried in
 * place and sent to the dead-letter subject after maxDeliver attempts, bounded concurrency with per-subject
 * order (per shard for ledger events, so per debit account), and a drain on stop.
 */
export class EventConsumer {
  readonly stats: ConsumerStats = { messages: 0, events: 0, duplicates: 0, redeliveries: 0, deadLettered: 0 };
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private stopping = false;
  private readonly chains = new Map<string, Promise<void>>();
  private js!: JetStreamClient;
  private pruning: PeriodicTask | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly pool: Pool,
    private readonly config: Pick<
      Config,
      'EVENTS_STREAM' | 'EVENTS_SUBJECT_PREFIX' | 'EVENTS_MAX_AGE_HOURS' | 'EVENTS_MAX_BYTES' | 'EVENTS_DUPLICATE_WINDOW_SECONDS' | 'NATS_STREAM_REPLICAS' | 'CONSUMER_INBOX_RETENTION_HOURS' | 'DEADLETTER_MAX_AGE_DAYS' | 'DEADLETTER_MAX_BYTES'
    >,
    private readonly options: ConsumerOptions,
    private readonly handler: EventHandler,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    this.messages = await this.subscribe();
    this.loop = this.run();
    const { name } = this.options;
    this.pruning = new PeriodicTask(`${name} inbox pruning`, () => pruneInbox(this.pool, name, this.config.CONSUMER_INBOX_RETENTION_HOURS), INBOX_PRUNE_INTERVAL_MS, this.logger);
    this.pruning.start();
  }

  /** Makes sure of the streams and of the durable, and pulls from it. */
  private async subscribe(): Promise<ConsumerMessages> {
    const { js, jsm } = await connectJetStream(this.nc);
    this.js = js;
    await ensureEventStream(jsm, this.config);
    await ensureDeadLetterStream(jsm, this.config);
    const start = this.options.start;
    // The start position applies when the durable is created: JetStream refuses to change it afterwards ("deliver
    // policy can not be updated"), and a replay (rewindConsumer) re-creates the durable with a position of its own,
    // so an existing durable keeps the position it has.
    const existing = await jsm.consumers.info(this.config.EVENTS_STREAM, this.options.name).catch((error: unknown) => {
      if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound) return undefined;
      throw error;
    });
    await jsm.consumers.add(this.config.EVENTS_STREAM, {
      durable_name: this.options.name,
      filter_subject: `${this.config.EVENTS_SUBJECT_PREFIX}.${this.options.filter}`,
      ack_policy: AckPolicy.Explicit,
      ack_wait: (this.options.ackWaitMs ?? 30_000) * 1_000_000,
      // Dead-lettering is decided by this process's own attempts (retried in place); JetStream redelivers
      // only after a crash or a lost connection, and gives up only as a backstop far beyond that.
      max_deliver: this.maxDeliveries,
      max_ack_pending: (this.options.concurrency ?? 8) * 4,
      ...(existing !== undefined
        ? {
            deliver_policy: existing.config.deliver_policy,
            ...(existing.config.opt_start_seq !== undefined ? { opt_start_seq: existing.config.opt_start_seq } : {}),
            ...(existing.config.opt_start_time !== undefined ? { opt_start_time: existing.config.opt_start_time } : {}),
          }
        : start === undefined
        ? { deliver_policy: DeliverPolicy.All }
        : 'sequence' in start
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start.sequence }
          : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: start.time.toISOString() }),
    });
    const consumer = await js.consumers.get(this.config.EVENTS_STREAM, this.options.name);
    // Short pulls, and a durable or stream found missing ends the pulls: left to themselves, they would wait for
    // ever for a durable that nobody creates again (NATS back without its store, the stream deleted); run() does.
    return consumer.consume({ max_messages: this.options.concurrency ?? 8, expires: 5_000, abort_on_missing_resource: true });
  }

  /** Dispatches the messages pulled; when the durable or the stream is lost, makes sure of them again and goes on. */
  private async run(): Promise<void> {
    for (let messages = this.messages!; ; ) {
      try {
        await this.dispatch(messages);
      } catch (error) {
        if (!this.stopping) this.logger.warn({ err: error }, 'event consumer lost its durable or stream; setting it up again');
      }
      for (let attempt = 1; ; attempt++) {
        if (this.stopping || this.nc.isClosed()) return;
        // A pause first: a replay (rewindConsumer) deletes the durable and at once creates it again, at its own
        // position, which subscribe() then keeps.
        await sleep(Math.min(5_000, 1_000 * attempt));
        if (this.stopping || this.nc.isClosed()) return;
        try {
          messages = await this.subscribe();
        } catch (error) {
          this.logger.warn({ err: error, attempt }, 'event consumer not set up again yet; retrying');
          continue;
        }
        if (this.stopping) {
          messages.stop();
          return;
        }
        this.messages = messages;
        break;
      }
    }
  }

  /** JetStream's deliveries of a message at most: a backstop far beyond this process's own attempts. */
  private get maxDeliveries(): number {
    return (this.options.maxDeliver ?? 5) * 10;
  }

  /** Messages of the stream this consumer has not yet acknowledged: pending delivery plus in hand. */
  async lag(): Promise<{ pending: number; inHand: number }> {
    const { jsm } = await connectJetStream(this.nc);
    const info = await jsm.consumers.info(this.config.EVENTS_STREAM, this.options.name);
    return { pending: info.num_pending, inHand: info.num_ack_pending };
  }

  /** Stops taking messages, finishes the ones in hand (their acks included), and returns. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.messages?.stop();
    await this.pruning?.stop();
    await this.loop;
    await Promise.all(this.chains.values());
  }

  private async dispatch(messages: ConsumerMessages): Promise<void> {
    const ackWaitMs = this.options.ackWaitMs ?? 30_000;
    for await (const m of messages) {
      // The message stays in hand until it is processed: while it waits behind others of its subject (one retried
      // in place through a database outage, say), its ack deadline is pushed back. Otherwise JetStream delivers it
      // again every ack_wait, max_deliver times, and then gives up on it for good: an event lost once the process
      // restarts before applying its first copy.
      const keepAlive = setInterval(() => {
        try {
          m.working();
        } catch {
          // The connection is closed: JetStream delivers the message again after ack_wait.
        }
      }, ackWaitMs / 3);
      const previous = this.chains.get(m.subject) ?? Promise.resolve();
      const next = previous
        .then(() =>
          this.process(m).catch((error: unknown) => {
            // NATS itself failed (ack, dead-letter publish): JetStream delivers the message again after
            // ack_wait, and the inbox makes that safe. The subject's chain goes on.
            this.logger.warn({ err: error, subject: m.subject }, 'event message left unacknowledged');
          }),
        )
        .finally(() => clearInterval(keepAlive));
      this.chains.set(m.subject, next);
      void next.finally(() => {
        if (this.chains.get(m.subject) === next) this.chains.delete(m.subject);
      });
    }
  }

  /**
   * Applies one message in event order. At the first event that fails, the events before it are committed
   * and it is retried in place (the message's ack deadline extended meanwhile), so neither the events after
   * it nor later messages of the same subject overtake it: per-subject order holds through failures. After
   * maxDeliver attempts the event goes alone to the dead-letter subject and the rest of the message goes on.
   * A process that dies mid-way leaves the message unacknowledged; JetStream delivers it again, in order.
   */
  private async process(m: JsMsg): Promise<void> {
    // The message continues the trace of the operation that wrote it (traceparent header set by the relay).
    const parent = contextOf(m.headers?.get('traceparent'));
    const span = consumerTracer.startSpan(`${m.subject} process`, {
      kind: SpanKind.CONSUMER,
      attributes: { 'messaging.system': 'nats', 'messaging.destination.name': m.subject, 'messaging.consumer.group.name': this.options.name, 'messaging.nats.delivery_count': m.info.deliveryCount },
    }, parent);
    return inSpan(span, parent, () => this.processInSpan(m));
  }

  private async processInSpan(m: JsMsg): Promise<void> {
    if (m.info.deliveryCount > 1) this.stats.redeliveries++;
    // JetStream's last delivery of the message: none before it was acknowledged, so the process holding it died
    // each time (a message that crashes the process, a crash loop). Should this one die too, JetStream would drop
    // the message without a trace; it goes to the dead letters instead, for a replay once the cause is fixed.
    if (m.info.deliveryCount >= this.maxDeliveries) {
      await this.deadLetter(m, m.data, `delivered ${m.info.deliveryCount} times without being acknowledged: the process applying it died each time?`, 0, '');
      m.term();
      return;
    }
    let batch: EventBatch;
    try {
      batch = EventBatch.decode(m.data);
    } catch (error) {
      await this.deadLetter(m, m.data, `undecodable message: ${(error as Error).message}`, 1, '');
      m.term();
      return;
    }
    const maxAttempts = this.options.maxDeliver ?? 5;
    const deadLettered = new Set<string>();
    // Committed by an attempt that stopped at a later event: not sent through the inbox again at each retry, where
    // they would count as duplicates (events_consumer_duplicates_total) though nothing was delivered twice.
    const committed = new Set<string>();
    let failing = '';
    let attempts = 0;
    let outage = 0;
    for (;;) {
      const events = batch.events.filter((e) => !deadLettered.has(e.eventId) && !committed.has(e.eventId));
      let failure: { eventId: string; reason: string } | undefined;
      try {
        failure = await this.applyInOrder(events);
      } catch (error) {
        const cause = asAppError(error);
        if (cause instanceof AppError && cause.kind === 'unavailable') {
          // The database is down or contended: no fault of the message's. Waited out in place, however long,
          // and never counted toward the dead letter (a database restart must not dead-letter what was in hand).
          if (this.stopping) return; // left unacknowledged: delivered again, in order
          outage++;
          this.logger.warn({ subject: m.subject, outage, reason: cause.message }, 'database unavailable; message retried in place');
          m.working();
          await sleep(Math.min((this.options.ackWaitMs ?? 30_000) / 3, 5_000, 50 * 2 ** Math.min(outage, 10)));
          m.working();
          continue;
        }
        // Any other failure of the whole message is retried, then dead-lettered like a failing event.
        failure = { eventId: '', reason: error instanceof Error ? error.message : String(error) };
      }
      if (!failure) {
        await m.ackAck();
        return;
      }
      const failed = events.findIndex((e) => e.eventId === failure.eventId);
      for (const e of events.slice(0, Math.max(0, failed))) committed.add(e.eventId);
      attempts = failure.eventId === failing ? attempts + 1 : 1;
      failing = failure.eventId;
      if (attempts >= maxAttempts) {
        if (failure.eventId === '') {
          await this.deadLetter(m, EventBatch.encode({ ...batch, events }).finish(), failure.reason, attempts, '');
          m.term();
          return;
        }
        const poison = events.filter((e) => e.eventId === failure.eventId);
        await this.deadLetter(m, EventBatch.encode({ ...batch, events: poison }).finish(), `${failure.eventId}: ${failure.reason}`, attempts, failure.eventId);
        deadLettered.add(failure.eventId);
        continue;
      }
      this.stats.redeliveries++;
      this.logger.warn({ subject: m.subject, attempts, event: failure.eventId, reason: failure.reason }, 'event failed; retrying in place');
      // Each wait stays well inside the ack deadline, which working() pushes back.
      m.working();
      await sleep(Math.min((this.options.ackWaitMs ?? 30_000) / 3, 5_000, 50 * 2 ** attempts));
      m.working();
    }
  }

  /**
   * The whole message in one transaction; if that fails, event by event up to the first failing one, which
   * is returned (the events before it are committed). Nothing returned: every event is applied.
   */
  private async applyInOrder(events: readonly EventEnvelope[]): Promise<{ eventId: string; reason: string } | undefined> {
    try {
      const { applied } = await withTransaction(this.pool, (tx) => this.apply(tx, events, false));
      this.count(events.length, applied);
      return undefined;
    } catch {
      const outcome = await withTransaction(this.pool, (tx) => this.apply(tx, events, true));
      this.count(outcome.seen, outcome.applied);
      return outcome.failed;
    }
  }

  private count(seen: number, applied: number): void {
    this.stats.messages++;
    this.stats.events += applied;
    this.stats.duplicates += seen - applied;
  }

  /**
   * Inbox rows and effects of the events not applied before. With `stopAtFailure`, a failing event is rolled
   * back to its savepoint and it and every later event are left for the next attempt (their inbox rows undone).
   */
  private async apply(
    tx: PoolClient,
    events: readonly EventEnvelope[],
    stopAtFailure: boolean,
  ): Promise<{ seen: number; applied: number; failed?: { eventId: string; reason: string } }> {
    const fresh = await tx.query<{ event_id: string }>(
      `INSERT INTO consumer_inbox (consumer, event_id) SELECT $1::text, unnest($2::text[])
       ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id`,
      [this.options.name, events.map((e) => e.eventId)],
    );
    const todo = new Set(fresh.rows.map((r) => r.event_id));
    let applied = 0;
    for (let i = 0; i < events.length; i++) {
      const event = events[i]!;
      if (!todo.has(event.eventId)) continue;
      if (!stopAtFailure) {
        await this.handler(event, tx);
        applied++;
        continue;
      }
      await tx.query('SAVEPOINT event');
      try {
        await this.handler(event, tx);
        await tx.query('RELEASE SAVEPOINT event');
        applied++;
      } catch (error) {
        // The database's trouble (contention, a lost connection) is not the event's fault: counted as its failure,
        // a valid event would be dead-lettered under load. Thrown, it fails the transaction (retried, or waited out
        // in place as unavailable by process()).
        const cause = asAppError(error);
        if (cause instanceof AppError && cause.kind === 'unavailable') throw error;
        await tx.query('ROLLBACK TO SAVEPOINT event');
        const later = events.slice(i).map((e) => e.eventId).filter((id) => todo.has(id));
        await tx.query('DELETE FROM consumer_inbox WHERE consumer = $1 AND event_id = ANY($2::text[])', [this.options.name, later]);
        return { seen: i, applied, failed: { eventId: event.eventId, reason: error instanceof Error ? error.message : String(error) } };
      }
    }
    return { seen: events.length, applied };
  }

  private async deadLetter(m: JsMsg, data: Uint8Array, reason: string, attempts: number, eventId: string): Promise<void> {
    const h = headers();
    h.set('Ledgerline-Reason', reason.slice(0, 1000));
    h.set('Ledgerline-Subject', m.subject);
    h.set('Ledgerline-Stream-Sequence', String(m.seq));
    h.set('Ledgerline-Attempts', String(attempts));
    h.set('Ledgerline-Deliveries', String(m.info.deliveryCount));
    await this.js.publish(deadLetterSubject(this.config.EVENTS_SUBJECT_PREFIX, this.options.name), data, { headers: h, msgID: `${this.options.name}.${m.seq}.${eventId || 'all'}` });
    this.stats.deadLettered++;
    this.logger.error({ subject: m.subject, seq: m.seq, reason }, 'events dead-lettered');
  }
}

/**
 * Replay: moves a durable consumer back to a stream sequence or time, keeping its name and settings (delete
 * and re-create; the running service's pull loop picks the new position up). Every event from there on is
 * delivered again, and the consumer's inbox applies only those whose effect is missing: for recovery after
 * a restore, or a backfill after a fix.
 */
export async function rewindConsumer(nc: NatsConnection, stream: string, name: string, start: { sequence: number } | { time: Date }): Promise<void> {
  const { jsm } = await connectJetStream(nc);
  const { config } = await jsm.consumers.info(stream, name);
  await jsm.consumers.delete(stream, name);
  const { opt_start_seq: _seq, opt_start_time: _time, ...kept } = config;
  await jsm.consumers.add(stream, {
    ...kept,
    ...('sequence' in start
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start.sequence }
      : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: start.time.toISOString() }),
  });
}

/** Exports a consumer's progress as metrics: effects applied, duplicates skipped, retries, dead letters, lag. */
export function observeConsumer(meter: Meter, consumer: EventConsumer, name: string): void {
  const attributes = { consumer: name };
  const counters = {
    events: meter.createObservableCounter('events_consumer_applied_total', { description: 'Events whose effect was applied' }),
    duplicates: meter.createObservableCounter('events_consumer_duplicates_total', { description: 'Events skipped by the inbox (already applied)' }),
    redeliveries: meter.createObservableCounter('events_consumer_retries_total', { description: 'Deliveries and in-place attempts after the first' }),
    deadLettered: meter.createObservableCounter('events_consumer_dead_lettered_total', { description: 'Events sent to the dead-letter subject' }),
  };
  meter.addBatchObservableCallback(
    (result) => {
      result.observe(counters.events, consumer.stats.events, attributes);
      result.observe(counters.duplicates, consumer.stats.duplicates, attributes);
      result.observe(counters.redeliveries, consumer.stats.redeliveries, attributes);
      result.observe(counters.deadLettered, consumer.stats.deadLettered, attributes);
    },
    Object.values(counters),
  );
  // Apart: the lag is a JetStream request, which fails while NATS reconnects (or the consumer is re-created by a
  // replay); in one callback with the counters, that failure dropped them all from the collection (dead letters too).
  meter.createObservableGauge('events_consumer_lag_messages', { description: 'Stream messages not yet delivered to the consumer' }).addCallback(async (result) => {
    result.observe((await consumer.lag()).pending, attributes);
  });
}
