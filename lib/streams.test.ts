import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { TestNatsServer } from '../test/nats-server.js';
import { testConfig } from '../test/support.js';
import { connectJetStream, connectNats, type NatsConnection } from './nats.js';
import type { JetStreamManager } from '@nats-io/jetstream';
import { ensureDeadLetterStream, ensureEventStream, eventStreamConfig } from './streams.js';

describe('events stream set-up', () => {
  let nc: NatsConnection;
  const suffix = randomUUID().slice(0, 8);
  const config = testConfig({ EVENTS_STREAM: `STREAM_TEST_${suffix}`, EVENTS_SUBJECT_PREFIX: `streamtest-${suffix}` });

  before(async () => {
    nc = await connectNats(testConfig(), { name: 'streams-test' });
  });
  after(async () => {
    const { jsm } = await connectJetStream(nc);
    await jsm.streams.delete(config.EVENTS_STREAM).catch(() => undefined);
    await nc.close();
  });

  it('creates the stream with the documented policy, is idempotent, and applies changed settings', async () => {
    const { jsm } = await connectJetStream(nc);
    await ensureEventStream(jsm, config);
    await ensureEventStream(jsm, config);
    let info = await jsm.streams.info(config.EVENTS_STREAM);
    assert.deepEqual(info.config.subjects, [`streamtest-${suffix}.>`]);
    assert.equal(info.config.storage, 'file');
    assert.equal(info.config.retention, 'limits');
    assert.equal(info.config.discard, 'old');
    assert.equal(info.config.max_age, 168 * 3600 * 1e9);
    assert.equal(info.config.duplicate_window, 120 * 1e9);
    assert.equal(info.config.num_replicas, 1);
    assert.equal(info.config.max_msg_size, -1);

    // An operator's limit on message size is lifted with the other changed settings: it would refuse the outbox's large messages.
    await jsm.streams.update(config.EVENTS_STREAM, { ...info.config, max_msg_size: 64 * 1024 });
    await ensureEventStream(jsm, { ...config, EVENTS_MAX_AGE_HOURS: 24, EVENTS_DUPLICATE_WINDOW_SECONDS: 300 });
    info = await jsm.streams.info(config.EVENTS_STREAM);
    assert.equal(info.config.max_age, 24 * 3600 * 1e9);
    assert.equal(info.config.duplicate_window, 300 * 1e9);
    assert.equal(info.config.max_msg_size, -1);
  });

  it('a stream another process creates between the look and the create is taken as found, and brought to the settings', async () => {
    const { jsm } = await connectJetStream(nc);
    const racing = { ...config, EVENTS_STREAM: `STREAM_RACE_${suffix}`, EVENTS_SUBJECT_PREFIX: `streamrace-${suffix}` };
    const other = await connectNats(testConfig(), { name: 'streams-test-other' });
    try {
      const rival = (await connectJetStream(other)).jsm;
      // The real manager, except that its first look reports the stream missing after a rival has made it (with
      // another retention): as happens when two services start at once.
      let looked = false;
      const streams = new Proxy(jsm.streams, {
        get(target, prop, receiver) {
          if (prop !== 'info' || looked) return Reflect.get(target, prop, receiver) as unknown;
          return async (name: string) => {
            looked = true;
            const missing = await target.info(name).then(() => undefined, (error: unknown) => error);
            await rival.streams.add({ ...eventStreamConfig(racing), max_age: 3600 * 1e9 });
            throw missing;
          };
        },
      });
      await ensureEventStream({ ...jsm, streams } as JetStreamManager, racing);
      assert.ok(looked);
      assert.equal((await jsm.streams.info(racing.EVENTS_STREAM)).config.max_age, 168 * 3600 * 1e9, 'our settings, not the rival\'s');
    } finally {
      await jsm.streams.delete(racing.EVENTS_STREAM).catch(() => undefined);
      await other.close();
    }
  });

  it('bounds the DEADLETTER stream, also one made before it had limits', async () => {
    // A NATS of its own: DEADLETTER is one stream for every prefix, so the shared server's is not the test's.
    const nats = await TestNatsServer.start();
    const own = await connectNats({ ...config, NATS_URL: nats.url }, { name: 'streams-test-deadletter' });
    try {
      const { jsm } = await connectJetStream(own);
      await jsm.streams.add({ name: 'DEADLETTER', subjects: ['deadletter.>'], duplicate_window: 120 * 1e9 });
      await ensureDeadLetterStream(jsm, config);
      let info = await jsm.streams.info('DEADLETTER');
      assert.deepEqual([info.config.subjects, info.config.discard, info.config.max_age, info.config.max_bytes], [['deadletter.>'], 'old', 90 * 86_400 * 1e9, 1024 ** 3]);
      await ensureDeadLetterStream(jsm, { ...config, DEADLETTER_MAX_AGE_DAYS: 7, DEADLETTER_MAX_BYTES: 1024 ** 2 });
      info = await jsm.streams.info('DEADLETTER');
      assert.deepEqual([info.config.max_age, info.config.max_bytes], [7 * 86_400 * 1e9, 1024 ** 2]);
    } finally {
      await own.close();
      await nats.stop();
    }
  });
});
