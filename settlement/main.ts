/** The settlement process: payment events in, batches and payouts out (settlement/README.md). */
import { runService } from '../lib/service-main.js';
import { startSettlement } from './app.js';

await runService('settlement', startSettlement);
