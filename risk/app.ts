import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { Config } from '../lib/config.js';
import type { Logger } from '../lib/logger.js';
import { RiskServiceService } from '../proto/gen/risk/v1/risk.js';
import { RulesScorer, type RulesSettings } from './rules.js';
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

export async function startRisk(config: Config, logger: Logger): Promise<RiskApp> {
  const scorer = new RulesScorer(rulesSettings(config));
  const server = new Server();
  server.addService(RiskServiceService, createRiskService(scorer, logger));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.RISK_GRPC_LISTEN, ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))),
  );
  const address = `${config.RISK_GRPC_LISTEN.replace(/:\d+$/, '').replace('0.0.0.0', '127.0.0.1')}:${port}`;
  logger.info({ address, model: 'rules-v1' }, 'risk listening');
  return {
    address,
    close: () => new Promise<void>((resolve) => server.tryShutdown(() => resolve())),
  };
}
