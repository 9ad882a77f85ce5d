/**
 * Creates the database if needed and applies pending migrations.
 *   tsx scripts/migrate.ts            # DATABASE_URL from the environment
 *   tsx scripts/migrate.ts --fresh    # drop and recreate first (tests only)
 */
import { loadConfig } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { AppError } from '../lib/errors.js';
import { ensureDatabase, loadMigrations, migrate } from '../lib/migrate.js';

try {
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
} catch (error) {
  // A refusal the operator must act on is one clear line; anything else keeps its stack.
  console.error(error instanceof AppError ? `migrate: ${error.message}` : error);
  process.exitCode = 1;
}
