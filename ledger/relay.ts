import type { Config } from '../lib/config.js';
import { ConfigError } from '../lib/errors.js';
import { createPool, sqlArray, statement, type Pool, type Queryable } from '../lib/db.js';
import type { Logger } from '../lib/logger.js';
import { connectJetStream, connectNats, type JetStreamClient, type NatsConnection } from '../lib/nats.js';
import { sleep } from '../lib/retry.js';
import { ensureEventStream } from '../lib/streams.js';
import { SpanKind, trace, type Meter } from '@opentelemetry/api';
import { headers } from '@nats-io/transport-node';
import { contextOf, inSpan, traceparentOf, tracer } from '../observability/tracing.js';
import { NATS_PAYLOAD_NEEDED, outboxSubject, outboxMessageId } from './outbox.js';

const relayTracer = tracer('outbox-relay');

interface OutboxRow {
  shard: number;
  sequence: bigint;
  batchId: string;
  part: number;
  payload: Buffer;
  traceparent: string;
}

export interface RelayLag {
  rows: number;
  oldestSeconds: number;
}

/**
 * Publishes committed outbox rows to JetStream and deletes them once acknowledged. Per shard, rows go out in
 * sequence order, many in flight at once (one await per round, not per message), and only the acknowledged
 * prefix of each shard is deleted: after a failure the rest is published again, and JetStream drops what it
 * already has by Nats-Msg-Id. The relay runs inside the ledger instance that owns the shards, so two relays
 * never publish one shard. NATS being down only makes the outbox grow; the relay reconnects and drains it.
 */
export class OutboxRelay {
  private running = false;
  private loop: Promise<void> | undefined;
  private nc: NatsConnection | undefined;
  /** Whether `nc` is connected now (it reconnects by itself after a loss). */
  private connected = false;
  private js: JetStreamClient | undefined;
  private published = 0;

  /**
   * The relay's own sessions, at REPEATABLE READ: its reads take no decision (committed outbox rows never
   * change), and at SERIALIZABLE their read locks would conflict with every transaction writing the outbox.
   * Each read and delete is then one statement, without BEGIN and COMMIT round trips.
   */
  private readonly pool: Pool;

  /** The shards published now: the fixed ones and those the last discovery found. */
  private shards: readonly number[];
  private nextDiscovery = 0;

  constructor(
    private readonly config: Config,
    private readonly fixedShards: readonly number[],
    private readonly logger: Logger,
    /**
     * Further shards to publish, asked again every `discoveryMs` (a ledger's outbox shards of shards that no
     * longer exist: rows there can still appear while instances with the old count finish a rolling change).
     */
    private readonly discoverShards?: (db: Queryable) => Promise<number[]>,
    private readonly discoveryMs = 5_000,
  ) {
    this.shards = fixedShards;
    this.pool = createPool(config, { max: 2, applicationName: 'outbox-relay', isolation: 'repeatable read' });
  }

  /** Messages published and acknowledged since start. */
  get publishedCount(): number {
    return this.published;
  }

  start(): void {
    this.running = true;
    this.loop = this.run();
  }

  async stop(): Promise<void> {
    this.running = false;
    try {
      await this.loop;
      await this.nc?.close();
    } finally {
      await this.pool.end();
    }
  }

  async lag(): Promise<RelayLag> {
    // INT4, not INT: on CockroachDB INT is INT8, which comes back a bigint, and the lag gauges take numbers only.
    const r = await this.pool.query(
      `SELECT count(*)::int4 AS rows, COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest
       FROM outbox WHERE shard = ANY($1::int4[])`,
      [sqlArray(this.shards)],
    );
    return { rows: r.rows[0].rows, oldestSeconds: r.rows[0].oldest };
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (this.running) {
      try {
        await this.discover();
        const js = await this.jetstream();
        if (!this.connected) {
          // Published while the connection is down, a message waits in the client's buffer and its acknowledgement
          // never comes: the round would wait out the whole publish timeout (10 s) after NATS is back. Wait for the
          // connection to come back instead.
          await sleep(20);
          continue;
        }
        const sent = await this.drainOnce(js);
        failures = 0;
        if (sent === 0) await sleep(20);
      } catch (error) {
        // The next round makes sure of the stream again: a NATS that came back without it (a node replaced, its
        // store lost, the stream deleted) answers every publish with "no responders", for ever, until it is created.
        this.js = undefined;
        failures++;
        if (failures === 1 || failures % 50 === 0) {
          if (error instanceof ConfigError) this.logger.error({ err: error, failures }, 'outbox relay cannot publish to this NATS; retrying');
          else this.logger.warn({ err: error, failures }, 'outbox relay round failed; retrying');
        }
        await sleep(Math.min(1000, 50 * failures));
      }
    }
  }

  /** Keeps `connected` up to date: the client reconnects by itself, for ever (lib/nats.ts). */
  private async followConnection(nc: NatsConnection): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'disconnect') this.connected = false;
      else if (s.type === 'reconnect') this.connected = true;
    }
  }

  private async discover(): Promise<void> {
    if (!this.discoverShards || Date.now() < this.nextDiscovery) return;
    const found = await this.discoverShards(this.pool);
    this.shards = [...new Set([...this.fixedShards, ...found])];
    this.nextDiscovery = Date.now() + this.discoveryMs;
  }

  private async jetstream(): Promise<JetStreamClient> {
    if (this.js) return this.js;
    if (!this.nc) {
      this.nc = await connectNats(this.config, { name: 'ledger-outbox-relay' });
      this.connected = true;
      void this.followConnection(this.nc);
    }
    const maxPayload = this.nc.info?.max_payload;
    if (maxPayload !== undefined && maxPayload < NATS_PAYLOAD_NEEDED) {
      // Published anyway, the small messages would go and the first large one would hold its shard up for good, at
      // the worst moment (a large batch, under load): refused now, the deployment fails its first smoke test.
      throw new ConfigError([
        `NATS allows messages of ${maxPayload} bytes (its max_payload); the outbox relay publishes messages of up to ${NATS_PAYLOAD_NEEDED} bytes: set max_payload to at least 1MB in the NATS server's configuration`,
      ]);
    }
    const { js, jsm } = await connectJetStream(this.nc);
    await ensureEventStream(jsm, this.config);
    this.js = js;
    return js;
  }

  /**
   * One round: publish up to LEDGER_RELAY_BATCH_ROWS rows, delete the acknowledged prefix of each shard. The rows
   * are taken from the shards in turn (each shard's oldest first, then each one's second, ...): read in shard
   * order, a backlog (after NATS was down) held back every shard behind the first until that one had drained,
   * so payment events reached risk and settlement only after all the ledger's. A shard with a backlog alone
   * still gets the whole round.
   */
  async drainOnce(js: JetStreamClient): Promise<number> {
    const rows = (
      await statement(this.pool, {
        name: 'relay-read',
        text: `SELECT shard, sequence, batch_id, part, payload, traceparent FROM (
                 SELECT o.shard, o.sequence, o.batch_id, o.part, o.payload, o.traceparent,
                        row_number() OVER (PARTITION BY o.shard ORDER BY o.sequence) AS turn
                 FROM unnest($1::int4[]) AS s (shard),
                      LATERAL (SELECT shard, sequence, batch_id, part, payload, traceparent FROM outbox
                               WHERE outbox.shard = s.shard ORDER BY sequence LIMIT $2) AS o
               ) AS taken
               ORDER BY turn, shard LIMIT $2`,
        values: [sqlArray(this.shards), this.config.LEDGER_RELAY_BATCH_ROWS],
      })
    ).rows.map((r): OutboxRow => ({ shard: r.shard, sequence: r.sequence, batchId: r.batch_id, part: r.part, payload: r.payload, traceparent: r.traceparent }));
    if (rows.length === 0) return 0;

    // Every publish is sent before any ack is awaited; one connection keeps them in order. A row written by a
    // traced operation is published in a PRODUCER span of that trace, whose traceparent travels in the headers.
    const acks = await Promise.allSettled(
      rows.map((row) => {
        const subject = outboxSubject(this.config.EVENTS_SUBJECT_PREFIX, row.shard);
        const options = { msgID: outboxMessageId(row.batchId, row.part), timeout: 10_000 };
        const parent = contextOf(row.traceparent);
        if (!row.traceparent) return js.publish(subject, row.payload, options);
        const span = relayTracer.startSpan(`${subject} publish`, { kind: SpanKind.PRODUCER, attributes: { 'messaging.system': 'nats', 'messaging.destination.name': subject, 'messaging.message.id': options.msgID } }, parent);
        const h = headers();
        const traceparent = traceparentOf(trace.setSpan(parent, span));
        if (traceparent) h.set('traceparent', traceparent);
        return inSpan(span, parent, () => js.publish(subject, row.payload, { ...options, headers: h }));
      }),
    );
    const blocked = new Set<number>();
    const done: OutboxRow[] = [];
    let firstError: unknown;
    rows.forEach((row, i) => {
      const ack = acks[i]!;
      if (blocked.has(row.shard)) return;
      if (ack.status === 'fulfilled') done.push(row);
      else {
        blocked.add(row.shard);
        firstError ??= ack.reason;
      }
    });
    if (done.length > 0) {
      await statement(this.pool, {
        name: 'relay-delete',
        text: `DELETE FROM outbox o USING unnest($1::int4[], $2::int8[]) AS d(shard, sequence)
               WHERE o.shard = d.shard AND o.sequence = d.sequence`,
        values: [sqlArray(done.map((r) => r.shard)), sqlArray(done.map((r) => r.sequence))],
      });
      this.published += done.length;
    }
    if (firstError !== undefined) throw firstError;
    return done.length;
  }
}

/** Exports the relay's progress as metrics: messages published, and the outbox's lag (rows, age of the oldest). */
export function observeRelay(meter: Meter, relay: OutboxRelay): void {
  meter.createObservableCounter('ledger_outbox_published_total', { description: 'Outbox messages published and acknowledged' }).addCallback((result) => {
    result.observe(relay.publishedCount);
  });
  // Apart from the count: the lag is a query, which fails while the database is unreachable, and in one callback
  // that failure dropped the published count from the collection too.
  const lagRows = meter.createObservableGauge('ledger_outbox_lag_rows', { description: 'Outbox messages not yet acknowledged by JetStream' });
  const lagSeconds = meter.createObservableGauge('ledger_outbox_lag_seconds', { description: 'Age of the oldest unpublished outbox message', unit: 's' });
  meter.addBatchObservableCallback(
    async (result) => {
      const lag = await relay.lag();
      result.observe(lagRows, lag.rows);
      result.observe(lagSeconds, lag.oldestSeconds);
    },
    [lagRows, lagSeconds],
  );
}
