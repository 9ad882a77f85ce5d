import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { isSerializationFailure, isUniqueViolation, withTransaction, sqlState, type Pool } from './db.js';
import { retry } from './retry.js';
import { InternalError } from './errors.js';
import { findDialectViolations } from './sql-dialect.js';

/**
 * Plain-SQL migrations, applied in file-name order, each in its own transaction together with its record in
 * `schema_migrations`; running twice is a no-op (also two runners at once), and a migration that fails leaves
 * nothing behind. Each service keeps its files in its own `migrations/` folder; names carry a global number
 * (`0001_ledger.sql`) so the order across services is explicit.
 *
 * A file named `*.postgresql.sql` holds physical tuning that only PostgreSQL understands (storage settings,
 * no schema): on CockroachDB it is recorded as applied without running, so both keep the same history.
 */

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const MIGRATION_DIRS = ['lib', 'ledger', 'gateway', 'risk', 'settlement'].map((service) => path.join(ROOT, service, 'migrations'));

export interface Migration {
  name: string;
  file: string;
  sql: string;
  checksum: string;
  /** Run only on PostgreSQL (file name `*.postgresql.sql`). */
  postgresqlOnly: boolean;
}

export type SqlServer = 'postgresql' | 'cockroachdb';

/** Which server `pool` talks to: the two share the wire protocol and the SQL the project writes. */
export async function sqlServer(pool: Pool): Promise<SqlServer> {
  const r = await pool.query<{ version: string }>('SELECT version() AS version');
  return /cockroachdb/i.test(r.rows[0]?.version ?? '') ? 'cockroachdb' : 'postgresql';
}

export async function loadMigrations(dirs: readonly string[] = MIGRATION_DIRS): Promise<Migration[]> {
  const migrations: Migration[] = [];
  for (const dir of dirs) {
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw error;
    }
    for (const name of names.filter((n) => n.endsWith('.sql'))) {
      const file = path.join(dir, name);
      const sql = await readFile(file, 'utf8');
      migrations.push({ name, file, sql, checksum: createHash('sha256').update(sql).digest('hex'), postgresqlOnly: name.endsWith('.postgresql.sql') });
    }
  }
  migrations.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (let i = 1; i < migrations.length; i++) {
    if (migrations[i]!.name === migrations[i - 1]!.name) throw new InternalError(`duplicate migration name ${migrations[i]!.name}`);
  }
  return migrations;
}

export interface MigrateResult {
  applied: string[];
  alreadyApplied: string[];
}

export async function migrate(pool: Pool, migrations: readonly Migration[]): Promise<MigrateResult> {
  for (const m of migrations) {
    const violations = findDialectViolations(m.sql);
    if (violations.length > 0) {
      const list = violations.map((v) => `${m.name}:${v.line} ${v.rule} (${v.why})`).join('; ');
      throw new InternalError(`migration not CockroachDB-compatible: ${list}`);
    }
  }
  try {
    await pool.query(
      `CREATE TABLE IF NOT EXISTS schema_migrations (
         name TEXT PRIMARY KEY,
         checksum TEXT NOT NULL,
         applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
       )`,
    );
  } catch (error) {
    // Another runner created it at the same moment: IF NOT EXISTS does not see an uncommitted table, so PostgreSQL
    // waits for it and then refuses the name (23505 on its catalog, or 42P07). It exists now.
    if (!isUniqueViolation(error) && sqlState(error) !== DUPLICATE_TABLE) throw error;
  }
  const server = await sqlServer(pool);
  const result: MigrateResult = { applied: [], alreadyApplied: [] };
  for (const m of migrations) {
    const outcome = await applyOnce(pool, m, server);
    (outcome === 'applied' ? result.applied : result.alreadyApplied).push(m.name);
  }
  return result;
}

const DUPLICATE_TABLE = '42P07';
/**
 * How a runner's attempt collides with another runner's: the same catalog or record row (unique violation), an
 * object the other created (duplicate table, object, column, schema), or contention (serialization failure,
 * deadlock, once withTransaction's retries are spent). Any other failure is the migration's own, reported even
 * when it is recorded: on CockroachDB a transaction whose schema change failed after its COMMIT (XXA00) keeps its
 * record, and must not pass for applied.
 */
const COLLISIONS = new Set(['23505', DUPLICATE_TABLE, '42710', '42701', '42P06', '40001', '40P01']);

/**
 * Applies `m` unless it is recorded. Two runners at once (instances of a service starting together) both find it
 * unrecorded and both apply it: the one that commits second collides with the first's objects or record (a unique
 * violation, an object that exists, a serialization failure), which it waits for. Once the other has committed, a
 * failed attempt whose migration is now recorded, with the same checksum, was that race: applied, by the other.
 */
async function applyOnce(pool: Pool, m: Migration, server: SqlServer): Promise<'applied' | 'already'> {
  try {
    return await withTransaction(pool, async (client) => {
      const existing = await client.query<{ checksum: string }>('SELECT checksum FROM schema_migrations WHERE name = $1', [m.name]);
      const row = existing.rows[0];
      if (row) {
        if (row.checksum !== m.checksum) {
          throw new InternalError(`migration ${m.name} was changed after it was applied (checksum ${row.checksum} != ${m.checksum}); add a new migration instead`);
        }
        return 'already' as const;
      }
      if (server === 'cockroachdb') {
        // From v25.1 CockroachDB commits the open transaction before each schema change (autocommit_before_ddl,
        // on by default): the migration, its record and the check above would be separate transactions, so a
        // crash between them leaves a migration applied but unrecorded, and two runners both apply it. Off for
        // this transaction only (the variable exists from v24.1; docker-compose.yml runs v24.3).
        await client.query('SET LOCAL autocommit_before_ddl = off');
      }
      if (server === 'postgresql' || !m.postgresqlOnly) await client.query(m.sql);
      await client.query('INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)', [m.name, m.checksum]);
      return 'applied' as const;
    });
  } catch (error) {
    if (!COLLISIONS.has(sqlState(error) ?? '')) throw error;
    // Unable to tell (the database gone): the migration's own failure is the one to report.
    const recorded = await pool.query<{ checksum: string }>('SELECT checksum FROM schema_migrations WHERE name = $1', [m.name]).catch(() => undefined);
    if (recorded?.rows[0]?.checksum === m.checksum) return 'already';
    throw error;
  }
}

/** Creates the database named in `url` if it does not exist, and makes SERIALIZABLE its default isolation. */
export async function ensureDatabase(url: string, options: { fresh?: boolean } = {}): Promise<void> {
  const target = new URL(url);
  const database = decodeURIComponent(target.pathname.replace(/^\//, ''));
  if (!/^[a-z_][a-z0-9_]*$/.test(database)) throw new InternalError(`unsupported database name ${JSON.stringify(database)}`);
  const admin = new URL(url);
  admin.pathname = '/postgres';
  const client = new pg.Client({ connectionString: admin.toString() });
  await client.connect();
  try {
    if (options.fresh) await client.query(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`);
    const found = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
    if (found.rowCount === 0) {
      try {
        await client.query(`CREATE DATABASE ${database}`);
      } catch (error) {
        // Created meanwhile by another runner: PostgreSQL waits for its creation and then answers 23505 on its
        // catalog (42P04 only once it was committed before the CREATE began). Whatever the code, it exists now.
        const now = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [database]);
        if (now.rowCount === 0) throw error;
      }
    }
    // Idempotent, but two runners at once collide on PostgreSQL's catalog row (23505 when both add it, "tuple
    // concurrently updated", XX000, when both change it): the one that lost sets it again.
    await retry(() => client.query(`ALTER DATABASE ${database} SET default_transaction_isolation = 'serializable'`), {
      attempts: 5,
      baseDelayMs: 10,
      maxDelayMs: 200,
      isRetryable: (error) => sqlState(error) === 'XX000' || isUniqueViolation(error) || isSerializationFailure(error),
    });
  } finally {
    await client.end();
  }
}
