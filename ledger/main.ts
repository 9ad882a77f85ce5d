/** The ledger process: gRPC LedgerService (and PaymentService) over shard batchers and piscina workers. */
import { runService } from '../lib/service-main.js';
import { startLedger } from './app.js';

await runService('ledger', startLedger);
