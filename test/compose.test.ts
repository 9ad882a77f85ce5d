import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../lib/config.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

function compose(...args: string[]) {
  const result = spawnSync('docker-compose', ['-f', 'docker-compose.yml', ...args], { cwd: ROOT, encoding: 'utf8' });
  if (result.error) {
    throw new Error(`docker-compose could not run (${result.error.message}); run scripts/ensure-tools.sh`);
  }
  return result;
}

describe('docker-compose.yml', () => {
  it('is valid for docker-compose v1 (older schema)', () => {
    const result = compose('config', '-q');
    assert.equal(result.status, 0, result.stderr);
  });

  it('runs the clusters, the telemetry stack and the project services', () => {
    const result = compose('config', '--services');
    assert.equal(result.status, 0, result.stderr);
    const services = new Set(result.stdout.trim().split('\n'));
    for (const expected of ['crdb1', 'crdb2', 'crdb3', 'crdb-init', 'nats1', 'nats2', 'nats3', 'otel-collector', 'jaeger', 'prometheus', 'migrate', 'ledger', 'risk', 'settlement', 'gateway']) {
      assert.ok(services.has(expected), `service ${expected} missing from ${[...services].join(', ')}`);
    }
  });

  it('builds every project service from the one Dockerfile and points it at the clusters', () => {
    const result = compose('config');
    assert.equal(result.status, 0, result.stderr);
    const text = result.stdout;
    // Each project service appears with the same build section and the cluster endpoints.
    const projectServices = ['migrate', 'ledger', 'risk', 'settlement', 'gateway'];
    const builds = new Map<string, string>();
    for (const name of projectServices) {
      const block = new RegExp(`\\n  ${name}:\\n([\\s\\S]*?)(?=\\n  [a-z0-9-]+:\\n|\\n[a-z]+:)`).exec(text)?.[1] ?? '';
      assert.ok(block, `service ${name} not found in the docker-compose config output`);
      const build = /\n {4}build:\n((?: {6}.*\n)+)/.exec(`\n${block}\n`)?.[1] ?? '';
      assert.match(build, /^ {6}dockerfile: Dockerfile$/m, `${name} is not built from ./Dockerfile`);
      const context = /^ {6}context: (.*)$/m.exec(build)?.[1];
      assert.equal(context && path.resolve(ROOT, context), ROOT, `${name} is not built from the repository root`);
      builds.set(name, build);
      assert.match(block, /DATABASE_URL: postgres:\/\/root@crdb1:26257\/ledgerline/, `${name} lacks DATABASE_URL`);
      assert.match(block, /NATS_URL: nats:\/\/nats1:4222,nats:\/\/nats2:4222,nats:\/\/nats3:4222/, `${name} lacks NATS_URL`);
      assert.match(block, /NATS_STREAM_REPLICAS: '3'/, `${name} lacks NATS_STREAM_REPLICAS=3`);
      // The services' configuration must pass the same validation as at start-up.
      const env = Object.fromEntries(
        [...(/\n {4}environment:\n((?: {6}.*\n)+)/.exec(block)?.[1] ?? '').matchAll(/^ {6}([A-Z_]+): '?(.*?)'?$/gm)].map((m) => [m[1]!, m[2]!]),
      );
      assert.ok(Object.keys(env).length >= 5, `${name}: no environment found`);
      for (const variable of ['NODE_ENV', 'LOG_LEVEL', 'DATABASE_URL', 'NATS_URL', 'NATS_STREAM_REPLICAS', 'LEDGER_GRPC_LISTEN', 'LEDGER_SHARDS', 'LEDGER_OWNED_SHARDS', 'OTEL_EXPORTER_OTLP_ENDPOINT']) {
        assert.ok(env[variable], `${name}: ${variable} not set`);
      }
      assert.equal(env.DATABASE_DIALECT, 'cockroachdb', `${name}: DATABASE_DIALECT must be cockroachdb (the stack runs CockroachDB)`);
      assert.doesNotThrow(() => loadConfig(env), `${name}: environment rejected by lib/config.ts`);
    }
    assert.equal(new Set(builds.values()).size, 1, `project services differ in their build sections: ${JSON.stringify(Object.fromEntries(builds))}`);
  });
});
