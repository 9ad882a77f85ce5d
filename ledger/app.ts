import { Server, ServerCredentials } from '@grpc/grpc-js';
import { Piscina } from 'piscina';
import type { Config } from '../lib/config.js';
import { ownedShards, shardOwners } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import type { Logger } from '../lib/logger.js';
import { LedgerServiceService } from '../proto/gen/ledger/v1/ledger.js';
import type { BatchTask } from './batch.js';
import { LedgerRouter } from './router.js';
import { createLedgerService } from './service.js';
import { ensureShards } from './store.js';
import { OutboxRelay } from './relay.js';
import { ExpirySweeper } from './sweeper.js';
import type { WorkerReply } from './worker.js';

export interface LedgerApp {
  /** The bound address, e.g. 127.0.0.1:50051 (the real port when configured with :0). */
  address: string;
  router: LedgerRouter;
  workers: Piscina<BatchTask, WorkerReply>;
  sweeper: ExpirySweeper;
  /** Absent when LEDGER_RELAY_ENABLED is false. */
  relay: OutboxRelay | undefined;
  close(): Promise<void>;
}

/** The worker file beside this module: .ts under tsx (development, tests), .js when compiled. */
function workerUrl(): string {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./worker${ext}`, import.meta.url).href;
}

export async function startLedger(config: Config, logger: Logger): Promise<LedgerApp> {
  const pool = createPool(config, { applicationName: 'ledger' });
  const shards = ownedShards(config.LEDGER_OWNED_SHARDS, config.LEDGER_SHARDS);
  await ensureShards(pool, shards);

  const workers = new Piscina<BatchTask, WorkerReply>({
    filename: workerUrl(),
    minThreads: config.LEDGER_WORKERS,
    maxThreads: config.LEDGER_WORKERS,
    concurrentTasksPerWorker: config.LEDGER_WORKER_CONCURRENCY,
    idleTimeout: 60_000,
    workerData: { config },
  });
  // Until the metrics exporter lands, batch statistics are summed here and logged at shutdown.
  const batchStats = { batches: 0, events: 0, ms: 0, attempts: 0 };
  const router = new LedgerRouter(
    config.LEDGER_SHARDS,
    shards,
    (task) => workers.run(task),
    { maxEvents: config.LEDGER_BATCH_MAX, windowMs: config.LEDGER_BATCH_WINDOW_MS, maxQueuedEvents: config.LEDGER_MAX_QUEUED_EVENTS },
    {
      onBatch(_shard, events, _submissions, ms, attempts) {
        batchStats.attempts += attempts;
        batchStats.batches++;
        batchStats.events += events;
        batchStats.ms += ms;
      },
    },
    shardOwners(config.LEDGER_SHARD_OWNERS, config.LEDGER_SHARDS),
  );

  const server = new Server({ 'grpc.max_receive_message_length': 32 * 1024 * 1024, 'grpc.max_send_message_length': 32 * 1024 * 1024 });
  server.addService(LedgerServiceService, createLedgerService(router, pool, logger));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.LEDGER_GRPC_LISTEN, ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const address = `${config.LEDGER_GRPC_LISTEN.replace(/:\d+$/, '').replace('0.0.0.0', '127.0.0.1')}:${port}`;

  const sweeper = new ExpirySweeper(pool, router, logger, config.LEDGER_EXPIRY_SWEEP_MS);
  sweeper.start();
  const relay = config.LEDGER_RELAY_ENABLED ? new OutboxRelay(pool, config, shards, logger) : undefined;
  relay?.start();
  logger.info({ address, shards: shards.length, shardCount: config.LEDGER_SHARDS, workers: config.LEDGER_WORKERS }, 'ledger listening');

  return {
    address,
    router,
    workers,
    sweeper,
    relay,
    async close() {
      await sweeper.stop();
      // Let calls that wait on a batch finish (their batch commits either way); then stop hard.
      await new Promise<void>((resolve) => {
        const force = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 10_000);
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      });
      await workers.close();
      // Rows the relay has not published stay in the outbox for the next owner of the shards.
      await relay?.stop();
      await pool.end();
      const { batches, events, ms, attempts } = batchStats;
      logger.info({ batches, events, attempts, meanBatchEvents: batches && Math.round(events / batches), meanBatchMs: batches && Math.round(ms / batches) }, 'ledger batches');
    },
  };
}
