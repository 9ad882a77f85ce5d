import { Server } from '@grpc/grpc-js';
import { Piscina } from 'piscina';
import type { Config } from '../lib/config.js';
import { amountsByCurrency, ownedShards, shardOwners } from '../lib/config.js';
import { createPool, withTransaction } from '../lib/db.js';
import { observeRpcServer, shutdownGrpcServer } from '../lib/grpc.js';
import { channelCredentials, grpcTlsEnabled, serverCredentials, serverOptions } from '../lib/grpc-tls.js';
import type { Logger } from '../lib/logger.js';
import { LedgerServiceService } from '../proto/gen/ledger/v1/ledger.js';
import type { BatchTask } from './batch.js';
import { leftoverOutboxShards, relayedOutboxShards } from './outbox.js';
import { accountsWithBalanceRules } from './queries.js';
import { LedgerRouter } from './router.js';
import { createLedgerService } from './service.js';
import { ensureShards } from './store.js';
import { observeRelay, OutboxRelay } from './relay.js';
import { ExpirySweeper } from './sweeper.js';
import { startMetrics } from '../observability/metrics.js';
import type { WorkerReply } from './worker.js';
import { PaymentServiceService } from '../proto/gen/payments/v1/payments.js';
import { RiskClient } from '../risk/client.js';
import { PaymentFlows, routerLedger } from './payments/flows.js';
import { PaymentResumer } from './payments/resumer.js';
import { createPaymentService } from './payments/service.js';

export interface LedgerApp {
  /** The bound address, e.g. 127.0.0.1:50051 (the real port when configured with :0). */
  address: string;
  router: LedgerRouter;
  workers: Piscina<BatchTask, WorkerReply>;
  sweeper: ExpirySweeper;
  /** Absent when LEDGER_RELAY_ENABLED is false. */
  relay: OutboxRelay | undefined;
  payments: PaymentFlows;
  resumer: PaymentResumer;
  close(): Promise<void>;
}

/** The worker file beside this module: .ts under tsx (development, tests), .js when compiled. */
function workerUrl(): string {
  const ext = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
  return new URL(`./worker${ext}`, import.meta.url).href;
}

export async function startLedger(config: Config, logger: Logger): Promise<LedgerApp> {
  // Key lookups only (no sequential scans: their relation-wide SERIALIZABLE read locks would conflict with every write).
  const pool = createPool(config, { applicationName: 'ledger', keyAccessOnly: true });
  const shards = ownedShards(config.LEDGER_OWNED_SHARDS, config.LEDGER_SHARDS);
  // Another instance may commit batches on these rows meanwhile (rolling restart): retried like any transaction.
  const latestShardClock = await withTransaction(pool, (client) => ensureShards(client, shards));

  // A shard runs one batch at a time: threads beyond the owned shards would only idle.
  const workerThreads = Math.min(config.LEDGER_WORKERS, shards.length);
  const workers = new Piscina<BatchTask, WorkerReply>({
    filename: workerUrl(),
    minThreads: workerThreads,
    maxThreads: workerThreads,
    concurrentTasksPerWorker: config.LEDGER_WORKER_CONCURRENCY,
    idleTimeout: 60_000,
    // piscina's default ('sync'): an idle thread waits in Atomics.wait, the fastest hand-off ('disabled' measured
    // 5-30% fewer transfers/s). It cannot hear its idle connections close meanwhile (a database restart):
    // withTransaction takes another connection when BEGIN finds one dead (lib/db.ts begun).
    workerData: { config },
  });
  const metrics = await startMetrics('ledger', config.METRICS_PORT, config.OTEL_EXPORTER_OTLP_ENDPOINT);
  const batchEvents = metrics.meter.createHistogram('ledger_batch_events', {
    description: 'Events per committed shard batch',
    advice: { explicitBucketBoundaries: [1, 10, 100, 1000, 2048, 4096, 8190] },
  });
  const batchDuration = metrics.meter.createHistogram('ledger_batch_duration_ms', { description: 'Shard batch latency, queue hand-off to reply', unit: 'ms' });
  const batchRetries = metrics.meter.createCounter('ledger_batch_retries_total', { description: 'Extra transaction attempts (40001, deadlocks, reruns)' });
  const batchFailures = metrics.meter.createCounter('ledger_batch_failures_total', { description: 'Batches whose callers got an error' });
  // Every owned shard's series exists from the start: an alert on increase() sees the first failure.
  for (const shard of shards) {
    batchFailures.add(0, { shard });
    batchRetries.add(0, { shard });
  }
  // Also summed for the shutdown log line.
  const batchStats = { batches: 0, events: 0, ms: 0, attempts: 0 };
  const router = new LedgerRouter(
    config.LEDGER_SHARDS,
    shards,
    (task) => workers.run(task),
    {
      maxEvents: config.LEDGER_BATCH_MAX,
      windowMs: config.LEDGER_BATCH_WINDOW_MS,
      maxQueuedEvents: config.LEDGER_MAX_QUEUED_EVENTS,
      readBalanceRules: (ids) => accountsWithBalanceRules(pool, ids),
    },
    {
      onBatch(shard, events, _submissions, ms, attempts, failed) {
        const attributes = { shard };
        if (failed) batchFailures.add(1, attributes);
        else batchEvents.record(events, attributes);
        // A failed batch's retries too (contention that outlasted them all is when they matter most).
        if (attempts > 1) batchRetries.add(attempts - 1, attributes);
        batchDuration.record(ms, attributes);
        batchStats.attempts += attempts;
        batchStats.batches++;
        batchStats.events += events;
        batchStats.ms += ms;
      },
    },
    shardOwners(config.LEDGER_SHARD_OWNERS, config.LEDGER_SHARDS),
  );

  // Timestamps a former owner of these shards committed count as committed here too (MonotonicClock).
  router.commits.observe(latestShardClock);

  const server = new Server({ 'grpc.max_receive_message_length': 32 * 1024 * 1024, 'grpc.max_send_message_length': 32 * 1024 * 1024, ...serverOptions(config) });
  observeRpcServer(metrics.meter, ['ledger.v1.LedgerService', 'payments.v1.PaymentService']);
  server.addService(LedgerServiceService, createLedgerService(router, pool, logger, config.LEDGER_LISTING_WAIT_MS));
  // Payments run beside the ledger and reach it in-process: their transfers join the shard batches directly.
  const risk = new RiskClient(config.RISK_GRPC_TARGET, channelCredentials(config));
  const payments = new PaymentFlows(
    pool,
    routerLedger(router),
    risk,
    {
      shardCount: config.LEDGER_SHARDS,
      authorizationTimeoutSeconds: config.PAYMENTS_AUTHORIZATION_TIMEOUT_SECONDS,
      riskDeadlineMs: config.RISK_DEADLINE_MS,
      riskFailOpenBelowAmount: BigInt(config.RISK_FAIL_OPEN_BELOW_AMOUNT),
      riskFailOpenBelowAmountByCurrency: amountsByCurrency(config.RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY, 'RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY'),
      // As the ledger's listings: with other instances, payments may be created there too (unknown here).
      ...(shards.length === config.LEDGER_SHARDS ? { listingWaitMs: config.LEDGER_LISTING_WAIT_MS } : {}),
      // Started at the latest shard clock: a payment stamps above those the shards' former owner made.
      clock: router.commits.clock,
    },
    logger,
  );
  server.addService(PaymentServiceService, createPaymentService(payments, logger));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.LEDGER_GRPC_LISTEN, serverCredentials(config), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const address = `${config.LEDGER_GRPC_LISTEN.replace(/:\d+$/, '').replace('0.0.0.0', '127.0.0.1')}:${port}`;

  const sweeper = new ExpirySweeper(pool, router, logger, config.LEDGER_EXPIRY_SWEEP_MS);
  sweeper.start();
  const relay = config.LEDGER_RELAY_ENABLED
    ? new OutboxRelay(config, relayedOutboxShards(shards), logger, (db) => leftoverOutboxShards(db, config.LEDGER_SHARDS, shards))
    : undefined;
  relay?.start();
  const resumer = new PaymentResumer(pool, payments, logger, config.PAYMENTS_RESUME_AFTER_MS, config.PAYMENTS_AUTHORIZATION_TIMEOUT_SECONDS);
  resumer.task.start();

  metrics.meter.createObservableGauge('ledger_queue_events', { description: 'Events waiting in each shard queue' }).addCallback((result) => {
    for (const [shard, depth] of router.queueDepths()) result.observe(depth, { shard });
  });
  if (relay) observeRelay(metrics.meter, relay);
  logger.info({ address, tls: grpcTlsEnabled(config), shards: shards.length, shardCount: config.LEDGER_SHARDS, workers: workerThreads }, 'ledger listening');

  return {
    address,
    router,
    workers,
    sweeper,
    relay,
    payments,
    resumer,
    async close() {
      await sweeper.stop();
      await resumer.task.stop();
      // Let calls that wait on a batch finish (their batch commits either way), and handlers of calls their clients
      // gave up on, before the workers and pools close.
      await shutdownGrpcServer(server);
      await workers.close();
      risk.close();
      // Metrics first: their last collection asks the relay for its lag, through the relay's own pool.
      await metrics.shutdown();
      // Rows the relay has not published stay in the outbox for the next owner of the shards.
      await relay?.stop();
      await pool.end();
      const { batches, events, ms, attempts } = batchStats;
      logger.info({ batches, events, attempts, meanBatchEvents: batches && Math.round(events / batches), meanBatchMs: batches && Math.round(ms / batches) }, 'ledger batches');
    },
  };
}
