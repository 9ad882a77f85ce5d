import { Server } from '@grpc/grpc-js';
import type { Config } from '../lib/config.js';
import { observeRpcServer, shutdownGrpcServer } from '../lib/grpc.js';
import { channelCredentials, grpcTlsEnabled, serverCredentials, serverOptions } from '../lib/grpc-tls.js';
import { EventConsumer, observeConsumer } from '../lib/consumer.js';
import { createPool, type Pool } from '../lib/db.js';
import type { Logger } from '../lib/logger.js';
import { connectNats } from '../lib/nats.js';
import { PeriodicTask } from '../lib/periodic.js';
import { LedgerClient } from '../ledger/client.js';
import { SETTLEMENT_OUTBOX_SHARD } from '../ledger/outbox.js';
import { OutboxRelay } from '../ledger/relay.js';
import { startMetrics } from '../observability/metrics.js';
import { SettlementServiceService } from '../proto/gen/settlement/v1/settlement.js';
import { createSettlementService } from './service.js';
import { Settler, type SettlementSettings } from './settler.js';
import { parseSchedule } from './windows.js';

export interface SettlementApp {
  /** The bound gRPC address (the real port when configured with :0). */
  address: string;
  settler: Settler;
  consumer: EventConsumer;
  pool: Pool;
  close(): Promise<void>;
}

export function settlementSettings(config: Config): SettlementSettings {
  return {
    defaultSchedule: parseSchedule({ kind: config.SETTLEMENT_WINDOW, timeZone: config.SETTLEMENT_TIME_ZONE, cutoff: config.SETTLEMENT_CUTOFF, intervalMinutes: config.SETTLEMENT_INTERVAL_MINUTES }),
    resumePayoutsAfterMs: Math.max(1_000, config.SETTLEMENT_CLOSE_EVERY_MS * 3),
    maxEventSkewMs: config.SETTLEMENT_MAX_EVENT_SKEW_MS,
  };
}

/**
 * The settlement process: the JetStream consumer of payment events, the closer of ended windows (with the
 * resubmission of unconfirmed payouts), the relay of its own events (settlement.batch.created) and the gRPC
 * SettlementService. Closing is safe with several instances (a window closes in one SERIALIZABLE transaction
 * keyed by account and cut), but run one: each instance would relay the settlement outbox shard too.
 */
export async function startSettlement(config: Config, logger: Logger): Promise<SettlementApp> {
  const pool = createPool(config, { applicationName: 'settlement' });
  const ledger = new LedgerClient(config.LEDGER_GRPC_TARGET, { autoBatch: false, deadlineMs: 30_000, credentials: channelCredentials(config) });
  const metrics = await startMetrics('settlement', config.METRICS_PORT, config.OTEL_EXPORTER_OTLP_ENDPOINT);
  const batchesMade = metrics.meter.createCounter('settlement_batches_total', { description: 'Settlement batches made (windows closed with something to settle), by currency and payout status' });
  const settler = new Settler(pool, ledger, { ...settlementSettings(config), onBatch: (b) => batchesMade.add(1, { currency: b.currency, status: b.status }) }, logger);

  const nc = await connectNats(config, { name: 'settlement' });
  const consumer = new EventConsumer(nc, pool, config, { name: config.SETTLEMENT_CONSUMER, filter: 'payments.>', concurrency: 8 }, settler.handle, logger);
  await consumer.start();
  observeConsumer(metrics.meter, consumer, config.SETTLEMENT_CONSUMER);

  const closer = new PeriodicTask(
    'settlement closer',
    async () => {
      await settler.closeEnded();
      await settler.resumePayouts();
    },
    config.SETTLEMENT_CLOSE_EVERY_MS,
    logger,
  );
  closer.start();
  const relay = new OutboxRelay(config, [SETTLEMENT_OUTBOX_SHARD], logger);
  relay.start();

  const server = new Server(serverOptions(config));
  observeRpcServer(metrics.meter, ['settlement.v1.SettlementService']);
  server.addService(SettlementServiceService, createSettlementService(pool, ledger, settler, config, logger));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.SETTLEMENT_GRPC_LISTEN, serverCredentials(config), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const address = `${config.SETTLEMENT_GRPC_LISTEN.replace(/:\d+$/, '').replace('0.0.0.0', '127.0.0.1')}:${port}`;
  logger.info({ address, tls: grpcTlsEnabled(config), consumer: config.SETTLEMENT_CONSUMER }, 'settlement listening');

  return {
    address,
    settler,
    consumer,
    pool,
    async close() {
      // Calls running, and handlers of calls given up on, finish before what they use is closed.
      await shutdownGrpcServer(server);
      await closer.stop();
      await consumer.stop();
      await relay.stop();
      await nc.close();
      ledger.close();
      await metrics.shutdown();
      await pool.end();
    },
  };
}
