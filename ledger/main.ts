/** The ledger process: gRPC LedgerService over shard batchers and piscina workers. */
import { loadConfig } from '../lib/config.js';
import { createLogger } from '../lib/logger.js';
import { startLedger } from './app.js';

const config = loadConfig();
const logger = createLogger('ledger', config.LOG_LEVEL);
const app = await startLedger(config, logger);

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'ledger stopping');
  await app.close();
  logger.info('ledger stopped');
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
