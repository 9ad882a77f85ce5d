/**
 * The local supervisor behind `make dev`: starts every service as a child process, prefixes their output,
 * and stops them all on Ctrl-C (or when any of them dies, so a broken service is never silently missing).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../lib/config.js';
import { sleep } from '../lib/retry.js';

interface ServiceSpec {
  name: string;
  entry: string;
  describe: (config: ReturnType<typeof loadConfig>) => string;
}

const SERVICES: readonly ServiceSpec[] = [
  {
    name: 'risk',
    entry: 'risk/main.ts',
    describe: (c) => `gRPC risk.v1.RiskService on ${c.RISK_GRPC_LISTEN} (rules-only scorer)`,
  },
  {
    name: 'ledger',
    entry: 'ledger/main.ts',
    describe: (c) =>
      `gRPC ledger.v1.LedgerService on ${c.LEDGER_GRPC_LISTEN} (${c.LEDGER_SHARDS} shards, ${c.LEDGER_WORKERS} workers), ` +
      `payments.v1.PaymentService beside it, outbox relay to ${c.EVENTS_STREAM}, metrics on http://127.0.0.1:${c.METRICS_PORT}/metrics`,
  },
  {
    name: 'settlement',
    entry: 'settlement/main.ts',
    describe: (c) =>
      `gRPC settlement.v1.SettlementService on ${c.SETTLEMENT_GRPC_LISTEN}, consuming payment events as ${c.SETTLEMENT_CONSUMER}, ` +
      (c.SETTLEMENT_WINDOW === 'daily' ? `windows closing daily at ${c.SETTLEMENT_CUTOFF} ${c.SETTLEMENT_TIME_ZONE}` : `windows closing every ${c.SETTLEMENT_INTERVAL_MINUTES} minutes`),
  },
  {
    name: 'gateway',
    entry: 'gateway/main.ts',
    describe: (c) => `REST API on http://127.0.0.1:${c.GATEWAY_PORT} (OpenAPI at /openapi.json)`,
  },
];

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Local secrets of this checkout (git-ignored): the platform admin key, generated on first use. */
const LOCAL_ENV = path.join(ROOT, '.env.local');

function localAdminKey(): string {
  const existing = existsSync(LOCAL_ENV) ? /^ADMIN_API_KEY=(\S+)$/m.exec(readFileSync(LOCAL_ENV, 'utf8'))?.[1] : undefined;
  if (existing) return existing;
  const key = `admin_${randomBytes(32).toString('base64url')}`;
  writeFileSync(LOCAL_ENV, `ADMIN_API_KEY=${key}\n`, { mode: 0o600, flag: 'a' });
  return key;
}

process.env['ADMIN_API_KEY'] ||= localAdminKey();
// Without a collector, spans go to a local file that `npm run trace` prints as a tree.
if (!process.env['OTEL_EXPORTER_OTLP_ENDPOINT']) process.env['TRACES_EXPORTER'] ||= 'file';
// Each service exports its metrics on its own port: risk, gateway and settlement next to the ledger's.
const METRICS_PORTS: Record<string, number> = { ledger: 0, risk: 1, gateway: 2, settlement: 3 };
const config = loadConfig();
const children = new Map<string, ChildProcess>();
let stopping = false;

function prefixLines(name: string, stream: NodeJS.ReadableStream, out: NodeJS.WritableStream): void {
  let pending = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const lines = (pending + chunk).split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) out.write(`[${name}] ${line}\n`);
  });
}

for (const service of SERVICES) {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, service.entry)], {
    cwd: ROOT,
    env: { ...process.env, METRICS_PORT: String(config.METRICS_PORT === 0 ? 0 : config.METRICS_PORT + (METRICS_PORTS[service.name] ?? 0)) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.set(service.name, child);
  prefixLines(service.name, child.stdout!, process.stdout);
  prefixLines(service.name, child.stderr!, process.stderr);
  child.on('exit', (code, signal) => {
    children.delete(service.name);
    if (!stopping) {
      console.error(`dev: ${service.name} exited (${signal ?? `code ${code}`}); stopping everything`);
      process.exitCode = 1;
      stop();
    } else if (children.size === 0) {
      console.log('dev: all services stopped');
    }
  });
  console.log(`dev: started ${service.name} (pid ${child.pid}): ${service.describe(config)}`);
}

/** Creates a demo merchant through the gateway once it answers, and prints how to use its key. */
async function introduce(): Promise<void> {
  const base = `http://127.0.0.1:${config.GATEWAY_PORT}`;
  for (let attempt = 0; ; attempt++) {
    try {
      if ((await fetch(`${base}/readyz`)).ok) break;
    } catch {
      // not listening yet
    }
    // Stopping: a service exited, and its exit line above says which; the gateway is not the one to blame.
    if (stopping) return;
    if (attempt > 120) return console.error('dev: the gateway did not become ready in 60 s; see its log lines above');
    await sleep(500);
  }
  const r = await fetch(`${base}/v1/merchants`, {
    method: 'POST',
    headers: { authorization: `Bearer ${config.ADMIN_API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'Demo merchant' }),
  });
  const merchant = (await r.json()) as { id?: string; secret_key?: string };
  if (!r.ok || !merchant.secret_key) return console.error(`dev: creating the demo merchant failed: ${r.status} ${JSON.stringify(merchant)}`);
  console.log(`
dev: database ${new URL(config.DATABASE_URL).host}${new URL(config.DATABASE_URL).pathname}, NATS ${config.NATS_URL}
dev: platform admin key (kept in .env.local): ${config.ADMIN_API_KEY}
dev: demo merchant ${merchant.id}, secret key (shown once): ${merchant.secret_key}
dev: try it (in another terminal):
  K=${merchant.secret_key}
  id() { node -pe 'JSON.parse(require("fs").readFileSync(0, "utf8")).id'; }
  W=$(curl -s ${base}/v1/accounts -H "Authorization: Bearer $K" -H 'Content-Type: application/json' \\
      -d '{"currency":"USD","flags":["debits_must_not_exceed_credits"]}' | id)
  F=$(curl -s ${base}/v1/accounts -H "Authorization: Bearer $K" -H 'Content-Type: application/json' -d '{"currency":"USD"}' | id)
  curl -s ${base}/v1/transfers -H "Authorization: Bearer $K" -H 'Content-Type: application/json' \\
      -d "{\\"debit_account_id\\":\\"$F\\",\\"credit_account_id\\":\\"$W\\",\\"amount\\":50000,\\"currency\\":\\"USD\\"}"
  curl -s ${base}/v1/payments -H "Authorization: Bearer $K" -H 'Content-Type: application/json' -H "Idempotency-Key: order-1" \\
      -d "{\\"amount\\":1250,\\"currency\\":\\"USD\\",\\"source\\":{\\"account\\":\\"$W\\"},\\"capture_method\\":\\"automatic\\"}"
  curl -s ${base}/v1/payments -H "Authorization: Bearer $K" -H 'Content-Type: application/json' -H "Idempotency-Key: order-2" \\
      -d '{"amount":2000,"currency":"EUR","source":{"card":{"token":"tok_visa","fingerprint":"fp_1","country":"FR"}},"capture_method":"automatic"}'
  curl -s ${base}/v1/payments -H "Authorization: Bearer $K"
  # settle the card money now (admin), then read the settlement and its report as the merchant (a wallet
  # payment moves money within the merchant's own accounts: only its fee is settled)
  S=$(curl -s ${base}/v1/settlements/close -H "Authorization: Bearer ${config.ADMIN_API_KEY}" -H 'Content-Type: application/json' \\
      -d '{"merchant":"${merchant.id}","currency":"EUR"}' | node -pe 'JSON.parse(require("fs").readFileSync(0, "utf8")).data[0]?.id')
  curl -s ${base}/v1/settlements/$S/report.csv -H "Authorization: Bearer $K"
  npm run -s trace      # the last payment's trace: gateway, gRPC, ledger batch, SQL, relay, consumers (${config.TRACES_FILE})
dev: Ctrl-C stops every service.`);
}

introduce().catch((error: unknown) => console.error('dev: could not create the demo merchant', error));

function stop(): void {
  if (stopping && children.size === 0) return;
  stopping = true;
  for (const child of children.values()) child.kill('SIGTERM');
  // A service that does not drain within 10 s is killed: Ctrl-C must always return the terminal.
  setTimeout(() => {
    for (const child of children.values()) child.kill('SIGKILL');
  }, 10_000).unref();
}

process.on('SIGINT', stop);
process.on('SIGTERM', stop);
