import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, it } from 'mocha';
import { parse as parseYaml } from 'yaml';

const yamlFile = (path: string) => parseYaml(readFileSync(path, 'utf8'), { merge: true }) as Record<string, unknown>;

/** The shipped monitoring configuration (alerts.yml, prometheus.yml) against what it is meant to catch. */
describe('monitoring configuration', () => {
  it('the alerting rules fire on the conditions of their unit tests (promtool test rules)', () => {
    const run = spawnSync('promtool', ['test', 'rules', 'observability/alerts-tests.yml'], { encoding: 'utf8' });
    assert.equal(run.error, undefined, 'promtool is installed by scripts/ensure-tools.sh');
    assert.equal(run.status, 0, run.stdout + run.stderr);
  });

  it("Prometheus reads each service's metrics once in docker-compose: scraped on /metrics or through the collector, not both", () => {
    const compose = yamlFile('docker-compose.yml') as { services: Record<string, { environment?: Record<string, string> }> };
    const prometheus = yamlFile('observability/prometheus.yml') as { scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[] };
    const collector = yamlFile('observability/otel-collector.yaml') as {
      exporters: Record<string, { endpoint?: string }>;
      service: { pipelines: Record<string, { receivers: string[]; exporters: string[] }> };
    };
    const targets = prometheus.scrape_configs.flatMap((c) => c.static_configs.flatMap((s) => s.targets));
    // The collector's own Prometheus endpoint re-exports the metrics services push to it over OTLP.
    const reexported = Object.entries(collector.service.pipelines)
      .filter(([name, p]) => name.startsWith('metrics') && p.receivers.includes('otlp'))
      .flatMap(([, p]) => p.exporters.filter((e) => e.startsWith('prometheus')).map((e) => `otel-collector:${collector.exporters[e]?.endpoint?.split(':').pop()}`));
    const collectorScraped = reexported.some((t) => targets.includes(t));
    for (const service of ['ledger', 'risk', 'settlement', 'gateway']) {
      const env = compose.services[service]?.environment ?? {};
      assert.ok(env['METRICS_PORT'], `${service}: METRICS_PORT`);
      const scraped = targets.includes(`${service}:${env['METRICS_PORT']}`);
      const pushed = collectorScraped && (env['OTEL_EXPORTER_OTLP_ENDPOINT'] ?? '').includes('otel-collector');
      assert.ok(scraped || pushed, `${service}: its metrics reach Prometheus by no path`);
      // Both: every series twice (job="${service}" and job="otel-collector"), and each sum() of the dashboard doubled.
      assert.ok(!(scraped && pushed), `${service}: scraped on ${service}:${env['METRICS_PORT']} and also through the collector (${reexported.join(', ')})`);
    }
  });
});
