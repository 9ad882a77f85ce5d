import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { testConfig, testPool } from '../support.js';
import type { Pool } from '../../lib/db.js';
import { spawnService, type ServiceProcess } from '../ledger-process.js';
import { TestNatsServer } from '../nats-server.js';
import { TcpProxy } from '../tcp-proxy.js';

/** How often a service that exits during start-up is started again before the suite gives up on it. */
const SUPERVISOR_ATTEMPTS = 20;

/** The processes the chaos suite kills and restarts. */
export const SERVICES = ['risk', 'ledger', 'settlement', 'gateway'] as const;
export type ServiceName = (typeof SERVICES)[number];

const ENTRY: Record<ServiceName, Parameters<typeof spawnService>[0]> = {
  risk: 'risk/main.ts',
  ledger: 'ledger/main.ts',
  settlement: 'settlement/main.ts',
  gateway: 'gateway/main.ts',
};

/**
 * The whole system as production runs it, one process per service, with the two outside dependencies under the
 * suite's control: a NATS JetStream server of its own (stopped and restarted for real) and PostgreSQL behind a
 * TCP proxy that can be cut (every connection broken, new ones refused: what the services see of a database
 * restart, without restarting the machine's shared server under other users). A killed service is restarted on
 * its port, so its clients reconnect as they would to a restarted pod. The suite's own checks read the database
 * directly (`pool`), not through the proxy.
 */
export class ChaosStack {
  readonly adminKey = `admin_${randomBytes(24).toString('base64url')}`;
  readonly pool: Pool = testPool();
  private readonly processes = new Map<ServiceName, ServiceProcess>();
  private readonly env = new Map<ServiceName, Record<string, string>>();
  /** Restarts of each service after a kill. */
  readonly kills = new Map<ServiceName | 'postgres' | 'nats' | `${ServiceName} start-up failures`, number>();

  private constructor(
    readonly nats: TestNatsServer,
    readonly database: TcpProxy,
  ) {}

  static async start(overrides: Partial<Record<ServiceName, Record<string, string>>> = {}): Promise<ChaosStack> {
    const stack = new ChaosStack(await TestNatsServer.start(), await TcpProxy.start(new URL(testConfig().DATABASE_URL)));
    try {
      await stack.startAll(overrides);
    } catch (error) {
      await stack.close();
      throw error;
    }
    return stack;
  }

  private async startAll(overrides: Partial<Record<ServiceName, Record<string, string>>>): Promise<void> {
    const common = {
      DATABASE_URL: this.database.via(testConfig().DATABASE_URL),
      NATS_URL: this.nats.url,
      EVENTS_MAX_BYTES: String(256 * 1024 ** 2),
      LOG_LEVEL: process.env['CHAOS_LOG_LEVEL'] ?? 'silent',
      METRICS_PORT: '0',
      TRACES_EXPORTER: 'none',
    };
    const consumer = `chaos_${randomUUID().slice(0, 8)}`;
    this.env.set('risk', { ...common, RISK_RULES_VELOCITY_MAX: '1000000', ...overrides.risk });
    await this.spawn('risk');
    this.env.set('ledger', { ...common, RISK_GRPC_TARGET: this.target('risk'), LEDGER_EXPIRY_SWEEP_MS: '200', ...overrides.ledger });
    await this.spawn('ledger');
    this.env.set('settlement', { ...common, LEDGER_GRPC_TARGET: this.target('ledger'), SETTLEMENT_CONSUMER: consumer, ...overrides.settlement });
    await this.spawn('settlement');
    this.env.set('gateway', {
      ...common,
      LEDGER_GRPC_TARGET: this.target('ledger'),
      SETTLEMENT_GRPC_TARGET: this.target('settlement'),
      ADMIN_API_KEY: this.adminKey,
      GATEWAY_GRPC_DEADLINE_MS: '3000',
      ...overrides.gateway,
    });
    await this.spawn('gateway');
  }

  target(name: ServiceName): string {
    const p = this.processes.get(name);
    if (!p) throw new Error(`${name} is not running`);
    return p.target;
  }

  /** The environment a service runs with (beside the inherited one). */
  envOf(name: ServiceName): Readonly<Record<string, string>> {
    return this.env.get(name) ?? {};
  }

  get gatewayUrl(): string {
    return `http://${this.target('gateway')}`;
  }

  /** The process id of a running service (for its peak memory). */
  pid(name: ServiceName): number | undefined {
    return this.processes.get(name)?.child.pid;
  }

  /** Peak resident memory of a running service, in MiB (VmHWM of /proc). */
  peakRssMiB(name: ServiceName): number {
    const status = readFileSync(`/proc/${this.pid(name)}/status`, 'utf8');
    return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) / 1024;
  }

  /**
   * Starts a service (on its old port after a kill). One that exits during start-up, as a service does whose
   * database is cut off at that moment, is started again after a pause: what the deployment's supervisor does
   * (docker-compose.yml, `restart: unless-stopped`). Without it, a restart that met a cut left the service down
   * for the rest of the run and the suite reported its clients' requests as never answered.
   */
  private async spawn(name: ServiceName): Promise<void> {
    const previous = this.processes.get(name);
    const port = previous ? Number(previous.target.split(':')[1]) : undefined;
    for (let attempt = 1; ; attempt++) {
      try {
        this.processes.set(name, await spawnService(ENTRY[name], this.env.get(name)!, [], port));
        return;
      } catch (error) {
        if (attempt >= SUPERVISOR_ATTEMPTS) throw error;
        this.count(`${name} start-up failures`);
        await new Promise((resolve) => setTimeout(resolve, 500));
      }
    }
  }

  /** kill -9, then a restart on the same port once the old process is gone. */
  async killAndRestart(name: ServiceName, downMs: number): Promise<void> {
    await this.processes.get(name)?.stop('SIGKILL');
    this.count(name);
    await new Promise((resolve) => setTimeout(resolve, downMs));
    await this.spawn(name);
  }

  /** Every database connection broken, none possible for `downMs`. */
  async cutDatabase(downMs: number): Promise<void> {
    await this.database.cut();
    this.count('postgres');
    await new Promise((resolve) => setTimeout(resolve, downMs));
    await this.database.open();
  }

  /** The NATS server stopped and started again (its JetStream store kept, as a restart keeps it). */
  async restartNats(downMs: number): Promise<void> {
    await this.nats.stop();
    this.count('nats');
    await new Promise((resolve) => setTimeout(resolve, downMs));
    await this.nats.restart();
  }

  private count(what: ServiceName | 'postgres' | 'nats' | `${ServiceName} start-up failures`): void {
    this.kills.set(what, (this.kills.get(what) ?? 0) + 1);
  }

  async close(): Promise<void> {
    for (const name of [...SERVICES].reverse()) await this.processes.get(name)?.stop('SIGTERM');
    await this.nats.stop();
    await this.database.cut();
    await this.pool.end();
  }
}
