/** The risk process: gRPC RiskService (the rules-only scorer until a trained model replaces it). */
import { runService } from '../lib/service-main.js';
import { startRisk } from './app.js';

await runService('risk', startRisk);
