/**
 * One ledger batch at a time, straight against the database (no gRPC, no worker thread): where a batch
 * transaction's time goes. For each batch size (BENCH_BATCH_SIZES, default `8190,32`) it runs
 * BENCH_BATCH_ROUNDS batches (default: 10 of 8,190, 300 of smaller sizes) of uniform transfers over 10,000
 * accounts, after two warm-up batches, and prints per batch: wall time, each statement's time (the batch's
 * own statement timings, as traced batches report them), the JavaScript between statements, and the CPU
 * that PostgreSQL and this process spent (from /proc: Linux only). Sequential, so it measures latency and
 * cost per batch, not throughput under concurrency (bench/run.ts does that).
 */
import { randomUUID } from 'node:crypto';
import { loadConfig } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { commandCpuSeconds } from './cpu.js';
import { executeBatch } from '../ledger/batch.js';
import { ensureShards } from '../ledger/store.js';
import type { Submission, TransferInput } from '../ledger/model.js';

const SIZES = (process.env['BENCH_BATCH_SIZES'] ?? '8190,32').split(',').map(Number);
const ACCOUNTS = 10_000;
const SHARDS = [0, 1, 2, 3];
const LEDGER = 978;

function ownCpuSeconds(): number {
  const usage = process.cpuUsage();
  return (usage.user + usage.system) / 1e6;
}

const config = loadConfig();
const pool = createPool(config, { max: 4, applicationName: 'bench-batch' });
const accounts = Array.from({ length: ACCOUNTS }, () => randomUUID());
const pick = () => accounts[Math.floor(Math.random() * ACCOUNTS)]!;

function transfers(size: number): Submission[] {
  const events = Array.from({ length: size }, (): TransferInput => {
    const debitAccountId = pick();
    let creditAccountId = pick();
    while (creditAccountId === debitAccountId) creditAccountId = pick();
    return { id: randomUUID(), debitAccountId, creditAccountId, amount: 1n + BigInt(Math.floor(Math.random() * 1000)), pendingId: '', ledger: LEDGER, code: 1, flags: 0, timeout: 0, metadata: {} };
  });
  return [{ kind: 'transfers', events }];
}

async function measure(size: number): Promise<void> {
  const rounds = Number(process.env['BENCH_BATCH_ROUNDS'] ?? (size >= 1000 ? 10 : 300));
  const statements = new Map<string, number>();
  // Generated before the clock starts; CPU is read around the whole run (reading /proc costs ~2 ms itself).
  const batches = Array.from({ length: rounds + 2 }, () => transfers(size));
  let wall = 0;
  let postgres = 0;
  let own = 0;
  for (let round = -2; round < rounds; round++) {
    if (round === 0) [postgres, own] = [-commandCpuSeconds('postgres'), -ownCpuSeconds()];
    const started = performance.now();
    const outcome = await executeBatch(pool, { shard: SHARDS[(round + 2) % SHARDS.length]!, submissions: batches[round + 2]!, timeStatements: true });
    if (round < 0) continue; // warm-up: JIT, prepared statements
    wall += performance.now() - started;
    for (const s of outcome.statements ?? []) statements.set(s.name || s.operation, (statements.get(s.name || s.operation) ?? 0) + s.end - s.start);
  }
  postgres += commandCpuSeconds('postgres'); // the machine's PostgreSQL is this benchmark's
  own += ownCpuSeconds();
  const perBatch = (ms: number) => `${(ms / rounds).toFixed(2).padStart(8)} ms`;
  const sql = [...statements.values()].reduce((a, b) => a + b, 0);
  console.log(`batches of ${size}, ${rounds} rounds: ${perBatch(wall)} per batch (${Math.round((size * rounds) / (wall / 1000))} transfers/s one at a time)`);
  for (const [name, ms] of [...statements].sort((a, b) => b[1] - a[1])) console.log(`  ${name.padEnd(48)} ${perBatch(ms)}`);
  console.log(`  ${'JavaScript between statements'.padEnd(48)} ${perBatch(wall - sql)}`);
  console.log(`  CPU per batch: PostgreSQL ${perBatch(postgres * 1000)}, this process ${perBatch(own * 1000)}`);
}

try {
  await ensureShards(pool, SHARDS);
  for (let i = 0; i < ACCOUNTS; i += 5000) {
    const events = accounts.slice(i, i + 5000).map((id) => ({ id, ledger: LEDGER, code: 1, flags: 0, metadata: {}, balancesNonZero: false }));
    await executeBatch(pool, { shard: 0, submissions: [{ kind: 'accounts', events }] });
  }
  await pool.query('ANALYZE');
  for (const size of SIZES) await measure(size);
} finally {
  await pool.end();
}
