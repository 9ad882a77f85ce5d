import { strict as assert } from 'node:assert';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, waitForPort } from '../test/ledger-process.js';
import { TestNatsServer } from '../test/nats-server.js';
import { testConfig } from '../test/support.js';

const SCRIPT = path.join(path.dirname(fileURLToPath(import.meta.url)), 'ensure-services.sh');

/** Runs the script against the test database's PostgreSQL (it answers: left alone) and NATS on `natsPort`. */
function ensureServices(natsPort: number) {
  const database = new URL(testConfig().DATABASE_URL);
  const env = { ...process.env, PGHOST: database.hostname, PGPORT: database.port || '5432', NATS_HOST: '127.0.0.1', NATS_PORT: String(natsPort) };
  return spawnSync('bash', [SCRIPT], { env, encoding: 'utf8', timeout: 30_000 });
}

describe('scripts/ensure-services.sh', () => {
  it('uses a NATS with JetStream that already answers, quietly', async () => {
    const nats = await TestNatsServer.start();
    try {
      const result = ensureServices(nats.port);
      assert.equal(result.status, 0, result.stderr);
      assert.equal(result.stderr, '');
    } finally {
      await nats.stop();
    }
  });

  // Debian's nats-server package starts such a server on 4222 (its service, no JetStream in its configuration):
  // the port answered, the script said nothing, and every service then failed on its first JetStream call.
  it('refuses a NATS without JetStream on the port instead of taking it for one', async () => {
    const port = await freePort();
    const bin = ['/usr/sbin/nats-server', '/usr/bin/nats-server'].find((p) => existsSync(p)) ?? 'nats-server';
    const child: ChildProcess = spawn(bin, ['-a', '127.0.0.1', '-p', String(port)], { stdio: 'ignore' });
    try {
      await waitForPort(port, child);
      const result = ensureServices(port);
      assert.notEqual(result.status, 0, 'ensure-services.sh accepted a NATS without JetStream');
      assert.match(result.stderr, /without JetStream/);
    } finally {
      if (child.exitCode === null) {
        await new Promise<void>((resolve) => {
          child.once('exit', () => resolve());
          child.kill('SIGTERM');
        });
      }
    }
  });
});
