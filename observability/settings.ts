import { existsSync, readFileSync } from 'node:fs';
import type { Config } from '../lib/config.js';
import type { TracingSettings } from './tracing.js';

// package.json is one level up from the sources, two from dist/observability (the image).
const PACKAGE = [new URL('../package.json', import.meta.url), new URL('../../package.json', import.meta.url)].find((u) => existsSync(u));
const VERSION = PACKAGE ? (JSON.parse(readFileSync(PACKAGE, 'utf8')) as { version: string }).version : 'unknown';

/** Tracing of a service from the configuration (README "Configuration": TRACES_*, OTEL_EXPORTER_OTLP_ENDPOINT). */
export function tracingSettings(service: string, config: Config): TracingSettings {
  return {
    service,
    version: VERSION,
    ...(config.SERVICE_INSTANCE_ID ? { instanceId: config.SERVICE_INSTANCE_ID } : {}),
    exporter: config.TRACES_EXPORTER ?? (config.OTEL_EXPORTER_OTLP_ENDPOINT ? 'otlp' : 'none'),
    ...(config.OTEL_EXPORTER_OTLP_ENDPOINT ? { endpoint: config.OTEL_EXPORTER_OTLP_ENDPOINT } : {}),
    file: config.TRACES_FILE,
    samplingRatio: config.TRACES_SAMPLING_RATIO,
  };
}
