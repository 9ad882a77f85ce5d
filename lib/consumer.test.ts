import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { account, commitTransfers, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { TestNatsServer } from '../test/nats-server.js';
import { testConfig, testPool } from '../test/support.js';
import { EventBatch } from '../proto/gen/events/v1/events.js';
import { EventConsumer, deadLetterSubject, observeConsumer, pruneInbox, rewindConsumer, type EventHandler } from './consumer.js';
import { startMetrics } from '../observability/metrics.js';
import { freePort } from '../test/ledger-process.js';
import { createPool, withTransaction, type Pool } from './db.js';
import { TcpProxy } from '../test/tcp-proxy.js';
import { createLogger } from './logger.js';
import { connectJetStream, connectNats, type NatsConnection } from './nats.js';

describe('event consumer framework (own NATS server, real PostgreSQL)', function () {
  this.timeout(120_000);
  let nats: TestNatsServer;
  let pool: Pool;
  let nc: NatsConnection;
  let env: Record<string, string>;
  let ledger: TestLedger;
  const logger = createLogger('consumer-test', 'silent');

  before(async () => {
    nats = await TestNatsServer.start();
    pool = testPool();
    nc = await connectNats({ NATS_URL: nats.url }, { name: 'consumer-test' });
    await pool.query(
      'CREATE TABLE IF NOT EXISTS consumer_test_effects (consumer TEXT NOT NULL, transfer_id UUID NOT NULL, amount INT8 NOT NULL, debit_account_id UUID NOT NULL, occurred_at INT8 NOT NULL, applied_order INT8 NOT NULL)',
    );
  });
  beforeEach(async () => {
    await pool.query('DELETE FROM outbox');
    const suffix = randomUUID().slice(0, 8);
    env = { LEDGER_RELAY_ENABLED: 'true', NATS_URL: nats.url, EVENTS_STREAM: `CONSUMER_TEST_${suffix}`, EVENTS_SUBJECT_PREFIX: `consumertest-${suffix}` };
    ledger = await startTestLedger(env);
  });
  afterEach(async () => {
    await ledger.close();
    // Each stream reserves EVENTS_MAX_BYTES (10 GiB) of the test server's store: a few left behind fill it.
    await (await connectJetStream(nc)).jsm.streams.delete(env['EVENTS_STREAM']!).catch(() => undefined);
  });
  after(async () => {
    await pool.query('DROP TABLE IF EXISTS consumer_test_effects');
    await nc.close();
    await nats.stop();
    await pool.end();
  });


  /** The effect of the test's consumers: one row per applied transfer event, numbered in the order applied. */
  let appliedOrder = 0;
  const recordTransfer =
    (name: string, fail: (transferId: string) => boolean): EventHandler =>
    async (event, tx) => {
      if (event.payload?.$case !== 'transfer') return;
      const t = event.payload.value;
      if (fail(t.transferId)) throw new Error(`refusing ${t.transferId}`);
      await tx.query('INSERT INTO consumer_test_effects (consumer, transfer_id, amount, debit_account_id, occurred_at, applied_order) VALUES ($1, $2, $3, $4, $5, $6)', [
        name,
        t.transferId,
        t.amount,
        t.debitAccountId,
        event.occurredAt,
        ++appliedOrder,
      ]);
    };

  /** Per debit account, effects were applied in ledger-timestamp order. */
  async function assertPerAccountOrder(name: string): Promise<void> {
    const rows = await withTransaction(pool, (c) => c.query('SELECT debit_account_id, occurred_at FROM consumer_test_effects WHERE consumer = $1 ORDER BY applied_order', [name]), { readOnly: true });
    const last = new Map<string, bigint>();
    for (const r of rows.rows) {
      assert.ok(r.occurred_at > (last.get(r.debit_account_id) ?? 0n), `account ${r.debit_account_id}: an event at ${r.occurred_at} was applied after one at ${last.get(r.debit_account_id)}`);
      last.set(r.debit_account_id, r.occurred_at);
    }
  }

  async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 60_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await condition())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  async function effects(name: string): Promise<Map<string, { count: number; amount: bigint }>> {
    const rows = await withTransaction(pool, (c) => c.query('SELECT transfer_id, count(*)::int AS n, sum(amount)::int8 AS amount FROM consumer_test_effects WHERE consumer = $1 GROUP BY transfer_id', [name]), { readOnly: true });
    return new Map(rows.rows.map((r) => [r.transfer_id, { count: r.n, amount: r.amount }]));
  }

  it('applies every committed transfer exactly once despite failures, redeliveries, a restart and a replayed message', async () => {
    const name = `effects-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    const failedOnce = new Set<string>();
    // About one transfer in eight fails the first time it is seen: its whole message is rolled back and redelivered.
    const handler = recordTransfer(name, (id) => id.endsWith('7') && !failedOnce.has(id) && (failedOnce.add(id), true));
    let consumer = new EventConsumer(nc, pool, config, { name, filter: 'ledger.>', maxDeliver: 10, ackWaitMs: 5_000, concurrency: 4 }, handler, logger);
    await consumer.start();
    const first = await commitTransfers(ledger.client, 1500);
    await waitFor(async () => (await effects(name)).size >= 500, 'some effects before the restart');
    await consumer.stop();
    const redeliveriesBefore = consumer.stats.redeliveries;

    consumer = new EventConsumer(nc, pool, config, { name, filter: 'ledger.>', maxDeliver: 10, ackWaitMs: 5_000, concurrency: 4 }, handler, logger);
    await consumer.start();
    const second = await commitTransfers(ledger.client, 1500);
    const all = [...first, ...second];
    await waitFor(async () => (await effects(name)).size >= all.length, 'every transfer applied');

    // A message delivered again under a new dedupe id (as a replay would): the inbox makes it a no-op.
    const { js, jsm } = await connectJetStream(nc);
    const info = await jsm.streams.info(env['EVENTS_STREAM']!);
    const stored = await jsm.streams.getMessage(env['EVENTS_STREAM']!, { seq: info.state.first_seq });
    await js.publish(stored!.subject, stored!.data, { msgID: randomUUID() });
    const replayed = EventBatch.decode(stored!.data).events.length;
    await waitFor(async () => consumer.stats.duplicates >= replayed, 'the replayed message to be seen');
    await waitFor(async () => JSON.stringify(await consumer.lag()) === JSON.stringify({ pending: 0, inHand: 0 }), 'no message left unacknowledged');
    await consumer.stop();

    const applied = await effects(name);
    for (const t of all) {
      assert.deepEqual(applied.get(t.id), { count: 1, amount: t.amount }, `transfer ${t.id}`);
    }
    assert.equal(applied.size, all.length);
    assert.ok(failedOnce.size > 50, `only ${failedOnce.size} injected failures`);
    assert.ok(redeliveriesBefore + consumer.stats.redeliveries > 0, 'no retry happened');
    await assertPerAccountOrder(name);
  });

  it('replay: a consumer rewound to the start re-applies exactly the effects that were lost, and starts again after it', async () => {
    const name = `replay-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    let consumer = new EventConsumer(nc, pool, config, { name, filter: 'ledger.>', concurrency: 4 }, recordTransfer(name, () => false), logger);
    await consumer.start();
    try {
      const transfers = await commitTransfers(ledger.client, 600);
      await waitFor(async () => (await effects(name)).size >= transfers.length, 'every transfer applied');
      // A restore from an older backup loses the effects (and inbox rows) of some events.
      const lost = transfers.filter((_, i) => i % 5 === 0).map((t) => t.id);
      await withTransaction(pool, async (c) => {
        const events = await c.query(
          `DELETE FROM consumer_test_effects WHERE consumer = $1 AND transfer_id = ANY($2::uuid[]) RETURNING transfer_id`,
          [name, lost],
        );
        assert.equal(events.rowCount, lost.length);
      });
      // Their inbox rows go too, found through the stream's events.
      const { jsm } = await connectJetStream(nc);
      const info = await jsm.streams.info(env['EVENTS_STREAM']!);
      const lostSet = new Set(lost);
      const lostEventIds: string[] = [];
      for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
        const m = await jsm.streams.getMessage(env['EVENTS_STREAM']!, { seq });
        for (const e of EventBatch.decode(m!.data).events) if (e.payload?.$case === 'transfer' && lostSet.has(e.payload.value.transferId)) lostEventIds.push(e.eventId);
      }
      await pool.query('DELETE FROM consumer_inbox WHERE consumer = $1 AND event_id = ANY($2::text[])', [name, lostEventIds]);

      await rewindConsumer(nc, env['EVENTS_STREAM']!, name, { sequence: 1 });
      await waitFor(async () => (await effects(name)).size >= transfers.length, 'the lost effects to come back');
      await waitFor(async () => (await consumer.lag()).pending === 0, 'the replay to finish');
      const applied = await effects(name);
      for (const t of transfers) assert.deepEqual(applied.get(t.id), { count: 1, amount: t.amount }, `transfer ${t.id}`);

      // The rewound durable keeps its start position: a restart (the next `make dev`) must not ask to change it.
      await consumer.stop();
      consumer = new EventConsumer(nc, pool, config, { name, filter: 'ledger.>', concurrency: 4 }, recordTransfer(name, () => false), logger);
      await consumer.start();
      const later = await commitTransfers(ledger.client, 100);
      await waitFor(async () => (await effects(name)).size >= transfers.length + later.length, 'the transfers after the restart');
    } finally {
      await consumer.stop();
    }
  });

  it('a database outage longer than every retry: messages wait in place and are applied when it returns, none dead-lettered', async () => {
    const name = `outage-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    const proxy = await TcpProxy.start(new URL(config.DATABASE_URL));
    const viaProxy = createPool(testConfig({ DATABASE_URL: proxy.via(config.DATABASE_URL) }), { max: 4 });
    // maxDeliver 3: the old behaviour dead-lettered a message after three failed attempts, in under a second.
    const consumer = new EventConsumer(nc, viaProxy, config, { name, filter: 'ledger.>', maxDeliver: 3, ackWaitMs: 5_000, concurrency: 4 }, recordTransfer(name, () => false), logger);
    try {
      await consumer.start();
      await proxy.cut();
      const transfers = await commitTransfers(ledger.client, 300);
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      await proxy.open();
      await waitFor(async () => (await effects(name)).size >= transfers.length, 'every transfer applied after the outage');
      const applied = await effects(name);
      for (const t of transfers) assert.deepEqual(applied.get(t.id), { count: 1, amount: t.amount }, `transfer ${t.id}`);
      assert.equal(consumer.stats.deadLettered, 0);
      await assertPerAccountOrder(name);
    } finally {
      await consumer.stop();
      await viaProxy.end();
      await proxy.cut();
    }
  });

  it('a database outage longer than ack_wait x max_deliver, then a restart: the messages queued in hand stay deliverable and are all applied', async () => {
    const name = `long-outage-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    const proxy = await TcpProxy.start(new URL(config.DATABASE_URL));
    const viaProxy = createPool(testConfig({ DATABASE_URL: proxy.via(config.DATABASE_URL) }), { max: 4 });
    // ack_wait 1 s and maxDeliver 1 (JetStream's backstop: 10 deliveries): every message past the first of its
    // subject waits in hand behind it, and would be delivered again each second if nothing kept it in hand.
    // The old code let JetStream deliver them again until it gave up on them: none of the 300 came back.
    const options = { name, filter: 'ledger.>', maxDeliver: 1, ackWaitMs: 1_000, concurrency: 8 };
    let consumer = new EventConsumer(nc, viaProxy, config, options, recordTransfer(name, () => false), logger);
    try {
      await consumer.start();
      await proxy.cut();
      const transfers = await commitTransfers(ledger.client, 300);
      const { jsm } = await connectJetStream(nc);
      await waitFor(async () => (await jsm.consumers.info(env['EVENTS_STREAM']!, name)).num_ack_pending >= 8, 'messages in hand');
      // Well past JetStream's 10 deliveries of 1 s: a message it had delivered again each time would be given up on.
      await new Promise((resolve) => setTimeout(resolve, 25_000));
      // The service restarts while the database is still down, then the database returns.
      await consumer.stop();
      await proxy.open();
      consumer = new EventConsumer(nc, viaProxy, config, options, recordTransfer(name, () => false), logger);
      await consumer.start();
      await waitFor(async () => (await effects(name)).size >= transfers.length, 'every transfer applied after the outage and the restart');
      const applied = await effects(name);
      for (const t of transfers) assert.deepEqual(applied.get(t.id), { count: 1, amount: t.amount }, `transfer ${t.id}`);
    } finally {
      await consumer.stop();
      await viaProxy.end();
      await proxy.cut();
    }
  });

  it('NATS back with an empty store (the stream and the durable lost with it): the consumer sets itself up again and applies what comes next', async () => {
    const name = `lost-store-${randomUUID().slice(0, 8)}`;
    const consumer = new EventConsumer(nc, pool, testConfig(env), { name, filter: 'ledger.>', concurrency: 4 }, recordTransfer(name, () => false), logger);
    await consumer.start();
    try {
      const before = await commitTransfers(ledger.client, 100);
      await waitFor(async () => (await effects(name)).size >= before.length, 'the transfers before');
      // A NATS node replaced, or its volume lost: the server returns without the stream and its consumers.
      await nats.stop();
      rmSync(nats.storeDir, { recursive: true, force: true });
      mkdirSync(nats.storeDir);
      await nats.restart();
      const after = await commitTransfers(ledger.client, 200);
      await waitFor(async () => (await effects(name)).size >= before.length + after.length, 'the transfers after NATS came back');
      const applied = await effects(name);
      for (const t of [...before, ...after]) assert.deepEqual(applied.get(t.id), { count: 1, amount: t.amount }, `transfer ${t.id}`);
    } finally {
      await consumer.stop();
    }
  });

  it('contention while a failing message is applied event by event dead-letters nothing: the event waits and is applied', async () => {
    const name = `contended-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    // One request, one debit account: one shard batch, so one message with both events.
    const [debit, credit] = [account(), account()];
    assert.ok((await ledger.client.createAccounts([debit, credit])).every((r) => r.code === 1));
    const [first, second] = [transfer({ debitAccountId: debit.id, creditAccountId: credit.id, amount: 1n }), transfer({ debitAccountId: debit.id, creditAccountId: credit.id, amount: 2n })];
    assert.ok((await ledger.client.createTransfers([first, second])).every((r) => r.code === 1));
    // The first event fails once (the whole message is then applied event by event, each in a savepoint); the
    // second meets serialization failures for 12 s, longer than the whole message's own retries and maxDeliver
    // attempts: the database's trouble, which must be waited out, never counted against the event.
    let firstFailed = false;
    let contendedUntil = 0;
    const handler: EventHandler = async (event, tx) => {
      if (event.payload?.$case !== 'transfer') return;
      const id = event.payload.value.transferId;
      if (id === first.id && !firstFailed) {
        firstFailed = true;
        throw new Error('refusing once');
      }
      if (id === second.id) {
        contendedUntil ||= Date.now() + 12_000;
        if (Date.now() < contendedUntil) throw Object.assign(new Error('could not serialize access due to read/write dependencies among transactions'), { code: '40001' });
      }
      await recordTransfer(name, () => false)(event, tx);
    };
    const consumer = new EventConsumer(nc, pool, config, { name, filter: 'ledger.>', maxDeliver: 2, ackWaitMs: 5_000, concurrency: 1 }, handler, logger);
    await consumer.start();
    await waitFor(async () => (await effects(name)).size === 2, 'both events applied');
    await consumer.stop();
    assert.equal(consumer.stats.deadLettered, 0);
    assert.ok(Date.now() >= contendedUntil, 'the second event was applied only after the contention');
  });

  it('a message whose every delivery dies with the process applying it (a crash loop) is dead-lettered at JetStream\'s last delivery, not dropped', async () => {
    const name = `crash-loop-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    const [debit, credit] = [account(), account()];
    assert.ok((await ledger.client.createAccounts([debit, credit])).every((r) => r.code === 1));
    const deadly = transfer({ debitAccountId: debit.id, creditAccountId: credit.id, amount: 1n });
    assert.ok((await ledger.client.createTransfers([deadly])).every((r) => r.code === 1));
    const { jsm } = await connectJetStream(nc);
    const deadLetter = () => jsm.streams.getMessage('DEADLETTER', { last_by_subj: deadLetterSubject(env['EVENTS_SUBJECT_PREFIX']!, name) }).catch(() => null);
    // maxDeliver 1: JetStream's backstop is 10 deliveries. Each life is a process that dies while applying the
    // message (its connection gone, nothing acknowledged); the next one starts, as a crash-looping service would.
    for (let life = 1; life <= 11; life++) {
      const own = await connectNats({ NATS_URL: nats.url }, { name: `${name}-${life}` });
      let died = false;
      const handler: EventHandler = async (event) => {
        if (event.payload?.$case !== 'transfer' || event.payload.value.transferId !== deadly.id) return;
        died = true;
        await own.close();
        throw new Error('the process died');
      };
      const consumer = new EventConsumer(own, pool, config, { name, filter: 'ledger.>', maxDeliver: 1, ackWaitMs: 1_000, concurrency: 1 }, handler, logger);
      await consumer.start();
      try {
        await waitFor(async () => died || (await deadLetter()) !== null, `delivery ${life} of the message`, 30_000);
      } finally {
        await consumer.stop().catch(() => undefined);
        await own.close().catch(() => undefined);
      }
      if (!died) break;
    }
    const dead = await deadLetter();
    assert.ok(dead, 'the message is not in the dead letters');
    assert.equal(dead.header.get('Ledgerline-Deliveries'), '10');
    assert.deepEqual(EventBatch.decode(dead.data).events.map((e) => (e.payload?.$case === 'transfer' ? e.payload.value.transferId : e.type)), [deadly.id]);
  });

  it('sends a poison message to the dead-letter subject after maxDeliver and keeps consuming; metrics count it', async () => {
    const name = `poison-${randomUUID().slice(0, 8)}`;
    const config = testConfig(env);
    const transfers = await commitTransfers(ledger.client, 300);
    const poison = transfers[17]!.id;
    const consumer = new EventConsumer(nc, pool, config, { name, filter: 'ledger.>', maxDeliver: 3, ackWaitMs: 5_000, concurrency: 4 }, recordTransfer(name, (id) => id === poison), logger);
    const metricsPort = await freePort();
    const metrics = await startMetrics('consumer-test', metricsPort);
    observeConsumer(metrics.meter, consumer, name);
    await consumer.start();
    await waitFor(async () => consumer.stats.deadLettered === 1, 'the dead letter');
    const later = await commitTransfers(ledger.client, 200);
    await waitFor(async () => {
      const applied = await effects(name);
      return later.every((t) => applied.has(t.id));
    }, 'later events');
    await consumer.stop();

    const { jsm } = await connectJetStream(nc);
    const dead = await jsm.streams.getMessage('DEADLETTER', { last_by_subj: deadLetterSubject(env['EVENTS_SUBJECT_PREFIX']!, name) });
    assert.ok(dead, 'no dead letter stored');
    assert.match(dead.header.get('Ledgerline-Reason'), new RegExp(`refusing ${poison}`));
    assert.equal(dead.header.get('Ledgerline-Attempts'), '3');
    // The dead letter holds the poison event alone; every other event was applied exactly once.
    const deadEvents = EventBatch.decode(dead.data).events;
    assert.deepEqual(deadEvents.map((e) => (e.payload?.$case === 'transfer' ? e.payload.value.transferId : e.type)), [poison]);
    const applied = await effects(name);
    for (const t of [...transfers, ...later]) if (t.id !== poison) assert.equal(applied.get(t.id)?.count, 1, `transfer ${t.id}`);
    assert.equal(applied.get(poison), undefined);

    const scrape = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const value = (metric: string) => Number(new RegExp(`^${metric}\\{consumer="${name}"[^}]*\\} (\\S+)$`, 'm').exec(scrape)?.[1] ?? NaN);
    assert.equal(value('events_consumer_dead_lettered_total'), 1, scrape);
    assert.equal(value('events_consumer_retries_total'), 2);
    // No message was delivered twice: the events committed before the poison one are not counted again at each retry.
    assert.equal(value('events_consumer_duplicates_total'), 0);
    assert.ok(value('events_consumer_applied_total') >= transfers.length + later.length - 1);
    assert.equal(value('events_consumer_lag_messages'), 0);
    await metrics.shutdown();
  });
});

describe('consumer inbox pruning (real PostgreSQL)', () => {
  let pool: Pool;
  before(() => {
    pool = testPool();
  });
  after(async () => {
    await pool.end();
  });

  it('deletes a consumer\'s rows past the retention, a statement at a time until none is left; keeps newer rows and other consumers\'', async () => {
    const [mine, other] = [`prune-${randomUUID()}`, `prune-${randomUUID()}`];
    const insert = (consumer: string, count: number, hoursAgo: number) =>
      pool.query(`INSERT INTO consumer_inbox (consumer, event_id, processed_at) SELECT $1, gen_random_uuid()::text, now() - ($3::INT8 * INTERVAL '1 hour') FROM generate_series(1, $2)`, [
        consumer,
        count,
        hoursAgo,
      ]);
    await insert(mine, 7, 400);
    await insert(mine, 3, 100);
    await insert(other, 2, 400);
    const left = async (consumer: string) => (await pool.query('SELECT count(*)::int AS n FROM consumer_inbox WHERE consumer = $1', [consumer])).rows[0].n as number;

    assert.equal(await pruneInbox(pool, mine, 336, 3), 7, 'seven rows older than 336 h, three a statement');
    assert.equal(await left(mine), 3, 'rows newer than the retention stay');
    assert.equal(await left(other), 2, 'another consumer\'s rows are its own to prune');
    assert.equal(await pruneInbox(pool, mine, 336, 3), 0);
    await pool.query('DELETE FROM consumer_inbox WHERE consumer = ANY($1)', [[mine, other]]);
  });
});
