/**
 * Platform administration from the command line, JSON on stdout:
 *   npm run -s admin -- create-merchant --name "Acme"     {"id", "object": "merchant", "name", "secret_key"}
 *   npm run -s admin -- create-key --merchant ID          {"object": "api_key", "merchant", "prefix", "secret_key"}
 *   npm run -s admin -- revoke-key --key sk_...            {"revoked": true}
 */
import { parseArgs } from 'node:util';
import { loadConfig } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { AppError } from '../lib/errors.js';
import { createKey, createMerchant, revokeKey } from './auth.js';

const [command, ...rest] = process.argv.slice(2);
const { values } = parseArgs({ args: rest, options: { name: { type: 'string' }, key: { type: 'string' }, category: { type: 'string' }, merchant: { type: 'string' } } });
const config = loadConfig();
const pool = createPool(config, { max: 1, applicationName: 'admin' });
try {
  if (command === 'create-merchant') {
    console.log(JSON.stringify(await createMerchant(pool, values.name ?? '', config.PAYMENTS_DEFAULT_FEE_BPS, values.category)));
  } else if (command === 'create-key') {
    console.log(JSON.stringify(await createKey(pool, values.merchant ?? '')));
  } else if (command === 'revoke-key') {
    console.log(JSON.stringify({ revoked: await revokeKey(pool, values.key ?? '') }));
  } else {
    console.error('usage: admin create-merchant --name NAME | create-key --merchant ID | revoke-key --key sk_...');
    process.exitCode = 2;
  }
} catch (error) {
  console.error(JSON.stringify({ error: error instanceof AppError ? { code: error.code, message: error.message } : String(error) }));
  process.exitCode = 1;
} finally {
  await pool.end();
}
