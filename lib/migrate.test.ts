import { strict as assert } from 'node:assert';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { testConfig, scratchDatabaseUrl } from '../test/support.js';
import { createPool, type Pool } from './db.js';
import { ensureDatabase, loadMigrations, migrate, sqlServer } from './migrate.js';

describe('migration runner', () => {
  const url = scratchDatabaseUrl('ledgerline_migrate_test');
  let pool: Pool;
  let dir: string;

  beforeEach(async () => {
    await ensureDatabase(url, { fresh: true });
    pool = createPool({ ...testConfig(), DATABASE_URL: url }, { max: 2 });
    dir = await mkdtemp(path.join(os.tmpdir(), 'migrations-'));
    await writeFile(path.join(dir, '0001_first.sql'), 'CREATE TABLE first (id UUID PRIMARY KEY);');
    await writeFile(path.join(dir, '0002_second.sql'), 'CREATE TABLE second (id UUID PRIMARY KEY);\nINSERT INTO second VALUES (gen_random_uuid());');
  });

  afterEach(async () => {
    await pool.end();
  });

  async function tables(): Promise<string[]> {
    const r = await pool.query<{ table_name: string }>("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1");
    return r.rows.map((row) => row.table_name);
  }

  it('applies in order once; a second run is a no-op', async () => {
    const first = await migrate(pool, await loadMigrations([dir]));
    assert.deepEqual(first, { applied: ['0001_first.sql', '0002_second.sql'], alreadyApplied: [] });
    const second = await migrate(pool, await loadMigrations([dir]));
    assert.deepEqual(second, { applied: [], alreadyApplied: ['0001_first.sql', '0002_second.sql'] });
    assert.deepEqual(await tables(), ['first', 'schema_migrations', 'second']);
    assert.equal((await pool.query('SELECT count(*)::int AS n FROM second')).rows[0].n, 1);
  });

  it('rolls a broken migration back entirely and records nothing for it', async () => {
    await writeFile(path.join(dir, '0003_broken.sql'), 'CREATE TABLE third (id UUID PRIMARY KEY);\nINSERT INTO third VALUES (42);');
    await assert.rejects(migrate(pool, await loadMigrations([dir])), /uuid/i);
    assert.deepEqual(await tables(), ['first', 'schema_migrations', 'second']);
    const names = (await pool.query('SELECT name FROM schema_migrations ORDER BY name')).rows.map((r) => r.name);
    assert.deepEqual(names, ['0001_first.sql', '0002_second.sql']);
  });

  it('refuses a migration edited after it was applied', async () => {
    await migrate(pool, await loadMigrations([dir]));
    await writeFile(path.join(dir, '0001_first.sql'), 'CREATE TABLE first (id UUID PRIMARY KEY, x INT4);');
    await assert.rejects(migrate(pool, await loadMigrations([dir])), /0001_first.sql was changed after it was applied/);
  });

  it('refuses a migration that is not CockroachDB-compatible before running anything', async () => {
    await writeFile(path.join(dir, '0003_serial.sql'), 'CREATE TABLE bad (id SERIAL PRIMARY KEY);');
    await assert.rejects(migrate(pool, await loadMigrations([dir])), /0003_serial.sql:1 serial/);
    assert.deepEqual(await tables(), []);
  });

  it('a second runner started while another applies a migration waits for it and counts it as applied', async () => {
    // Two instances of a service starting at once both migrate. One holds 0001 applied but not yet committed
    // (a runner of its own, by hand, so that the order is certain); the other starts meanwhile.
    await migrate(pool, []);
    const migrations = await loadMigrations([dir]);
    const other = new pg.Client({ connectionString: url });
    await other.connect();
    try {
      await other.query('BEGIN');
      await other.query(migrations[0]!.sql);
      await other.query('INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)', [migrations[0]!.name, migrations[0]!.checksum]);
      const ours = migrate(pool, migrations);
      ours.catch(() => undefined);
      // Ours is waiting on the other's uncommitted table; then the other commits.
      for (;;) {
        const waiting = await other.query("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()");
        if (waiting.rowCount! > 0) break;
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      await other.query('COMMIT');
      assert.deepEqual(await ours, { applied: ['0002_second.sql'], alreadyApplied: ['0001_first.sql'] });
    } finally {
      await other.end();
    }
    assert.deepEqual(await tables(), ['first', 'schema_migrations', 'second']);
  });

  it('two runners at once on an empty database both succeed, each migration applied once', async () => {
    const other = createPool({ ...testConfig(), DATABASE_URL: url }, { max: 1 });
    try {
      const migrations = await loadMigrations();
      const [a, b] = await Promise.all([migrate(pool, migrations), migrate(other, migrations)]);
      assert.deepEqual([...a.applied, ...b.applied].sort(), migrations.map((m) => m.name));
    } finally {
      await other.end();
    }
  });

  it('runners creating the database at once all succeed', async () => {
    for (const name of ['ledgerline_migrate_test_a', 'ledgerline_migrate_test_b', 'ledgerline_migrate_test_c']) {
      const created = scratchDatabaseUrl(name);
      await ensureDatabase(created, { fresh: true });
      const admin = new pg.Client({ connectionString: scratchDatabaseUrl('postgres') });
      await admin.connect();
      try {
        await admin.query(`DROP DATABASE ${name} WITH (FORCE)`);
        // Each finds it missing and creates it; all but one find it made meanwhile.
        await Promise.all([ensureDatabase(created), ensureDatabase(created), ensureDatabase(created), ensureDatabase(created)]);
        assert.equal((await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])).rowCount, 1);
      } finally {
        await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
        await admin.end();
      }
    }
  });

  it('runs a PostgreSQL-only file (*.postgresql.sql) on PostgreSQL, in its place in the order', async () => {
    await writeFile(path.join(dir, '0003_tuning.postgresql.sql'), 'ALTER TABLE second ALTER COLUMN id SET STORAGE PLAIN;');
    const migrations = await loadMigrations([dir]);
    assert.deepEqual(migrations.map((m) => [m.name, m.postgresqlOnly]), [['0001_first.sql', false], ['0002_second.sql', false], ['0003_tuning.postgresql.sql', true]]);
    assert.equal(await sqlServer(pool), 'postgresql');
    assert.deepEqual((await migrate(pool, migrations)).applied, ['0001_first.sql', '0002_second.sql', '0003_tuning.postgresql.sql']);
  });

  it('the project migrations apply cleanly to an empty database', async () => {
    const result = await migrate(pool, await loadMigrations());
    assert.ok(result.applied.length >= 1);
    assert.ok((await tables()).includes('transfers'));
    // Outbox payloads stay uncompressed (0013): compressing rows deleted within a second cost a tenth of a batch.
    const storage = await pool.query("SELECT attstorage FROM pg_attribute WHERE attrelid = 'outbox'::regclass AND attname = 'payload'");
    assert.equal(storage.rows[0].attstorage, 'e');
  });
});
