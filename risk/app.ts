import { Server } from '@grpc/grpc-js';
import { amountsByCurrency, type Config } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { observeRpcServer, shutdownGrpcServer } from '../lib/grpc.js';
import { grpcTlsEnabled, serverCredentials, serverOptions } from '../lib/grpc-tls.js';
import type { Logger } from '../lib/logger.js';
import { RiskServiceService } from '../proto/gen/risk/v1/risk.js';
import { FeatureCheckpoints } from './ml/feature-checkpoints.js';
import { FeatureStore } from './ml/features.js';
import { readArtefact } from './ml/artefact.js';
import type { FraudModel } from './ml/models.js';
import type { ModelArtefact } from './ml/pipeline.js';
import { ChampionChallenger } from './ml/rollout.js';
import { MonitoredScorer } from './ml/score-monitor.js';
import { FeatureDriftMonitor } from './ml/monitoring.js';
import { startMetrics } from '../observability/metrics.js';
import { ModelScorer, PaymentFeatureFeed } from './ml/serving.js';
import { connectJetStream, connectNats } from '../lib/nats.js';
import { headers } from '@nats-io/transport-node';
import { RULES_MODEL_VERSION, RulesScorer, type RulesSettings } from './rules.js';
import type { Scorer } from './service.js';
import { createRiskService } from './service.js';

export interface RiskApp {
  /** The bound address, e.g. 127.0.0.1:50052 (the real port when configured with :0). */
  address: string;
  close(): Promise<void>;
}

export function rulesSettings(config: Config): RulesSettings {
  return {
    maxAmount: BigInt(config.RISK_RULES_MAX_AMOUNT),
    maxAmountByCurrency: amountsByCurrency(config.RISK_RULES_MAX_AMOUNT_BY_CURRENCY, 'RISK_RULES_MAX_AMOUNT_BY_CURRENCY'),
    velocityMax: config.RISK_RULES_VELOCITY_MAX,
    velocityWindowMs: config.RISK_RULES_VELOCITY_WINDOW_SECONDS * 1000,
    declineThresholdPpm: config.RISK_DECLINE_THRESHOLD_PPM,
    reviewThresholdPpm: config.RISK_REVIEW_THRESHOLD_PPM,
  };
}

/**
 * The scorer Score serves: the model artefact at RISK_MODEL_PATH with its online feature feed, or the
 * rules-only scorer when no model is configured.
 */
async function startScorer(config: Config, logger: Logger): Promise<{ scorer: Scorer; version: string; reference?: number[]; referenceVersion?: string; featureDrift?: FeatureDriftMonitor; close(): Promise<void> }> {
  const rules = new RulesScorer(rulesSettings(config));
  if (!config.RISK_MODEL_PATH && !config.RISK_CHALLENGER_MODEL_PATH) return { scorer: rules, version: RULES_MODEL_VERSION, close: async () => undefined };
  // Both artefacts are read and checked first: a broken one stops the start before any feed or connection opens.
  const championModel = config.RISK_MODEL_PATH ? await readArtefact(config.RISK_MODEL_PATH) : undefined;
  const challengerModel = config.RISK_CHALLENGER_MODEL_PATH ? await readArtefact(config.RISK_CHALLENGER_MODEL_PATH) : undefined;
  // One feature store for every model of the instance, fed from the payment events, checkpointed to PostgreSQL.
  const store = new FeatureStore();
  const pool = createPool(config, { max: 2, applicationName: 'risk-features' });
  const checkpoints = new FeatureCheckpoints(pool, `${config.EVENTS_STREAM}:${PaymentFeatureFeed.subjects(config)}`);
  const feed = new PaymentFeatureFeed(store, config, logger, checkpoints);
  await feed.start();
  const stopFeed = async () => {
    await feed.stop();
    await pool.end();
  };
  let reference: number[] | undefined;
  let featureDrift: FeatureDriftMonitor | undefined;
  // The champion's inputs are watched for drift (the challenger sees the same features). The scores answered
  // are the champion's: only its training scores are their reference (with the rules as champion, none: the
  // first window is).
  const modelScorer = ({ artefact, model }: { artefact: ModelArtefact; model: FraudModel }, watched: boolean, champion: boolean) => {
    if (champion) reference = artefact.trainingScoreSample;
    if (watched) featureDrift = new FeatureDriftMonitor(artefact.features, artefact.trainingFeatureSample);
    return new ModelScorer(model, store, artefact.version, artefact.threshold, watched ? featureDrift : undefined);
  };
  const champion = championModel ? modelScorer(championModel, true, true) : rules;
  if (!challengerModel) return { scorer: champion, version: champion.version, reference, featureDrift, close: stopFeed };
  const challenger = modelScorer(challengerModel, !championModel, false);
  const nc = await connectNats(config, { name: 'risk-decisions' });
  const { js } = await connectJetStream(nc);
  const publish = (subject: string, payload: Uint8Array, msgID: string, traceparent: string) => {
    const h = headers();
    if (traceparent) h.set('traceparent', traceparent);
    js.publish(subject, payload, { msgID, headers: h }).catch((err: unknown) => logger.warn({ err }, 'risk decision event not published'));
  };
  const scorer = new ChampionChallenger(champion, challenger, config.RISK_CHALLENGER_MODE, config.RISK_CHALLENGER_PERCENT, publish, `${config.EVENTS_SUBJECT_PREFIX}.risk.decisions`, logger);
  return {
    scorer,
    version: `${champion.version} vs ${challenger.version} (${config.RISK_CHALLENGER_MODE})`,
    reference,
    referenceVersion: champion.version,
    featureDrift,
    async close() {
      await nc.drain();
      await stopFeed();
    },
  };
}

export async function startRisk(config: Config, logger: Logger): Promise<RiskApp> {
  const { scorer, version, reference, referenceVersion, featureDrift, close: closeScorer } = await startScorer(config, logger);
  const metrics = await startMetrics('risk', config.METRICS_PORT, config.OTEL_EXPORTER_OTLP_ENDPOINT);
  if (featureDrift) {
    metrics.meter
      .createObservableGauge('risk_feature_psi', { description: 'Population stability index of each model input over the last 5,000 scores against the training sample (0.1 watch, 0.25 alert)' })
      .addCallback((result) => {
        for (const d of featureDrift.drift) result.observe(d.psi, { feature: d.name });
      });
  }
  const server = new Server(serverOptions(config));
  observeRpcServer(metrics.meter, ['risk.v1.RiskService']);
  server.addService(RiskServiceService, createRiskService(new MonitoredScorer(scorer, metrics.meter, reference, undefined, referenceVersion), logger));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.RISK_GRPC_LISTEN, serverCredentials(config), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const address = `${config.RISK_GRPC_LISTEN.replace(/:\d+$/, '').replace('0.0.0.0', '127.0.0.1')}:${port}`;
  logger.info({ address, tls: grpcTlsEnabled(config), model: version }, 'risk listening');
  return {
    address,
    async close() {
      // Calls running, and handlers of calls given up on, finish before what they use is closed.
      await shutdownGrpcServer(server);
      await closeScorer();
      await metrics.shutdown();
    },
  };
}
