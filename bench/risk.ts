/**
 * `make bench`, risk part: Score latency of one call at a time (p50/p99 over BENCH_RISK_CALLS calls) for the
 * rules-only scorer and the trained models, and Score throughput with 64 concurrent callers against one and
 * two risk instances (BENCH_RISK_SECONDS each), every instance its own process as in production.
 */
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { derivedId } from '../lib/derived-id.js';
import { loadConfig } from '../lib/config.js';
import { channelCredentials } from '../lib/grpc-tls.js';
import { deleteStream } from '../lib/streams.js';
import { RiskClient } from '../risk/client.js';
import { buildDataset, synthScoreRequest, timeSplit, trainModels } from '../risk/ml/pipeline.js';
import { DEFAULT_SYNTH } from '../risk/ml/synth.js';
import { spawnService, type ServiceProcess } from '../test/ledger-process.js';

const CALLS = Number(process.env['BENCH_RISK_CALLS'] ?? 3_000);
const SECONDS = Number(process.env['BENCH_RISK_SECONDS'] ?? 5);
const config = loadConfig();
const stream = { EVENTS_STREAM: 'BENCH_RISK_EVENTS', EVENTS_SUBJECT_PREFIX: 'benchrisk' };

const synth = { ...DEFAULT_SYNTH, seed: 3, weeks: 3, customers: 1_000 };
const dataset = buildDataset(synth);
const artefacts = await trainModels(dataset, timeSplit(dataset, 2), synth);
const dir = await mkdtemp(path.join(os.tmpdir(), 'bench-risk-'));
const files = new Map<string, string>();
for (const a of artefacts) {
  const file = path.join(dir, `${a.kind}.json`);
  await writeFile(file, JSON.stringify(a));
  files.set(a.kind, file);
}
const requests = dataset.payments.slice(-5_000).map((p) => synthScoreRequest(p, (id) => derivedId('bench', id)));

async function start(model: string | undefined, instances: number): Promise<ServiceProcess[]> {
  const env = { DATABASE_URL: config.DATABASE_URL, LOG_LEVEL: 'warn', METRICS_PORT: '0', ...stream, RISK_RULES_VELOCITY_MAX: '1000000', ...(model ? { RISK_MODEL_PATH: model } : {}) };
  return Promise.all(Array.from({ length: instances }, () => spawnService('risk/main.ts', env)));
}

async function latency(name: string, model: string | undefined): Promise<string> {
  const [risk] = await start(model, 1);
  const client = new RiskClient(risk!.target, channelCredentials(config));
  try {
    for (let i = 0; i < 300; i++) await client.score(requests[i % requests.length]!, 2_000); // warm-up
    const times: number[] = [];
    for (let i = 0; i < CALLS; i++) {
      const t = performance.now();
      await client.score(requests[i % requests.length]!, 2_000);
      times.push(performance.now() - t);
    }
    times.sort((a, b) => a - b);
    const at = (q: number) => times[Math.min(times.length - 1, Math.floor(q * times.length))]!.toFixed(2);
    return `| ${name} | ${at(0.5)} | ${at(0.99)} |`;
  } finally {
    client.close();
    await risk!.stop();
  }
}

async function throughput(instances: number): Promise<number> {
  const risks = await start(files.get('gbt'), instances);
  const clients = risks.map((r) => new RiskClient(r.target, channelCredentials(config)));
  try {
    let done = 0;
    const end = performance.now() + SECONDS * 1000;
    await Promise.all(
      Array.from({ length: 64 }, async (_, w) => {
        for (let i = w; performance.now() < end; i += 64) {
          await clients[i % clients.length]!.score(requests[i % requests.length]!, 5_000);
          done++;
        }
      }),
    );
    return done / SECONDS;
  } finally {
    for (const c of clients) c.close();
    for (const r of risks) await r.stop();
  }
}

console.log(`bench risk: ${os.cpus().length} cores, ${CALLS} sequential Score calls per scorer, ${SECONDS} s per throughput run`);
const rows = ['| scorer | p50 ms | p99 ms |', '|---|---:|---:|'];
rows.push(await latency('rules-v1', undefined));
rows.push(await latency('logistic regression', files.get('logistic')));
rows.push(await latency('gradient-boosted trees', files.get('gbt')));
const one = await throughput(1);
const two = await throughput(2);
const table = `${rows.join('\n')}\n\n| Score throughput (trees), 64 callers | scores/s | x one instance |\n|---|---:|---:|\n| 1 instance | ${Math.round(one)} | 1.00x |\n| 2 instances | ${Math.round(two)} | ${(two / one).toFixed(2)}x |`;
console.log(`\n${table}\n`);
await deleteStream(config, stream.EVENTS_STREAM);
await writeFile('bench/results/risk.md', `${new Date().toISOString()} ${os.cpus().length} cores\n\n${table}\n`).catch(() => undefined);
