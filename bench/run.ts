/**
 * `make bench`: ledger throughput through gRPC beside two references measured in the same run on the same
 * database (the machine is shared and noisy, so only ratios within one run mean anything):
 *   - naive: one SERIALIZABLE transaction per transfer, SELECT ... FOR UPDATE of both accounts, 32 clients;
 *   - raw: the same transfer rows inserted with multi-row unnest INSERTs and no ledger logic, 2 connections.
 * BENCH_SECONDS (default 6) sets the length of each timed run, after BENCH_WARMUP_SECONDS (default 2) of the same
 * work that is not counted. The ledger's outbox relay publishes to NATS JetStream during the runs, as in
 * production; each ledger row says how far behind it was at the end.
 */
import { randomUUID } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { loadConfig } from '../lib/config.js';
import { channelCredentials } from '../lib/grpc-tls.js';
import { createPool, isSerializationFailure } from '../lib/db.js';
import { deleteStream } from '../lib/streams.js';
import { LedgerClient, newAccount, newTransfer } from '../ledger/client.js';
import { CreateTransferResultCode, type Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { cpuProfileArgs, spawnLedger } from '../test/ledger-process.js';

const SECONDS = Number(process.env['BENCH_SECONDS'] ?? 6);
/** BENCH_WARMUP_SECONDS (default 2): each run's untimed start, the same work as the timed part. */
const WARMUP_SECONDS = Number(process.env['BENCH_WARMUP_SECONDS'] ?? 2);
/** BENCH_LEDGER_RUNS: only these ledger runs (e.g. `8190x4,1x256`), for profiling one; default all. */
const LEDGER_RUNS = process.env['BENCH_LEDGER_RUNS']?.split(',') ?? ['1x32', '100x16', '8190x4', '1x256'];
/**
 * BENCH_REFUSED_SHARE (default 0): this share of the ledger runs' transfers debits one of WALLETS empty accounts
 * that cannot be overdrawn, so the ledger refuses it (exceeds_credits) and spends its id: what refusals cost.
 */
const REFUSED_SHARE = Number(process.env['BENCH_REFUSED_SHARE'] ?? 0);
const WALLETS = 2_000;
/** BENCH_PROFILE=1: the ledger process writes CPU profiles (main thread and workers) to /tmp/prof. */
const PROFILE = process.env['BENCH_PROFILE'] ? cpuProfileArgs() : [];
const ACCOUNTS = 10_000;
const LEDGER = 978;
const config = loadConfig();
const pool = createPool(config, { max: 40, applicationName: 'bench' });

interface Row {
  scenario: string;
  workload: 'uniform' | 'hot';
  transfersPerSecond: number;
  note: string;
}
const rows: Row[] = [];

function report(row: Row): void {
  rows.push(row);
  console.log(`${row.scenario.padEnd(34)} ${row.workload.padEnd(8)} ${Math.round(row.transfersPerSecond).toString().padStart(9)} transfers/s  ${row.note}`);
}

const accounts = Array.from({ length: ACCOUNTS }, () => randomUUID());
const hot = randomUUID();
const emptyWallets: string[] = Array.from({ length: REFUSED_SHARE > 0 ? WALLETS : 0 }, () => randomUUID());
const isEmptyWallet = new Set(emptyWallets);

function pick(): string {
  return accounts[Math.floor(Math.random() * ACCOUNTS)]!;
}

/** A transfer between two random accounts, or from a random account into the hot one. */
function pair(workload: 'uniform' | 'hot'): [string, string] {
  const debit = pick();
  if (workload === 'hot') return [debit, hot];
  let credit = pick();
  while (credit === debit) credit = pick();
  return [debit, credit];
}

function transfer(workload: 'uniform' | 'hot', refusable = false): Transfer {
  const [debit, creditAccountId] = pair(workload);
  const debitAccountId = refusable && Math.random() < REFUSED_SHARE ? emptyWallets[Math.floor(Math.random() * WALLETS)]! : debit;
  return newTransfer({ id: randomUUID(), debitAccountId, creditAccountId, amount: 1n + BigInt(Math.floor(Math.random() * 1000)), ledger: LEDGER, code: 1 });
}

/**
 * Runs `workers` loops of `step` for WARMUP_SECONDS and then SECONDS; returns the transfers per second of the
 * second part. The warm-up's completions are not counted: the first seconds of a run measure JIT compilation,
 * connections being opened and plans being made, not the steady state. The loops run straight through (no
 * pause between the parts), so the timed part starts with every caller busy. `step` is told whether the timed
 * part has begun, for what else it counts (retries).
 */
async function timed(workers: number, step: (inTimedPart: () => boolean) => Promise<number>): Promise<number> {
  const measuredFrom = performance.now() + WARMUP_SECONDS * 1000;
  const deadline = measuredFrom + SECONDS * 1000;
  const inTimedPart = () => performance.now() >= measuredFrom;
  let done = 0;
  await Promise.all(
    Array.from({ length: workers }, async () => {
      while (performance.now() < deadline) {
        // Not `done += await step()`: that reads `done` before the await and loses the other workers' counts.
        const completed = await step(inTimedPart);
        if (performance.now() >= measuredFrom) done += completed;
      }
    }),
  );
  return done / ((performance.now() - measuredFrom) / 1000);
}

// ---- reference 1: the naive ledger ----
/** The naive ledger keeps balances on the account row, as a first version would. */
async function createNaiveAccounts(): Promise<void> {
  await pool.query('CREATE TABLE IF NOT EXISTS bench_naive_accounts (id UUID PRIMARY KEY, debits_posted INT8 NOT NULL DEFAULT 0, credits_posted INT8 NOT NULL DEFAULT 0)');
  await pool.query('INSERT INTO bench_naive_accounts (id) SELECT unnest($1::uuid[]) ON CONFLICT DO NOTHING', [[...accounts, hot]]);
}

async function naive(workload: 'uniform' | 'hot'): Promise<void> {
  let retries = 0;
  const once = async (inTimedPart: () => boolean): Promise<number> => {
    const [debit, credit] = pair(workload);
    const ids = [debit, credit].sort();
    for (;;) {
      const client = await pool.connect();
      try {
        await client.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
        const locked = await client.query('SELECT id, debits_posted, credits_posted FROM bench_naive_accounts WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE', [ids]);
        if (locked.rowCount !== 2) throw new Error('accounts missing');
        const amount = 1n + BigInt(Math.floor(Math.random() * 1000));
        await client.query(
          `INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, flags, "timestamp", shard)
           VALUES ($1, $2, $3, $4, $5, 1, 0, $6, 0)`,
          [randomUUID(), debit, credit, amount, LEDGER, BigInt(Date.now()) * 1_000_000n],
        );
        await client.query('UPDATE bench_naive_accounts SET debits_posted = debits_posted + $2 WHERE id = $1', [debit, amount]);
        await client.query('UPDATE bench_naive_accounts SET credits_posted = credits_posted + $2 WHERE id = $1', [credit, amount]);
        await client.query('COMMIT');
        return 1;
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        if (!isSerializationFailure(error)) throw error;
        if (inTimedPart()) retries++;
      } finally {
        client.release();
      }
    }
  };
  const tps = await timed(32, once);
  report({ scenario: 'naive: 1 txn/transfer, 32 clients', workload, transfersPerSecond: tps, note: `${retries} serialization retries in the timed part (${Math.round(retries / SECONDS)}/s)` });
}

// ---- reference 2: the raw write limit ----
async function raw(): Promise<void> {
  const BATCH = 8190;
  const once = async (): Promise<number> => {
    const rowsToWrite = Array.from({ length: BATCH }, () => transfer('uniform'));
    await pool.query(
      `INSERT INTO transfers (id, debit_account_id, credit_account_id, amount, ledger, code, flags, "timestamp", shard)
       SELECT id, d, c, a, $5, 1, 0, $6, 0 FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[]) AS v(id, d, c, a)`,
      [rowsToWrite.map((t) => t.id), rowsToWrite.map((t) => t.debitAccountId), rowsToWrite.map((t) => t.creditAccountId), rowsToWrite.map((t) => t.amount), LEDGER, BigInt(Date.now()) * 1_000_000n],
    );
    return BATCH;
  };
  const tps = await timed(2, once);
  report({ scenario: 'raw: unnest INSERT, 2 connections', workload: 'uniform', transfersPerSecond: tps, note: 'rows/s, no ledger logic' });
}

// ---- the ledger ----
async function ledgerBatches(client: LedgerClient, batchSize: number, concurrency: number, workload: 'uniform' | 'hot'): Promise<void> {
  if (!LEDGER_RUNS.includes(`${batchSize}x${concurrency}`)) return;
  let failures = 0;
  let refused = 0;
  const tps = await timed(concurrency, async () => {
    const sent = Array.from({ length: batchSize }, () => transfer(workload, true));
    const results = await client.createTransfers(sent);
    results.forEach((r, i) => {
      if (r.code === CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_EXCEEDS_CREDITS && isEmptyWallet.has(sent[i]!.debitAccountId)) refused++;
      else if (r.code !== CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_OK) failures++;
    });
    return results.length;
  });
  if (failures > 0) throw new Error(`${failures} transfers failed in the ledger benchmark`);
  const refusals = REFUSED_SHARE > 0 ? `; ${refused} refused (exceeds_credits), all runs` : '';
  report({ scenario: `ledger: batches of ${batchSize}, ${concurrency} callers`, workload, transfersPerSecond: tps, note: (await relayBacklog()) + refusals });
}

/**
 * Whether the outbox relay kept up with the run: the events still waiting when it ended, and how long the
 * relay then took to publish them. A backlog of a fraction of a second of commits means it kept up.
 */
async function relayBacklog(): Promise<string> {
  const backlog = async () => (await pool.query('SELECT COALESCE(sum(event_count), 0)::int8 AS events FROM outbox')).rows[0].events as bigint;
  const left = await backlog();
  const started = performance.now();
  while ((await backlog()) > 0n && performance.now() - started < 120_000) await new Promise((r) => setTimeout(r, 50));
  return `outbox backlog at the end: ${left} events, published in ${((performance.now() - started) / 1000).toFixed(1)} s`;
}

async function main(): Promise<void> {
  console.log(`bench: ${os.cpus().length} cores, ${SECONDS} s per run after ${WARMUP_SECONDS} s of warm-up, ${ACCOUNTS} accounts, database ${new URL(config.DATABASE_URL).pathname}`);
  // The relay runs as in production, on a stream of the benchmark's own that is deleted at the end.
  const benchStream = { EVENTS_STREAM: 'BENCH_EVENTS', EVENTS_SUBJECT_PREFIX: 'bench', EVENTS_MAX_BYTES: String(2 * 1024 ** 3) };
  const ledger = await spawnLedger({ DATABASE_URL: config.DATABASE_URL, LOG_LEVEL: 'warn', METRICS_PORT: process.env['BENCH_LEDGER_METRICS_PORT'] ?? '0', ...benchStream }, PROFILE);
  // The ledger inherits this environment: with GRPC_TLS_* set, the benchmark measures mutual TLS.
  const direct = new LedgerClient(ledger.target, { autoBatch: false, credentials: channelCredentials(config) });
  const batching = new LedgerClient(ledger.target, { autoBatch: true, credentials: channelCredentials(config), maxInFlight: Number(process.env['BENCH_CLIENT_IN_FLIGHT'] ?? 4) });
  try {
    const all = [...accounts, hot, ...emptyWallets];
    for (let i = 0; i < all.length; i += 8190) {
      const chunk = all.slice(i, i + 8190).map((id) => newAccount({ id, ledger: LEDGER, code: 1, flags: { debitsMustNotExceedCredits: isEmptyWallet.has(id) } }));
      const results = await direct.createAccounts(chunk);
      if (results.some((r) => r.code !== 1)) throw new Error('account creation failed');
    }

    await createNaiveAccounts();
    // Fresh tables have no statistics: without them the planner scans instead of using the primary keys.
    await pool.query('ANALYZE');
    for (const workload of ['uniform', 'hot'] as const) {
      await naive(workload);
      if (process.env['BENCH_ONLY'] === 'naive') continue;
      await ledgerBatches(direct, 1, 32, workload);
      await ledgerBatches(direct, 100, 16, workload);
      await ledgerBatches(direct, 8190, 4, workload);
      await ledgerBatches(batching, 1, 256, workload);
    }
    if (process.env['BENCH_ONLY'] !== 'naive') await raw();
  } finally {
    direct.close();
    batching.close();
    await ledger.stop();
    await pool.end();
    await deleteStream(config, benchStream.EVENTS_STREAM);
  }

  const naiveOf = (w: string) => rows.find((r) => r.scenario.startsWith('naive') && r.workload === w)!.transfersPerSecond;
  const rawRate = rows.find((r) => r.scenario.startsWith('raw'))?.transfersPerSecond ?? NaN;
  const table = [
    '| scenario | workload | transfers/s | x naive (same workload) | of raw write limit | relay |',
    '|---|---|---:|---:|---:|---|',
    ...rows.map(
      (r) =>
        `| ${r.scenario} | ${r.workload} | ${Math.round(r.transfersPerSecond).toLocaleString('en-US')} | ${(r.transfersPerSecond / naiveOf(r.workload)).toFixed(1)}x | ${((100 * r.transfersPerSecond) / rawRate).toFixed(0)}% | ${r.scenario.startsWith('ledger') ? r.note : ''} |`,
    ),
  ].join('\n');
  console.log(`\n${table}\n`);
  await mkdir('bench/results', { recursive: true });
  await writeFile('bench/results/ledger.md', `${new Date().toISOString()} ${os.cpus().length} cores, BENCH_SECONDS=${SECONDS} BENCH_WARMUP_SECONDS=${WARMUP_SECONDS}\n\n${table}\n`);
}

await main();
