import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { AckPolicy, DeliverPolicy } from '@nats-io/jetstream';
import { testConfig } from '../test/support.js';
import { connectJetStream, connectNats, type NatsConnection } from './nats.js';

describe('NATS JetStream', () => {
  let nc: NatsConnection;
  const stream = `TEST_${randomUUID().replace(/-/g, '').slice(0, 12)}`;
  const subject = `test.${stream.toLowerCase()}.events`;

  before(async () => {
    nc = await connectNats(testConfig(), { name: 'nats-test' });
  });
  after(async () => {
    const { jsm } = await connectJetStream(nc);
    await jsm.streams.delete(stream).catch(() => undefined);
    await nc.drain();
  });

  it('publishes with dedupe ids, consumes durably and acks', async () => {
    const { js, jsm } = await connectJetStream(nc);
    await jsm.streams.add({ name: stream, subjects: [subject], duplicate_window: 60_000_000_000 });
    const first = await js.publish(subject, 'one', { msgID: 'event-1' });
    const again = await js.publish(subject, 'one', { msgID: 'event-1' });
    assert.equal(again.duplicate, true);
    assert.equal(again.seq, first.seq);
    await js.publish(subject, 'two', { msgID: 'event-2' });

    await jsm.consumers.add(stream, { durable_name: 'worker', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });
    const consumer = await js.consumers.get(stream, 'worker');
    const batch = await consumer.fetch({ max_messages: 2, expires: 2000 });
    const seen: string[] = [];
    for await (const m of batch) {
      seen.push(m.string());
      await m.ackAck();
    }
    assert.deepEqual(seen, ['one', 'two']);

    // Durable: a new handle on the same consumer continues after the acknowledged messages.
    const info = await jsm.consumers.info(stream, 'worker');
    assert.equal(info.num_ack_pending, 0);
    assert.equal(info.delivered.stream_seq, 2);
    assert.equal(info.num_pending, 0);
  });
});
