/**
 * Creates the database if needed and applies pending migrations.
 *   tsx scripts/migrate.ts            # DATABASE_URL from the environment
 *   tsx scripts/migrate.ts --fresh    # drop and recreate first (tests only)
 */
import { loadConfig } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { ensureDatabase, loadMigrations, migrate } from '../lib/migrate.js';

const config = loadConfig();
const fresh = process.argv.includes('--fresh');
await ensureDatabase(config.DATABASE_URL, { fresh });
const pool = createPool(config, { max: 1, applicationName: 'migrate' });
try {
  const result = await migrate(pool, await loadMigrations());
  const where = new URL(config.DATABASE_URL);
  console.log(`migrations: ${result.applied.length} applied, ${result.alreadyApplied.length} already applied (${where.host}${where.pathname})`);
} finally {
  await pool.end();
}
