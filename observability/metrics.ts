import type { Meter } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { OTLPMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { MeterProvider, PeriodicExportingMetricReader, type IMetricReader } from '@opentelemetry/sdk-metrics';

/**
 * Metrics of one service, served for Prometheus on `/metrics` (METRICS_PORT; 0 turns the endpoint off while
 * the instruments keep working), and pushed over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set.
 */
export interface ServiceMetrics {
  meter: Meter;
  /** The port /metrics is served on, 0 when off. */
  port: number;
  shutdown(): Promise<void>;
}

export async function startMetrics(service: string, port: number, otlpEndpoint?: string): Promise<ServiceMetrics> {
  const exporter = port === 0 ? undefined : new PrometheusExporter({ host: '0.0.0.0', port, preventServerStart: true });
  const readers: IMetricReader[] = exporter ? [exporter] : [];
  // With a collector, the same instruments are also pushed over OTLP (every 15 s).
  if (otlpEndpoint) readers.push(new PeriodicExportingMetricReader({ exporter: new OTLPMetricExporter({ url: `${otlpEndpoint.replace(/\/$/, '')}/v1/metrics` }), exportIntervalMillis: 15_000 }));
  const provider = new MeterProvider({ resource: resourceFromAttributes({ 'service.name': service }), readers });
  await exporter?.startServer();
  return {
    meter: provider.getMeter(service),
    port,
    async shutdown() {
      await exporter?.stopServer();
      await provider.shutdown();
    },
  };
}
