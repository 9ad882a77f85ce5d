import { DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import type { Config } from './config.js';
import { connectJetStream, connectNats } from './nats.js';

const NANOS_PER_SECOND = 1_000_000_000;

/**
 * The domain-event stream, created or brought up to date at start-up by every publisher and consumer (any of
 * them may start first). Policy: file storage, limits retention (consumers track their own position, so one
 * slow consumer never blocks another), oldest events discarded past EVENTS_MAX_AGE_HOURS or EVENTS_MAX_BYTES,
 * duplicates dropped by Nats-Msg-Id within EVENTS_DUPLICATE_WINDOW_SECONDS (longer than any relay retry).
 */
export function eventStreamConfig(config: Pick<Config, 'EVENTS_STREAM' | 'EVENTS_SUBJECT_PREFIX' | 'EVENTS_MAX_AGE_HOURS' | 'EVENTS_MAX_BYTES' | 'EVENTS_DUPLICATE_WINDOW_SECONDS' | 'NATS_STREAM_REPLICAS'>): Partial<StreamConfig> & { name: string } {
  return {
    name: config.EVENTS_STREAM,
    subjects: [`${config.EVENTS_SUBJECT_PREFIX}.>`],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    num_replicas: config.NATS_STREAM_REPLICAS,
    max_age: config.EVENTS_MAX_AGE_HOURS * 3600 * NANOS_PER_SECOND,
    max_bytes: config.EVENTS_MAX_BYTES,
    duplicate_window: config.EVENTS_DUPLICATE_WINDOW_SECONDS * NANOS_PER_SECOND,
    // No limit of the stream's own (the server's max_payload bounds messages: ledger/relay.ts checks it): a stream
    // made with a smaller one would refuse the outbox's large messages, each holding up its shard for good.
    max_msg_size: -1,
  };
}

/**
 * The stream of the consumers' dead letters (`deadletter.>`, lib/consumer.ts), shared by every prefix. Bounded
 * like the events stream, oldest discarded first: each dead letter raises an alert (observability/alerts.yml) and
 * is for an operator to republish or write off within DEADLETTER_MAX_AGE_DAYS; unbounded, a consumer
 * dead-lettering a flood would fill NATS's disk and stop every stream on it.
 */
export function deadLetterStreamConfig(config: Pick<Config, 'DEADLETTER_MAX_AGE_DAYS' | 'DEADLETTER_MAX_BYTES' | 'NATS_STREAM_REPLICAS'>): Partial<StreamConfig> & { name: string } {
  return {
    name: 'DEADLETTER',
    subjects: ['deadletter.>'],
    retention: RetentionPolicy.Limits,
    storage: StorageType.File,
    discard: DiscardPolicy.Old,
    num_replicas: config.NATS_STREAM_REPLICAS,
    max_age: config.DEADLETTER_MAX_AGE_DAYS * 86_400 * NANOS_PER_SECOND,
    max_bytes: config.DEADLETTER_MAX_BYTES,
    duplicate_window: 120 * NANOS_PER_SECOND,
  };
}

export async function ensureEventStream(jsm: JetStreamManager, config: Parameters<typeof eventStreamConfig>[0]): Promise<void> {
  await ensureStream(jsm, eventStreamConfig(config));
}

export async function ensureDeadLetterStream(jsm: JetStreamManager, config: Parameters<typeof deadLetterStreamConfig>[0]): Promise<void> {
  await ensureStream(jsm, deadLetterStreamConfig(config));
}

/**
 * Creates the stream `wanted` describes, or brings an existing one's settings up to it. Every publisher and
 * consumer ensures the streams at start-up, often at the same moment: a create refused because another process
 * created the stream meanwhile (JetStream answered "subjects overlap with an existing stream" to the loser, once in
 * the suite) finds it there on a second look, and goes on as if it had existed.
 */
async function ensureStream(jsm: JetStreamManager, wanted: Partial<StreamConfig> & { name: string }): Promise<void> {
  let current = await streamConfig(jsm, wanted.name);
  if (!current) {
    try {
      await jsm.streams.add(wanted);
      return;
    } catch (error) {
      current = await streamConfig(jsm, wanted.name);
      if (!current) throw error;
    }
  }
  const found = current;
  const differs = (Object.keys(wanted) as (keyof typeof wanted)[]).some((k) => JSON.stringify(found[k]) !== JSON.stringify(wanted[k]));
  if (differs) await jsm.streams.update(wanted.name, wanted);
}

/** The settings of stream `name`, or undefined if there is no such stream. */
async function streamConfig(jsm: JetStreamManager, name: string): Promise<StreamConfig | undefined> {
  try {
    return (await jsm.streams.info(name)).config;
  } catch (error) {
    if (/stream not found/i.test(String((error as Error).message))) return undefined;
    throw error;
  }
}

/** Deletes a stream if it exists (benchmarks and tests remove the streams of their own). */
export async function deleteStream(config: Pick<Config, 'NATS_URL'>, name: string): Promise<void> {
  const nc = await connectNats(config, { name: 'stream-cleanup' });
  try {
    const { jsm } = await connectJetStream(nc);
    await jsm.streams.delete(name).catch(() => undefined);
  } finally {
    await nc.close();
  }
}
