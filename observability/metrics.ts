import type { Meter } from '@opentelemetry/api';
import { PrometheusExporter } from '@opentelemetry/exporter-prometheus';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { MeterProvider } from '@opentelemetry/sdk-metrics';

/**
 * Metrics of one service, served for Prometheus on `/metrics` (METRICS_PORT; 0 turns the endpoint off while
 * the instruments keep working). The OpenTelemetry SDK, so that the OTLP export of the observability work
 * adds a reader here instead of replacing the instruments.
 */
export interface ServiceMetrics {
  meter: Meter;
  /** The port /metrics is served on, 0 when off. */
  port: number;
  shutdown(): Promise<void>;
}

export async function startMetrics(service: string, port: number): Promise<ServiceMetrics> {
  const exporter = port === 0 ? undefined : new PrometheusExporter({ host: '0.0.0.0', port, preventServerStart: true });
  const provider = new MeterProvider({ resource: resourceFromAttributes({ 'service.name': service }), readers: exporter ? [exporter] : [] });
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
