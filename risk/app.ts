import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { Config } from '../lib/config.js';
import type { Logger } from '../lib/logger.js';
import { RiskServiceService } from '../proto/gen/risk/v1/risk.js';
import { readFile } from 'node:fs/promises';
import { FeatureStore } from './ml/features.js';
import { loadModel } from './ml/models.js';
import type { ModelArtefact } from './ml/pipeline.js';
import { ModelScorer, PaymentFeatureFeed } from './ml/serving.js';
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
async function startScorer(config: Config, logger: Logger): Promise<{ scorer: Scorer; version: string; close(): Promise<void> }> {
  if (!config.RISK_MODEL_PATH) return { scorer: new RulesScorer(rulesSettings(config)), version: RULES_MODEL_VERSION, close: async () => undefined };
  const artefact = JSON.parse(await readFile(config.RISK_MODEL_PATH, 'utf8')) as ModelArtefact;
  const store = new FeatureStore();
  const feed = new PaymentFeatureFeed(store, config, logger);
  await feed.start();
  return { scorer: new ModelScorer(await loadModel(artefact.parameters), store, artefact.version, artefact.threshold), version: artefact.version, close: () => feed.stop() };
}

export async function startRisk(config: Config, logger: Logger): Promise<RiskApp> {
  const { scorer, version, close: closeScorer } = await startScorer(config, logger);
  const server = new Server();
  server.addService(RiskServiceService, createRiskService(scorer, logger));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.RISK_GRPC_LISTEN, ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const address = `${config.RISK_GRPC_LISTEN.replace(/:\d+$/, '').replace('0.0.0.0', '127.0.0.1')}:${port}`;
  logger.info({ address, model: version }, 'risk listening');
  return {
    address,
    async close() {
      await new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      await closeScorer();
    },
  };
}
