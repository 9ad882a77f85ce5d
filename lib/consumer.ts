import { AckPolicy, DeliverPolicy, type ConsumerMessages, type JsMsg } from '@nats-io/jetstream';
import { headers } from '@nats-io/transport-node';
import { EventBatch, type EventEnvelope } from '../proto/gen/events/v1/events.js';
import type { Config } from './config.js';
import { withTransaction, type Pool, type PoolClient } from './db.js';
import type { Logger } from './logger.js';
import { connectJetStream, type JetStreamClient, type NatsConnection } from './nats.js';
import { ensureEventStream } from './streams.js';

/** Applies one event inside the consumer's transaction; throwing rolls the whole message back. */
export type EventHandler = (event: EventEnvelope, tx: PoolClient) => Promise<void>;

export interface ConsumerOptions {
  /** Durable consumer name; also the inbox key, so keep it stable. */
  name: string;
  /** Subjects under EVENTS_SUBJECT_PREFIX, e.g. `ledger.>`. */
  filter: string;
  /** Deliveries of one message before it goes to the dead-letter subject. */
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

/** Subject of a consumer's dead letters; outside the events stream, captured by the DEADLETTER stream. */
export function deadLetterSubject(prefix: string, consumer: string): string {
  return `deadletter.${prefix}.${consumer}`;
}

/**
 * The consumer framework of the risk and settlement services: a durable pull consumer on the events stream,
 * explicit acks only after the handler's transaction commits, an inbox row per event written in that same
 * transaction (a redelivery is a no-op), a failing event isolated from the rest of its message and sent to
 * the dead-letter subject after maxDeliver attempts, bounded concurrency with per-subject order (per shard for
 * ledger events; a redelivered message can come after later ones), and a drain on stop.
 */
export class EventConsumer {
  readonly stats: ConsumerStats = { messages: 0, events: 0, duplicates: 0, redeliveries: 0, deadLettered: 0 };
  private messages: ConsumerMessages | undefined;
  private loop: Promise<void> | undefined;
  private readonly chains = new Map<string, Promise<void>>();
  private js!: JetStreamClient;

  constructor(
    private readonly nc: NatsConnection,
    private readonly pool: Pool,
    private readonly config: Pick<Config, 'EVENTS_STREAM' | 'EVENTS_SUBJECT_PREFIX' | 'EVENTS_MAX_AGE_HOURS' | 'EVENTS_MAX_BYTES' | 'EVENTS_DUPLICATE_WINDOW_SECONDS' | 'NATS_STREAM_REPLICAS'>,
    private readonly options: ConsumerOptions,
    private readonly handler: EventHandler,
    private readonly logger: Logger,
  ) {}

  async start(): Promise<void> {
    const { js, jsm } = await connectJetStream(this.nc);
    this.js = js;
    await ensureEventStream(jsm, this.config);
    await ensureDeadLetterStream(jsm, this.config.NATS_STREAM_REPLICAS);
    const start = this.options.start;
    await jsm.consumers.add(this.config.EVENTS_STREAM, {
      durable_name: this.options.name,
      filter_subject: `${this.config.EVENTS_SUBJECT_PREFIX}.${this.options.filter}`,
      ack_policy: AckPolicy.Explicit,
      ack_wait: (this.options.ackWaitMs ?? 30_000) * 1_000_000,
      max_deliver: this.options.maxDeliver ?? 5,
      max_ack_pending: (this.options.concurrency ?? 8) * 4,
      ...(start === undefined
        ? { deliver_policy: DeliverPolicy.All }
        : 'sequence' in start
          ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start.sequence }
          : { deliver_policy: DeliverPolicy.StartTime, opt_start_time: start.time.toISOString() }),
    });
    const consumer = await js.consumers.get(this.config.EVENTS_STREAM, this.options.name);
    this.messages = await consumer.consume({ max_messages: this.options.concurrency ?? 8 });
    this.loop = this.dispatch(this.messages);
  }

  /** Stops taking messages, finishes the ones in hand (their acks included), and returns. */
  async stop(): Promise<void> {
    this.messages?.stop();
    await this.loop;
    await Promise.all(this.chains.values());
  }

  private async dispatch(messages: ConsumerMessages): Promise<void> {
    for await (const m of messages) {
      const previous = this.chains.get(m.subject) ?? Promise.resolve();
      const next = previous.then(() => this.process(m));
      this.chains.set(m.subject, next);
      void next.finally(() => {
        if (this.chains.get(m.subject) === next) this.chains.delete(m.subject);
      });
    }
  }

  private async process(m: JsMsg): Promise<void> {
    const deliveries = m.info.deliveryCount;
    if (deliveries > 1) this.stats.redeliveries++;
    let batch: EventBatch;
    try {
      batch = EventBatch.decode(m.data);
    } catch (error) {
      await this.deadLetter(m, m.data, `undecodable message: ${(error as Error).message}`);
      return;
    }
    try {
      // Fast path: the whole message in one transaction.
      const applied = await withTransaction(this.pool, (tx) => this.apply(tx, batch.events, false));
      this.count(batch.events.length, applied.applied);
      await m.ackAck();
      return;
    } catch (error) {
      this.logger.warn({ err: error, subject: m.subject, deliveries }, 'event message failed; isolating the failing events');
    }
    // Slow path: one savepoint per event, so the events that can be applied are, and only the failing ones
    // are delivered again (the inbox skips the others) or, past maxDeliver, dead-lettered.
    try {
      const outcome = await withTransaction(this.pool, (tx) => this.apply(tx, batch.events, true));
      this.count(batch.events.length - outcome.failed.length, outcome.applied);
      if (outcome.failed.length === 0) {
        await m.ackAck();
      } else if (deliveries >= (this.options.maxDeliver ?? 5)) {
        const failed = batch.events.filter((e) => outcome.failed.some((f) => f.eventId === e.eventId));
        const reason = outcome.failed.map((f) => `${f.eventId}: ${f.reason}`).join('; ');
        await this.deadLetter(m, EventBatch.encode({ ...batch, events: failed }).finish(), reason);
      } else {
        m.nak(Math.min(5_000, 100 * 2 ** deliveries));
      }
    } catch (error) {
      // The database itself failed: deliver the whole message again later.
      this.logger.warn({ err: error, subject: m.subject, deliveries }, 'event message failed; it will be delivered again');
      m.nak(Math.min(5_000, 100 * 2 ** deliveries));
    }
  }

  private count(seen: number, applied: number): void {
    this.stats.messages++;
    this.stats.events += applied;
    this.stats.duplicates += seen - applied;
  }

  /** Inbox rows and effects of the events not applied before; with `isolate`, a failing event is skipped. */
  private async apply(tx: PoolClient, events: readonly EventEnvelope[], isolate: boolean): Promise<{ applied: number; failed: { eventId: string; reason: string }[] }> {
    const fresh = await tx.query<{ event_id: string }>(
      `INSERT INTO consumer_inbox (consumer, event_id) SELECT $1, unnest($2::text[])
       ON CONFLICT (consumer, event_id) DO NOTHING RETURNING event_id`,
      [this.options.name, events.map((e) => e.eventId)],
    );
    const todo = new Set(fresh.rows.map((r) => r.event_id));
    const failed: { eventId: string; reason: string }[] = [];
    for (const event of events) {
      if (!todo.has(event.eventId)) continue;
      if (!isolate) {
        await this.handler(event, tx);
        continue;
      }
      await tx.query('SAVEPOINT event');
      try {
        await this.handler(event, tx);
        await tx.query('RELEASE SAVEPOINT event');
      } catch (error) {
        await tx.query('ROLLBACK TO SAVEPOINT event');
        await tx.query('DELETE FROM consumer_inbox WHERE consumer = $1 AND event_id = $2', [this.options.name, event.eventId]);
        failed.push({ eventId: event.eventId, reason: error instanceof Error ? error.message : String(error) });
      }
    }
    return { applied: todo.size - failed.length, failed };
  }

  private async deadLetter(m: JsMsg, data: Uint8Array, reason: string): Promise<void> {
    const h = headers();
    h.set('Ledgerline-Reason', reason.slice(0, 1000));
    h.set('Ledgerline-Subject', m.subject);
    h.set('Ledgerline-Stream-Sequence', String(m.seq));
    h.set('Ledgerline-Deliveries', String(m.info.deliveryCount));
    await this.js.publish(deadLetterSubject(this.config.EVENTS_SUBJECT_PREFIX, this.options.name), data, { headers: h, msgID: `${this.options.name}.${m.seq}` });
    // Terminated, not acknowledged: JetStream records that this message was given up on.
    m.term();
    this.stats.deadLettered++;
    this.logger.error({ subject: m.subject, seq: m.seq, reason }, 'events dead-lettered');
  }
}

async function ensureDeadLetterStream(jsm: Awaited<ReturnType<typeof connectJetStream>>['jsm'], replicas: number): Promise<void> {
  try {
    await jsm.streams.info('DEADLETTER');
  } catch {
    await jsm.streams.add({ name: 'DEADLETTER', subjects: ['deadletter.>'], num_replicas: replicas, duplicate_window: 120 * 1_000_000_000 });
  }
}
