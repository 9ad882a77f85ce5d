/**
 * `make bench`, payments part: POST /v1/payments (automatic capture, card source, a distinct Idempotency-Key
 * per request) through the REST gateway with autocannon, 256 connections, BENCH_PAYMENTS_SECONDS (default 30)
 * per run. Every service runs as its own process, as in production: risk, ledger (with payments and the outbox
 * relay to a stream of the benchmark's own), gateway. The baseline is the same stack with ledger batches of one
 * event (LEDGER_BATCH_MAX=1), measured in the same run: only the ratio means anything on a shared machine.
 * The cost of tracing: the default stack again with every service tracing at sampling 1.0 and exporting
 * OTLP/HTTP to a sink in this process (it reads and drops the spans), against the default run (tracing off).
 * The floors (bench/payments-floor.ts): the same requests answered with the least work a payment needs, in the
 * issue's three processes and in one: what this machine allows at all, beside what the stack makes of it.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import autocannon from 'autocannon';
import { loadConfig } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { deleteStream } from '../lib/streams.js';
import { commandCpuSeconds, hasProcfs, processCpuSeconds } from './cpu.js';
import { createFloorTables, dropFloorTables, floorEventsUnpublished, FLOOR_STREAM } from './payments-floor.js';
import { cpuProfileArgs, spawnService, type ServiceProcess } from '../test/ledger-process.js';

const SECONDS = Number(process.env['BENCH_PAYMENTS_SECONDS'] ?? 30);
const CONNECTIONS = Number(process.env['BENCH_PAYMENTS_CONNECTIONS'] ?? 256);
/** BENCH_PAYMENTS_RUNS: only these runs (e.g. `default` to compare two builds quickly); default all four. */
const RUNS = process.env['BENCH_PAYMENTS_RUNS']?.split(',') ?? ['baseline', 'default', 'traced', 'floor'];
const config = loadConfig();
const ADMIN_KEY = `admin_${randomBytes(24).toString('base64url')}`;
const STREAM = { EVENTS_STREAM: 'BENCH_PAYMENT_EVENTS', EVENTS_SUBJECT_PREFIX: 'benchpay', EVENTS_MAX_BYTES: String(2 * 1024 ** 3) };

interface Row {
  scenario: string;
  paymentsPerSecond: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
  total: number;
}

/** BENCH_PROFILE=1: only the default stack, every service writing CPU profiles (main thread and workers) to /tmp/prof. */
const PROFILE = process.env['BENCH_PROFILE'] ? cpuProfileArgs() : [];

/** A running system answering POST /v1/payments at `url` to requests with the secret key `key`. */
interface Stack {
  url: string;
  key: string;
  /** Its processes by name, for the CPU each spends per payment. */
  services: Record<string, ServiceProcess>;
  stop(): Promise<void>;
}

async function startStack(ledgerEnv: Record<string, string>, everyService: Record<string, string> = {}): Promise<Stack> {
  const common = { DATABASE_URL: config.DATABASE_URL, LOG_LEVEL: 'warn', METRICS_PORT: '0', ...STREAM, ...everyService };
  const started: ServiceProcess[] = [];
  try {
    const risk = await spawnService('risk/main.ts', { ...common, RISK_RULES_VELOCITY_MAX: '1000000' }, PROFILE);
    started.push(risk);
    const ledger = await spawnService('ledger/main.ts', { ...common, RISK_GRPC_TARGET: risk.target, ...ledgerEnv }, PROFILE);
    started.push(ledger);
    const gateway = await spawnService('gateway/main.ts', {
      ...common,
      LEDGER_GRPC_TARGET: ledger.target,
      ADMIN_API_KEY: ADMIN_KEY,
      GATEWAY_RATE_LIMIT_PER_SECOND: '1000000',
      GATEWAY_RATE_LIMIT_BURST: '1000000',
      GATEWAY_MAX_IN_FLIGHT: String(Math.max(256, CONNECTIONS)),
    }, PROFILE);
    started.push(gateway);
    const url = `http://${gateway.target}`;
    return { url, key: await merchantKey(url), services: { gateway, ledger, risk }, stop: () => stopAll(started) };
  } catch (error) {
    await stopAll(started);
    throw error;
  }
}

/** The floor in the issue's three processes (gateway, payments, risk) or in one (the gateway doing it all). */
async function startFloor(processes: 1 | 3): Promise<Stack> {
  const pool = createPool(config, { max: 1, applicationName: 'bench' });
  await createFloorTables(pool);
  const started: ServiceProcess[] = [];
  const stop = async () => {
    await stopAll(started);
    console.log(`  (${await floorEventsUnpublished(pool)} payment events were not yet published when the floor stopped)`);
    await dropFloorTables(pool);
    await pool.end();
    await deleteStream(config, FLOOR_STREAM);
  };
  try {
    const common = { DATABASE_URL: config.DATABASE_URL, LOG_LEVEL: 'warn' };
    const services: Record<string, ServiceProcess> = {};
    if (processes === 3) {
      services['risk'] = await spawnService('bench/payments-floor.ts', { ...common, FLOOR_ROLE: 'risk' });
      started.push(services['risk']);
      services['payments'] = await spawnService('bench/payments-floor.ts', { ...common, FLOOR_ROLE: 'payments', FLOOR_RISK_TARGET: services['risk'].target });
      started.push(services['payments']);
    }
    const gateway = await spawnService('bench/payments-floor.ts', { ...common, FLOOR_ROLE: 'gateway', ...(services['payments'] ? { FLOOR_PAYMENTS_TARGET: services['payments'].target } : {}) });
    started.push(gateway);
    return { url: `http://${gateway.target}`, key: 'floor', services: { gateway, ...services }, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * CPU seconds used so far by each part: the stack's processes, every PostgreSQL and NATS server process on the
 * machine, and this one (autocannon). Empty where there is no /proc.
 */
function cpuByPart(services: Record<string, ServiceProcess>): Map<string, number> {
  const parts = new Map<string, number>();
  if (!hasProcfs) return parts;
  for (const [name, service] of Object.entries(services)) parts.set(name, processCpuSeconds(service.child.pid!));
  for (const server of ['postgres', 'nats-server']) parts.set(server, commandCpuSeconds(server));
  parts.set('autocannon', processCpuSeconds(process.pid));
  return parts;
}

async function stopAll(processes: ServiceProcess[]): Promise<void> {
  for (const p of processes.reverse()) await p.stop();
}

async function analyze(): Promise<void> {
  const pool = createPool(config, { max: 1, applicationName: 'bench' });
  try {
    await pool.query('ANALYZE');
  } finally {
    await pool.end();
  }
}

async function merchantKey(url: string): Promise<string> {
  const r = await fetch(`${url}/v1/merchants`, {
    method: 'POST',
    headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Bench merchant' }),
  });
  const body = (await r.json()) as { secret_key?: string };
  if (!r.ok || !body.secret_key) throw new Error(`creating the bench merchant failed: ${r.status} ${JSON.stringify(body)}`);
  return body.secret_key;
}

function drive(url: string, key: string, seconds: number): Promise<autocannon.Result> {
  return autocannon({
    url,
    connections: CONNECTIONS,
    duration: seconds,
    requests: [
      {
        method: 'POST',
        path: '/v1/payments',
        setupRequest: (request) => ({
          ...request,
          headers: { ...request.headers, authorization: `Bearer ${key}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() },
          // Distinct cards, amounts under the fail-open limit: the benchmark measures the path, not the rules.
          body: JSON.stringify({
            amount: 100 + Math.floor(Math.random() * 5_000),
            currency: 'USD',
            source: { card: { token: 'tok_bench', fingerprint: `fp_${randomUUID()}`, country: 'US' } },
            capture_method: 'automatic',
          }),
        }),
      },
    ],
  });
}

async function measure(scenario: string, start: () => Promise<Stack>): Promise<Row> {
  const stack = await start();
  try {
    const { key } = stack;
    await drive(stack.url, key, 3); // warm-up: JIT, connection pools, platform accounts
    // On a fresh database the payment tables have no statistics until autovacuum gets to them, and the first
    // run of a session measured plans made without them (p99 above 1.5 s where the next run had 0.3 s).
    await analyze();
    // autocannon stops by closing its connections: the warm-up's last requests are still being served and count
    // against GATEWAY_MAX_IN_FLIGHT, so the measured run would start by shedding. Let them finish first.
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    const cpuBefore = cpuByPart(stack.services);
    const r = await drive(stack.url, key, SECONDS);
    const cpuAfter = cpuByPart(stack.services);
    const row = { scenario, paymentsPerSecond: r['2xx'] / SECONDS, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors + r.timeouts, non2xx: r.non2xx, total: r.requests.total };
    // Which statuses the non-2xx answers were (503 overloaded, 504 deadline, ...): a rate alone hides shedding.
    const statuses = Object.entries(r.statusCodeStats ?? {}).filter(([code]) => !code.startsWith('2')).map(([code, s]) => `${code}: ${s.count}`).join(', ');
    console.log(`${scenario.padEnd(40)} ${Math.round(row.paymentsPerSecond).toString().padStart(6)} payments/s  p50 ${row.p50} ms  p99 ${row.p99} ms  errors ${row.errors}  non-2xx ${row.non2xx}${statuses ? ` (${statuses})` : ''}`);
    // Where a payment's CPU goes: what the rate alone cannot say (two cores shared by every part).
    const perPayment = [...cpuAfter].map(([part, seconds]) => `${part} ${Math.round(((seconds - (cpuBefore.get(part) ?? 0)) * 1e6) / Math.max(1, r['2xx']))}`);
    if (perPayment.length > 0) console.log(`  CPU per payment, µs: ${perPayment.join(', ')}`);
    return row;
  } finally {
    await stack.stop();
  }
}

async function main(): Promise<void> {
  console.log(`bench payments: ${os.cpus().length} cores, ${SECONDS} s per run, ${CONNECTIONS} connections, POST /v1/payments (automatic capture)`);
  if (PROFILE.length > 0) {
    // Profiling slows every service: only the default stack, no comparison, no results file.
    await measure('ledger batching (default settings), profiled', () => startStack({}));
    await deleteStream(config, STREAM.EVENTS_STREAM);
    return;
  }
  const rows: Row[] = [];
  // An OTLP/HTTP receiver that reads and drops what it gets: the collector's side is not the services' cost.
  let spanBytes = 0;
  const sink = createServer((request, response) => {
    request.on('data', (chunk: Buffer) => (spanBytes += chunk.length));
    request.on('end', () => response.writeHead(200, { 'content-type': 'application/json' }).end('{}'));
  });
  await new Promise<void>((resolve) => sink.listen(0, '127.0.0.1', resolve));
  const otlp = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`;
  try {
    if (RUNS.includes('baseline')) rows.push(await measure('baseline: ledger batches of 1', () => startStack({ LEDGER_BATCH_MAX: '1' })));
    if (RUNS.includes('default')) rows.push(await measure('ledger batching (default settings), tracing off', () => startStack({})));
    if (RUNS.includes('traced')) rows.push(await measure('the same, tracing at sampling 1.0 (OTLP)', () => startStack({}, { OTEL_EXPORTER_OTLP_ENDPOINT: otlp, TRACES_SAMPLING_RATIO: '1' })));
    if (RUNS.includes('floor')) {
      rows.push(await measure('floor: the least work, 3 processes', () => startFloor(3)));
      rows.push(await measure('floor: the least work, 1 process', () => startFloor(1)));
    }
  } finally {
    sink.close();
    await deleteStream(config, STREAM.EVENTS_STREAM);
  }
  if (rows.length < 5) return; // a partial run: its lines above are the result, the table needs them all
  const [, untraced, traced, floor] = rows;
  console.log(`tracing at sampling 1.0: ${((traced!.paymentsPerSecond / untraced!.paymentsPerSecond) * 100).toFixed(1)}% of the untraced throughput (${(spanBytes / 1024 / 1024).toFixed(1)} MiB of OTLP received)`);
  console.log(`the stack (tracing off) makes ${((untraced!.paymentsPerSecond / floor!.paymentsPerSecond) * 100).toFixed(1)}% of the 3-process floor's payments/s`);
  const base = rows[0]!.paymentsPerSecond;
  const table = [
    '| scenario | payments/s | x baseline | p50 ms | p99 ms | errors | non-2xx |',
    '|---|---:|---:|---:|---:|---:|---:|',
    ...rows.map((r) => `| ${r.scenario} | ${Math.round(r.paymentsPerSecond).toLocaleString('en-US')} | ${(r.paymentsPerSecond / base).toFixed(2)}x | ${r.p50} | ${r.p99} | ${r.errors} | ${r.non2xx} |`),
  ].join('\n');
  console.log(`\n${table}\n`);
  await mkdir('bench/results', { recursive: true });
  await writeFile('bench/results/payments.md', `${new Date().toISOString()} ${os.cpus().length} cores, ${CONNECTIONS} connections, ${SECONDS} s\n\n${table}\n`);
}

await main();
