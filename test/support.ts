import { ServerCredentials, type Server } from '@grpc/grpc-js';
import { loadConfig, type Config } from '../lib/config.js';
import type { QueryResult, QueryResultRow } from 'pg';
import { createPool, withTransaction, type Pool } from '../lib/db.js';
import { ensureDatabase, loadMigrations, migrate } from '../lib/migrate.js';

/** Configuration for tests: the environment, but never the developer's own database by accident. */
export function testConfig(overrides: Record<string, string> = {}): Config {
  return loadConfig({
    ...process.env,
    DATABASE_URL: process.env['DATABASE_URL'] ?? 'postgres://postgres@127.0.0.1:5432/ledgerline_test',
    LOG_LEVEL: process.env['LOG_LEVEL'] ?? 'silent',
    // No fixed port: two test runs at once (or an exporter already on 9464) must not collide.
    METRICS_PORT: '0',
    ...overrides,
  });
}

export function testPool(config = testConfig()): Pool {
  return createPool(config, { max: 4, applicationName: 'test' });
}

/** A URL for a scratch database beside the test database, for tests that create and drop their own. */
export function scratchDatabaseUrl(name: string): string {
  const url = new URL(testConfig().DATABASE_URL);
  url.pathname = `/${name}`;
  return url.toString();
}

/**
 * A scratch database created afresh with every migration of the project: for a test whose state must not reach
 * the other tests (e.g. shard clocks pushed ahead by a skewed clock). Its URL.
 */
export async function migratedScratchDatabase(name: string): Promise<string> {
  const url = scratchDatabaseUrl(name);
  await ensureDatabase(url, { fresh: true });
  const pool = createPool(testConfig({ DATABASE_URL: url }), { max: 1, applicationName: 'test-migrate' });
  try {
    await migrate(pool, await loadMigrations());
  } finally {
    await pool.end();
  }
  return url;
}

/**
 * One query in a read-only REPEATABLE READ transaction: a consistent snapshot for a test's checks that neither
 * takes SERIALIZABLE predicate locks (thousands of ids would exhaust them) nor fails with 40001 beside the
 * services' own writes (a plain query at SERIALIZABLE can, as a pivot of their read/write dependencies).
 */
export function snapshotQuery<R extends QueryResultRow = any>(pool: Pool, text: string, values: unknown[] = []): Promise<QueryResult<R>> { // eslint-disable-line @typescript-eslint/no-explicit-any
  return withTransaction(pool, (c) => c.query<R>(text, values), { isolation: 'repeatable read', readOnly: true });
}

/** Binds a test's gRPC server to a free port of 127.0.0.1 (plaintext); its address. */
export async function listenForTest(server: Server): Promise<string> {
  const port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, bound) => (error ? reject(error) : resolve(bound))));
  return `127.0.0.1:${port}`;
}

/**
 * Polls until a statement of the test database that matches `pattern` (LIKE) waits on a lock (a test holding a
 * row knows the write it stalls has reached it); the waiting backends. Throws `never: <what>` after `timeoutMs`.
 */
export async function untilWaitingOnLock(pool: Pool, pattern: string, what: string, timeoutMs: number): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const r = await pool.query(`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND query LIKE $1`, [pattern]);
    if (r.rows.length > 0) return r.rows.map((row) => row.pid as number);
    if (Date.now() > deadline) throw new Error(`never: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
