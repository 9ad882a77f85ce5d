import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { testConfig } from '../test/support.js';
import { connectJetStream, connectNats, type NatsConnection } from './nats.js';
import { ensureEventStream } from './streams.js';

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

    await ensureEventStream(jsm, { ...config, EVENTS_MAX_AGE_HOURS: 24, EVENTS_DUPLICATE_WINDOW_SECONDS: 300 });
    info = await jsm.streams.info(config.EVENTS_STREAM);
    assert.equal(info.config.max_age, 24 * 3600 * 1e9);
    assert.equal(info.config.duplicate_window, 300 * 1e9);
  });
});
