import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort, waitForPort } from './ledger-process.js';

/**
 * A NATS server with JetStream of the test's own, on a free port with its own store, so that a test can stop
 * and restart it (the machine's shared server on 4222 must stay up for everyone else).
 */
export class TestNatsServer {
  private child: ChildProcess | undefined;
  readonly storeDir = mkdtempSync(path.join(os.tmpdir(), 'nats-store-'));

  /** `configText`: server configuration beyond port and store (e.g. `max_payload: 65536`). */
  private constructor(
    readonly port: number,
    private readonly configText = '',
  ) {}

  static async start(configText = ''): Promise<TestNatsServer> {
    const server = new TestNatsServer(await freePort(), configText);
    await server.restart();
    return server;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  async restart(): Promise<void> {
    const bin = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((p) => existsSync(p)) ?? 'nats-server';
    const configFile = path.join(this.storeDir, '..', `${path.basename(this.storeDir)}.conf`);
    writeFileSync(configFile, this.configText);
    this.child = spawn(bin, ['-c', configFile, '-a', '127.0.0.1', '-p', String(this.port), '-js', '-sd', this.storeDir], { stdio: 'ignore' });
    await waitForPort(this.port, this.child);
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      child.once('exit', () => resolve());
      child.kill('SIGTERM');
    });
  }
}
