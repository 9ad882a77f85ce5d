/** The gateway process: REST/JSON on GATEWAY_PORT, gRPC to the ledger (and the payments beside it). */
import { runService } from '../lib/service-main.js';
import { startMetrics } from '../observability/metrics.js';
import { InFlight, buildGateway, gatewayPool } from './app.js';
import { Backends } from './backends.js';

await runService('gateway', async (config, logger) => {
  const pool = gatewayPool(config);
  const backends = new Backends(config);
  const metrics = await startMetrics('gateway', config.METRICS_PORT, config.OTEL_EXPORTER_OTLP_ENDPOINT);
  const inFlight = new InFlight();
  const app = await buildGateway({ config, pool, backends, logger, inFlight, meter: metrics.meter });
  await app.listen({ port: config.GATEWAY_PORT, host: config.GATEWAY_HOST });
  logger.info({ port: config.GATEWAY_PORT }, 'gateway listening');
  return {
    async close() {
      await app.close();
      await inFlight.drained();
      backends.close();
      await metrics.shutdown();
      await pool.end();
    },
  };
});
