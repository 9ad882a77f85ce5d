import { spawn, type ChildProcess } from 'node:child_process';
import { connect, createServer } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

export interface ServiceProcess {
  child: ChildProcess;
  /** host:port it listens on. */
  target: string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}
export type LedgerProcess = ServiceProcess;

/** Where each service entry listens, as an environment setting of a host:port or of a port. */
const LISTEN: Record<string, (port: number) => Record<string, string>> = {
  'ledger/main.ts': (port) => ({ LEDGER_GRPC_LISTEN: `127.0.0.1:${port}` }),
  'risk/main.ts': (port) => ({ RISK_GRPC_LISTEN: `127.0.0.1:${port}` }),
  'gateway/main.ts': (port) => ({ GATEWAY_HOST: '127.0.0.1', GATEWAY_PORT: String(port) }),
  'settlement/main.ts': (port) => ({ SETTLEMENT_GRPC_LISTEN: `127.0.0.1:${port}` }),
  // Each of its roles listens on one of the two.
  'bench/payments-floor.ts': (port) => ({ FLOOR_HTTP_PORT: String(port), FLOOR_GRPC_PORT: String(port) }),
};

/**
 * Starts a service entry (e.g. `ledger/main.ts`) as its own process, as in production, once it listens: on
 * `port`, or a free one (a restart passes the port of the process it replaces, so clients find it again).
 */
export async function spawnService(entry: keyof typeof LISTEN, env: Record<string, string>, nodeArgs: string[] = [], port?: number): Promise<ServiceProcess> {
  port ??= await freePort();
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', path.join(ROOT, entry)], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'info', ...env, ...LISTEN[entry]!(port) },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
  try {
    await waitForPort(port, child);
  } catch (error) {
    child.kill('SIGKILL');
    throw error;
  }
  return {
    child,
    target: `127.0.0.1:${port}`,
    stop: (signal = 'SIGTERM') =>
      new Promise((resolve) => {
        if (child.exitCode !== null || child.signalCode !== null) return resolve();
        child.once('exit', () => resolve());
        child.kill(signal);
      }),
  };
}

/** Starts `ledger/main.ts` as its own process and waits until its port accepts connections. */
/** Node arguments that make a spawned service write CPU profiles (main thread and workers) into `dir`. */
export function cpuProfileArgs(dir = '/tmp/prof'): string[] {
  return ['--cpu-prof', `--cpu-prof-dir=${dir}`];
}

export function spawnLedger(env: Record<string, string>, nodeArgs: string[] = []): Promise<LedgerProcess> {
  return spawnService('ledger/main.ts', env, nodeArgs);
}

/**
 * The environment and node arguments that shift a spawned process's wall clock by `skewMs` (positive: ahead),
 * its worker threads' too: test/skewed-clock.mjs, loaded before anything else. Production code has no hook.
 */
export function skewedClock(skewMs: number): { env: Record<string, string>; nodeArgs: string[] } {
  return { env: { CLOCK_SKEW_MS: String(skewMs) }, nodeArgs: ['--import', path.join(ROOT, 'test/skewed-clock.mjs')] };
}

export async function waitForPort(port: number, child: ChildProcess, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`process exited with code ${child.exitCode} before listening on ${port}`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.once('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listened on ${port} within ${timeoutMs} ms`);
}
