import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'mocha';
import type { Pool } from '../lib/db.js';
import { testConfig, testPool } from '../test/support.js';
import * as store from './store.js';
import { parseSchedule } from './windows.js';

const run = promisify(execFile);

/** The settlement command line, run as finance runs it (a process of its own, on the test database). */
describe('settlement command line', function () {
  this.timeout(60_000);
  let pool: Pool;
  before(() => {
    pool = testPool();
  });
  after(async () => {
    await pool?.end();
  });

  const cli = (...args: string[]) =>
    run(process.execPath, ['--import', 'tsx', 'settlement/cli.ts', ...args], { env: { ...process.env, DATABASE_URL: testConfig().DATABASE_URL, LOG_LEVEL: 'silent' } }).then(
      () => 0,
      (e: { code?: number }) => e.code ?? -1,
    );

  it('set-profile without a schedule is refused: it does not silently reset the merchant to daily at 00:00 UTC', async () => {
    const merchantId = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `cli ${merchantId.slice(0, 8)}`]);
    const paris = parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '17:00' });
    await store.saveProfile(pool, merchantId, { schedule: paris, payout: null });
    // Finance records the merchant's bank account, and says nothing of its windows.
    const code = await cli('set-profile', '--merchant', merchantId, '--payout-name', 'Acme SARL', '--iban', 'FR1420041010050500013M02606');
    assert.equal(code, 1, 'refused: the schedule is required');
    assert.deepEqual((await store.findProfile(pool, merchantId))?.schedule, paris, 'the windows are as they were');
    assert.equal(await cli('set-profile', '--merchant', merchantId, '--daily', '17:00', '--every', '15'), 1, 'one schedule, not two');
    // With its schedule, the bank account is recorded.
    assert.equal(await cli('set-profile', '--merchant', merchantId, '--daily', '17:00', '--time-zone', 'Europe/Paris', '--payout-name', 'Acme SARL', '--iban', 'FR1420041010050500013M02606'), 0);
    const saved = await store.findProfile(pool, merchantId);
    assert.deepEqual([saved?.schedule, saved?.payout?.iban], [paris, 'FR1420041010050500013M02606']);
  });

  it('set-profile refuses an account holder name the pain.001 file cannot carry: control characters (not XML 1.0), more than 140 characters, no Latin letter (SEPA)', async () => {
    const merchantId = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `cli ${merchantId.slice(0, 8)}`]);
    for (const name of ['Acme\u0001SARL', 'Acme\u000bSARL', 'A'.repeat(141), '株式会社']) {
      assert.equal(await cli('set-profile', '--merchant', merchantId, '--every', '60', '--payout-name', name, '--iban', 'FR1420041010050500013M02606'), 1, JSON.stringify(name));
      assert.equal((await store.findProfile(pool, merchantId))?.payout ?? null, null, 'no bank account recorded');
    }
  });
});
