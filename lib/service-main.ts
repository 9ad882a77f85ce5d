import { startTracing } from '../observability/tracing.js';
import { tracingSettings } from '../observability/settings.js';
import { loadConfig, type Config } from './config.js';
import { createLogger, type Logger } from './logger.js';

/**
 * A service process: loads the configuration, starts the service, and on SIGTERM/SIGINT closes it (draining
 * what is in flight) before exiting. One entry shape for every service of the project.
 */
export async function runService(name: string, start: (config: Config, logger: Logger) => Promise<{ close(): Promise<void> }>): Promise<void> {
  const config = loadConfig();
  // Tracing first: spans of start-up (migrations checks, connections) belong to the service too.
  const tracing = startTracing(tracingSettings(name, config));
  const logger = createLogger(name, config.LOG_LEVEL);
  const service = await start(config, logger);
  let stopping = false;
  const shutdown = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, `${name} stopping`);
    await service.close();
    await tracing.shutdown();
    logger.info(`${name} stopped`);
    process.exit(0);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
}
