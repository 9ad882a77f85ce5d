import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { mkdirSync, rmSync } from 'node:fs';
import { Writable } from 'node:stream';
import type { JetStreamManager } from '@nats-io/jetstream';
import { connectJetStream, connectNats, type NatsConnection } from '../lib/nats.js';
import type { Pool } from '../lib/db.js';
import { EventBatch, type EventEnvelope } from '../proto/gen/events/v1/events.js';
import { account, commitTransfers, startTestLedger, transfer } from '../test/ledger-harness.js';
import { TestNatsServer } from '../test/nats-server.js';
import { freePort, spawnLedger } from '../test/ledger-process.js';
import { testConfig, testPool, untilWaitingOnLock } from '../test/support.js';
import { createLogger } from '../lib/logger.js';
import type { Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { outboxMessageId, outboxSubject } from './outbox.js';

/** DESIGN.md: every committed event is published at least once, in order per shard; NATS down loses nothing. */
describe('outbox relay to JetStream (own NATS server, real PostgreSQL)', function () {
  this.timeout(120_000);
  let nats: TestNatsServer;
  let pool: Pool;
  let observer: NatsConnection;
  let jsm: JetStreamManager;
  let env: Record<string, string>;

  before(async () => {
    nats = await TestNatsServer.start();
    pool = testPool();
    observer = await connectNats({ NATS_URL: nats.url }, { name: 'relay-test-observer' });
    jsm = (await connectJetStream(observer)).jsm;
  });
  beforeEach(async () => {
    // Other test files commit batches with the relay off: their rows are not this test's business.
    await pool.query('DELETE FROM outbox');
    const suffix = randomUUID().slice(0, 8);
    env = { LEDGER_RELAY_ENABLED: 'true', NATS_URL: nats.url, EVENTS_STREAM: `RELAY_TEST_${suffix}`, EVENTS_SUBJECT_PREFIX: `relaytest-${suffix}` };
  });
  afterEach(async () => {
    // Each stream reserves EVENTS_MAX_BYTES (10 GiB) of the test server's store: a few left behind fill it.
    await jsm.streams.delete(env['EVENTS_STREAM']!).catch(() => undefined);
  });
  after(async () => {
    await observer.close();
    await nats.stop();
    await pool.end();
  });


  /** `count` transfers committed by a ledger whose relay is off: their outbox rows wait for the test's relay. */
  async function committedWithRelayOff(count: number): Promise<Transfer[]> {
    const quiet = await startTestLedger({ ...env, LEDGER_RELAY_ENABLED: 'false' });
    try {
      return await commitTransfers(quiet.client, count);
    } finally {
      await quiet.close();
    }
  }

  async function outboxRows(): Promise<number> {
    return (await pool.query('SELECT count(*)::int AS n FROM outbox')).rows[0].n;
  }

  async function waitForEmptyOutbox(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while ((await outboxRows()) > 0) {
      if (Date.now() > deadline) throw new Error(`outbox still has ${await outboxRows()} rows`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /**
   * Every message of the stream, in stream order, with its subject and events. After the test's NATS restarted,
   * the observer's first request can be lost with the old connection (a timeout): it is asked again.
   */
  async function streamMessages(stream: string): Promise<{ subject: string; msgId: string; events: EventEnvelope[] }[]> {
    let info;
    for (let attempt = 1; !info; attempt++) {
      info = await jsm.streams.info(stream).catch((error: unknown) => {
        if (attempt >= 5 || (error as Error).name !== 'TimeoutError') throw error;
        return undefined;
      });
    }
    const messages = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq && info.state.messages > 0; seq++) {
      const m = await jsm.streams.getMessage(stream, { seq });
      if (!m) continue;
      const batch = EventBatch.decode(m.data);
      messages.push({ subject: m.subject, msgId: m.header.get('Nats-Msg-Id'), events: batch.events });
    }
    return messages;
  }

  function assertEveryTransferOnceInShardOrder(messages: Awaited<ReturnType<typeof streamMessages>>, transfers: readonly Transfer[], prefix: string): void {
    const seen = new Map<string, number>();
    const lastTimestampPerSubject = new Map<string, bigint>();
    for (const m of messages) {
      assert.match(m.subject, new RegExp(`^${prefix}\\.ledger\\.\\d+$`));
      for (const e of m.events) {
        if (e.payload?.$case !== 'transfer') continue;
        seen.set(e.payload.value.transferId, (seen.get(e.payload.value.transferId) ?? 0) + 1);
        // Per shard (subject), events arrive in ledger-timestamp order.
        const last = lastTimestampPerSubject.get(m.subject) ?? 0n;
        assert.ok(e.occurredAt > last, `${m.subject}: event at ${e.occurredAt} after ${last}`);
        lastTimestampPerSubject.set(m.subject, e.occurredAt);
      }
    }
    for (const t of transfers) assert.equal(seen.get(t.id), 1, `transfer ${t.id} published ${seen.get(t.id) ?? 0} times`);
  }

  /** Once the outbox is empty: every message stored once, every transfer in exactly one, in order per shard. */
  async function publishedOnceEach(transfers: readonly Transfer[]): Promise<Awaited<ReturnType<typeof streamMessages>>> {
    await waitForEmptyOutbox();
    const messages = await streamMessages(env['EVENTS_STREAM']!);
    assert.equal(new Set(messages.map((m) => m.msgId)).size, messages.length, 'a message was stored twice');
    assertEveryTransferOnceInShardOrder(messages, transfers, env['EVENTS_SUBJECT_PREFIX']!);
    return messages;
  }

  it('publishes every committed batch once, in order per shard, and empties the outbox; /metrics says so', async () => {
    const metricsPort = await freePort();
    const ledger = await startTestLedger({ ...env, METRICS_PORT: String(metricsPort) });
    try {
      const transfers = await commitTransfers(ledger.client, 3000);
      const messages = await publishedOnceEach(transfers);
      assert.ok((await ledger.app.relay!.lag()).rows === 0);

      const scrape = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      const value = (name: string) => [...scrape.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? (\\S+)`, 'gm'))].reduce((sum, m) => sum + Number(m[1]), 0);
      assert.equal(value('ledger_outbox_lag_rows'), 0, scrape);
      assert.equal(value('ledger_outbox_published_total'), messages.length);
      assert.ok(value('ledger_batch_events_sum') >= transfers.length, 'batch sizes not recorded');
      assert.match(scrape, /^ledger_queue_events\{shard="0"[^}]*\} 0$/m);
    } finally {
      await ledger.close();
    }
  });

  it('a batch of transfers with metadata at its limits (about 28 KB each) is published: no message beyond NATS\'s 1 MiB', async () => {
    const ledger = await startTestLedger(env);
    try {
      const [from, to] = [account(), account()];
      assert.deepEqual((await ledger.client.createAccounts([from, to])).map((r) => r.code), [1, 1]);
      // 16 entries of a 64-character key and 512 three-byte characters: the largest metadata the ledger accepts.
      const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`${i}`.padEnd(64, 'k'), '€'.repeat(512)]));
      // One request, one shard (the debit account's): one batch of 200 events, about 5.5 MB of them.
      const transfers = Array.from({ length: 200 }, () => transfer({ debitAccountId: from.id, creditAccountId: to.id, amount: 1n, metadata }));
      assert.ok((await ledger.client.createTransfers(transfers)).every((r) => r.code === 1));
      const messages = await publishedOnceEach(transfers);
      assert.ok(messages.length >= 6, `${messages.length} messages for 5.5 MB of events`);
    } finally {
      await ledger.close();
    }
  });

  it('NATS down: requests still succeed, the outbox grows, and drains completely when NATS returns', async () => {
    const ledger = await startTestLedger(env);
    try {
      const before = await commitTransfers(ledger.client, 200);
      await waitForEmptyOutbox();
      await nats.stop();
      const during = await commitTransfers(ledger.client, 1500);
      const lag = await ledger.app.relay!.lag();
      assert.ok(lag.rows > 0, 'the outbox did not grow while NATS was down');
      await nats.restart();
      await waitForEmptyOutbox(60_000);
      const messages = await streamMessages(env['EVENTS_STREAM']!);
      assertEveryTransferOnceInShardOrder(messages, [...before, ...during], env['EVENTS_SUBJECT_PREFIX']!);
    } finally {
      await ledger.close();
    }
  });

  it('NATS back with an empty store (the stream lost with it): the relay creates the stream again and the outbox drains, publishing nothing into the dead connection', async () => {
    const warnings: string[] = [];
    const logs = new Writable({
      write(chunk: Buffer, _encoding, done) {
        warnings.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    const ledger = await startTestLedger(env, {}, createLogger('ledger-test', 'warn', logs));
    try {
      await commitTransfers(ledger.client, 200);
      await waitForEmptyOutbox();
      // A NATS node replaced, or its volume lost: the server returns without the events stream.
      await nats.stop();
      rmSync(nats.storeDir, { recursive: true, force: true });
      mkdirSync(nats.storeDir);
      await nats.restart();
      const after = await commitTransfers(ledger.client, 300);
      await waitForEmptyOutbox(60_000);
      assertEveryTransferOnceInShardOrder(await streamMessages(env['EVENTS_STREAM']!), after, env['EVENTS_SUBJECT_PREFIX']!);
      // A message published while the connection was down waits in the client's buffer and is never acknowledged:
      // its round waited out the whole publish timeout (10 s) before the relay went on.
      const timedOut = warnings.filter((line) => (JSON.parse(line) as { err?: { type?: string } }).err?.type === 'TimeoutError');
      assert.deepEqual(timedOut, [], 'no publish timed out');
    } finally {
      await ledger.close();
    }
  });

  it('LEDGER_SHARDS lowered (8 to 4) in a rolling change: rows an old instance writes to the removed shards are published once', async () => {
    // The new instance (4 shards, relay on) runs first; an old one (8 shards, its relay off as if it were
    // going away) commits afterwards, to shards 4-7 among others: only the new instance can publish those.
    const four = await startTestLedger({ ...env, LEDGER_SHARDS: '4' });
    const eight = await startTestLedger({ ...env, LEDGER_SHARDS: '8', LEDGER_RELAY_ENABLED: 'false' });
    try {
      const messages = await publishedOnceEach(await commitTransfers(eight.client, 600));
      assert.ok(messages.some((m) => /\.ledger\.[4-7]$/.test(m.subject)), 'no row of shards 4-7 was written: the test checked nothing');
    } finally {
      await eight.close();
      await four.close();
    }
  });

  it('a backlog is drained from every shard in turn: one shard\'s backlog does not hold the others back', async () => {
    // Rows as batches leave them, the relay off: ten on shard 0 (say, the ledger's), two on shard 5 (payments').
    const rows = [...Array.from({ length: 10 }, (_, i) => [0, i + 1]), [5, 1], [5, 2]];
    for (const [shard, sequence] of rows) {
      await pool.query('INSERT INTO outbox (shard, sequence, batch_id, part, event_count, payload) VALUES ($1, $2, $3, 0, 1, $4)', [shard, sequence, randomUUID(), Buffer.from(`row ${shard}/${sequence}`)]);
    }
    const { OutboxRelay } = await import('./relay.js');
    const { ensureEventStream } = await import('../lib/streams.js');
    const config = testConfig({ ...env, LEDGER_RELAY_BATCH_ROWS: '4' });
    const { js, jsm: manager } = await connectJetStream(observer);
    await ensureEventStream(manager, config);
    const relay = new OutboxRelay(config, [0, 5], createLogger('relay-test', 'silent'));
    try {
      assert.equal(await relay.drainOnce(js), 4);
      const left = async () => (await pool.query('SELECT shard, sequence FROM outbox ORDER BY shard, sequence')).rows.map((r) => `${r.shard}/${r.sequence}`);
      // One round of four: the two oldest of each shard, not the four oldest of shard 0.
      assert.deepEqual(await left(), ['0/3', '0/4', '0/5', '0/6', '0/7', '0/8', '0/9', '0/10']);
      // Shard 5 drained, shard 0 alone gets whole rounds; per shard, the stream has them in order.
      assert.equal(await relay.drainOnce(js), 4);
      assert.deepEqual(await left(), ['0/7', '0/8', '0/9', '0/10']);
      const published = [];
      const info = await manager.streams.info(config.EVENTS_STREAM);
      for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) published.push(Buffer.from((await manager.streams.getMessage(config.EVENTS_STREAM, { seq }))!.data).toString());
      assert.deepEqual(published, ['row 0/1', 'row 5/1', 'row 0/2', 'row 5/2', 'row 0/3', 'row 0/4', 'row 0/5', 'row 0/6']);
    } finally {
      await relay.stop();
    }
  });

  it('a NATS whose max_payload is below the outbox\'s largest message is refused, with the fix in the log: published to, its first large batch would block its shard for good', async () => {
    const small = await TestNatsServer.start('max_payload: 65536\n');
    const lines: string[] = [];
    const logs = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    const { OutboxRelay } = await import('./relay.js');
    await pool.query('INSERT INTO outbox (shard, sequence, batch_id, part, event_count, payload) VALUES (0, 1, $1, 0, 1, $2)', [randomUUID(), Buffer.from('small enough')]);
    const relay = new OutboxRelay(testConfig({ ...env, NATS_URL: small.url }), [0], createLogger('relay-test', 'warn', logs));
    try {
      relay.start();
      const deadline = Date.now() + 10_000;
      while (!lines.some((l) => l.includes('max_payload')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      const refusal = lines.map((l) => JSON.parse(l) as { level: number; msg: string; err?: { message?: string } }).find((l) => l.err?.message?.includes('max_payload'));
      assert.ok(refusal, `no log line names max_payload: ${lines.join('\n')}`);
      assert.match(refusal.err!.message!, /65536 bytes .* set max_payload to at least 1MB/);
      assert.equal(refusal.level, 50, 'logged as an error');
      assert.equal(relay.publishedCount, 0);
      assert.equal(await outboxRows(), 1, 'the row waits for a NATS that can take every message');
    } finally {
      await relay.stop();
      await small.stop();
    }
  });

  it('a relay that published and died before deleting: the rows go out again and JetStream keeps one copy', async () => {
    // Commit with the relay off, then publish the rows as a relay would have, without deleting them.
    const transfers = await committedWithRelayOff(1000);
    const { js, jsm: manager } = await connectJetStream(observer);
    const { ensureEventStream } = await import('../lib/streams.js');
    await ensureEventStream(manager, testConfig(env));
    const rows = (await pool.query('SELECT shard, batch_id, part, payload FROM outbox ORDER BY shard, sequence')).rows;
    assert.ok(rows.length > 0);
    for (const r of rows) await js.publish(outboxSubject(env['EVENTS_SUBJECT_PREFIX']!, r.shard), r.payload, { msgID: outboxMessageId(r.batch_id, r.part) });

    const ledger = await startTestLedger(env);
    try {
      await waitForEmptyOutbox();
      assert.ok(ledger.app.relay!.publishedCount >= rows.length, 'the restarted relay did not publish the rows again');
      const messages = await streamMessages(env['EVENTS_STREAM']!);
      assert.equal(messages.length, rows.length, 'duplicates were stored');
      assertEveryTransferOnceInShardOrder(messages, transfers, env['EVENTS_SUBJECT_PREFIX']!);
    } finally {
      await ledger.close();
    }
  });

  it('the ledger process killed with SIGKILL after JetStream acknowledged a round and before its outbox rows were deleted: they go out again, JetStream keeps one copy', async () => {
    const transfers = await committedWithRelayOff(600);
    const committedRows = await outboxRows();
    // The test holds the outbox rows' locks: the relay reads and publishes them, and its DELETE then waits.
    const holder = await pool.connect();
    const processEnv = { ...env, DATABASE_URL: testConfig().DATABASE_URL, LOG_LEVEL: 'silent', LEDGER_SHARDS: '8', METRICS_PORT: '0', TRACES_EXPORTER: 'none' };
    let ledger = await (async () => {
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM outbox FOR UPDATE');
      return spawnLedger(processEnv);
    })();
    try {
      // The point that matters: JetStream has the round (the relay awaited every ack before deleting) and the delete is pending.
      const waiting = await untilWaitingOnLock(pool, 'DELETE FROM outbox%', 'the relay tried to delete the rows it published', 20_000);
      const publishedBeforeKill = (await streamMessages(env['EVENTS_STREAM']!)).length;
      assert.ok(publishedBeforeKill > 0, 'nothing was published before the kill');
      await ledger.stop('SIGKILL');
      // The killed process's DELETE would still run once the locks go (PostgreSQL notices the lost client only later): end it, as its death would.
      await pool.query('SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid', [waiting]);
      await holder.query('ROLLBACK');
      assert.equal(await outboxRows(), committedRows, 'rows were deleted before the kill');

      ledger = await spawnLedger(processEnv);
      const messages = await publishedOnceEach(transfers);
      assert.ok(messages.length >= publishedBeforeKill);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
      await ledger.stop();
    }
  });
});
