import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { Config } from './config.js';
import { UnavailableError } from './errors.js';

export type { NatsConnection, JetStreamClient, JetStreamManager };

export interface NatsOptions {
  name: string;
  /** Fail at start-up instead of waiting for the server: services start only with their dependencies up. */
  waitOnFirstConnect?: boolean;
}

/** The one NATS connection factory: reconnects for ever after the first connection, with jitter. */
export async function connectNats(config: Pick<Config, 'NATS_URL'>, options: NatsOptions): Promise<NatsConnection> {
  try {
    return await connect({
      servers: config.NATS_URL.split(','),
      name: options.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 250,
      reconnectJitter: 250,
      waitOnFirstConnect: options.waitOnFirstConnect ?? false,
      timeout: 5_000,
      // Without it every request (each JetStream publish of the outbox relay) captures two or three stack traces
      // up front, in case it fails: measured at about 2% of the ledger's main thread under the payments benchmark.
      noAsyncTraces: true,
    });
  } catch (error) {
    throw new UnavailableError('nats_unavailable', `NATS unavailable at ${config.NATS_URL}`, 1, { cause: error });
  }
}

export async function connectJetStream(nc: NatsConnection): Promise<{ js: JetStreamClient; jsm: JetStreamManager }> {
  try {
    const jsm = await jetstreamManager(nc);
    return { js: jetstream(nc), jsm };
  } catch (error) {
    throw new UnavailableError('jetstream_unavailable', 'JetStream is not enabled on the NATS server (start it with -js)', 1, { cause: error });
  }
}
