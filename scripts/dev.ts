/**
 * The local supervisor behind `make dev`: starts every service as a child process, prefixes their output,
 * and stops them all on Ctrl-C (or when any of them dies, so a broken service is never silently missing).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../lib/config.js';

interface ServiceSpec {
  name: string;
  entry: string;
  describe: (config: ReturnType<typeof loadConfig>) => string;
}

const SERVICES: readonly ServiceSpec[] = [
  {
    name: 'ledger',
    entry: 'ledger/main.ts',
    describe: (c) =>
      `gRPC ledger.v1.LedgerService on ${c.LEDGER_GRPC_LISTEN} (${c.LEDGER_SHARDS} shards, ${c.LEDGER_WORKERS} workers), ` +
      `outbox relay to ${c.EVENTS_STREAM}, metrics on http://127.0.0.1:${c.METRICS_PORT}/metrics`,
  },
];

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
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
    env: process.env,
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

console.log(`
dev: database ${new URL(config.DATABASE_URL).host}${new URL(config.DATABASE_URL).pathname}, NATS ${config.NATS_URL}
dev: try it (in another terminal):
  A=11111111-1111-4111-8111-111111111111 B=22222222-2222-4222-8222-222222222222
  npm run -s ledger -- create-account --id $A && npm run -s ledger -- create-account --id $B --history
  npm run -s ledger -- transfer --debit $A --credit $B --amount 1250
  npm run -s ledger -- lookup-accounts $A $B
  npm run -s ledger -- account-transfers $B
dev: Ctrl-C stops every service.`);

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
