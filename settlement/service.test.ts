import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { credentials, Server, status, type ServiceError } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { withTransaction, type Pool } from '../lib/db.js';
import { callUnary } from '../lib/grpc.js';
import { createLogger } from '../lib/logger.js';
import { LedgerClient } from '../ledger/client.js';
import { nowNanos } from '../ledger/payments/model.js';
import { SettlementServiceClient, SettlementServiceService } from '../proto/gen/settlement/v1/settlement.js';
import { testConfig, testPool, listenForTest } from '../test/support.js';
import { createSettlementService } from './service.js';
import { Settler } from './settler.js';
import * as store from './store.js';
import { parseSchedule } from './windows.js';

/** The settlement service's gRPC answers when the ledger it calls is down. */
describe('settlement service over gRPC, with no ledger behind it (real PostgreSQL)', function () {
  this.timeout(60_000);
  let pool: Pool;
  let ledger: LedgerClient;
  let server: Server;
  let client: SettlementServiceClient;

  before(async () => {
    pool = testPool();
    // Nothing listens there: every ledger call fails UNAVAILABLE at once.
    ledger = new LedgerClient('127.0.0.1:1', { autoBatch: false, deadlineMs: 5_000 });
    const logger = createLogger('settlement-test', 'silent');
    const settler = new Settler(pool, ledger, { defaultSchedule: parseSchedule({ kind: 'interval', intervalMinutes: 1 }), resumePayoutsAfterMs: 1_000 }, logger);
    server = new Server();
    server.addService(SettlementServiceService, createSettlementService(pool, ledger, settler, testConfig(), logger));
    const address = await listenForTest(server);
    client = new SettlementServiceClient(address, credentials.createInsecure());
  });
  after(async () => {
    client?.close();
    server?.forceShutdown();
    ledger?.close();
    await pool?.end();
  });

  it('closing a window is answered UNAVAILABLE with Retry-After (the gateway: 503, retry), not INTERNAL', async () => {
    const merchantId = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `ledger down ${merchantId.slice(0, 8)}`]);
    const accountId = randomUUID();
    await withTransaction(pool, (tx) => store.openAccount(tx, accountId, merchantId, 'EUR', nowNanos() - 60_000_000_000n));
    const error = await callUnary(client, client.closeWindow, { merchantId, currency: 'EUR' }, 10_000)
      .then(
        () => assert.fail('closed a window without the ledger'),
        (e: ServiceError) => e,
      )
      // The account is in no ledger: left in place, it would fail every later closer run on this database.
      .finally(() => pool.query('DELETE FROM settlement_accounts WHERE account_id = $1', [accountId]));
    assert.equal(status[error.code], status[status.UNAVAILABLE], `answered ${status[error.code]}: ${error.details}`);
    assert.ok(Number(error.metadata.get('retry-after')[0]) > 0, 'no Retry-After');
  });

  it('lists a merchant\'s batches newest first, a page after starting_after or before ending_before', async () => {
    const merchantId = randomUUID();
    await pool.query('INSERT INTO merchants (id, name, fee_bps) VALUES ($1, $2, 100)', [merchantId, `paging ${merchantId.slice(0, 8)}`]);
    const accountId = randomUUID();
    const start = nowNanos() - 3_600_000_000_000n;
    const minute = 60_000_000_000n;
    // Five batches of consecutive windows, oldest first.
    const ids = await withTransaction(pool, async (tx) => {
      await store.openAccount(tx, accountId, merchantId, 'EUR', start);
      const made: string[] = [];
      for (let i = 0n; i < 5n; i++) {
        const id = randomUUID();
        await store.insertBatch(tx, {
          id, merchantId, accountId, currency: 'EUR', windowStart: start + i * minute, windowEnd: start + (i + 1n) * minute,
          grossCaptured: 0n, refunds: 0n, fees: 0n, lineCount: 0, net: 0n, carriedIn: 0n, available: 0n, payout: 0n, carriedOut: 0n, heldForDebt: 0n, payoutShort: 0n,
          payoutTransferId: randomUUID(), status: 'paid', failureCode: null,
        });
        made.push(id);
      }
      // The batches stay; the account goes: in no ledger, it would fail every later closer run on this database.
      await tx.query('DELETE FROM settlement_accounts WHERE account_id = $1', [accountId]);
      return made;
    });
    const newestFirst = [...ids].reverse();
    const list = async (r: { limit: number; startingAfter?: string; endingBefore?: string }) => {
      const page = await callUnary(client, client.listBatches, { merchantId, startingAfter: '', endingBefore: '', ...r }, 10_000);
      return { ids: page.batches.map((b) => b.id), hasMore: page.hasMore };
    };
    assert.deepEqual(await list({ limit: 2 }), { ids: newestFirst.slice(0, 2), hasMore: true });
    assert.deepEqual(await list({ limit: 2, startingAfter: newestFirst[1]! }), { ids: newestFirst.slice(2, 4), hasMore: true });
    assert.deepEqual(await list({ limit: 2, startingAfter: newestFirst[3]! }), { ids: newestFirst.slice(4), hasMore: false });
    // Back from the last page: the two just newer than its first, still newest first; then the newest one alone.
    assert.deepEqual(await list({ limit: 2, endingBefore: newestFirst[4]! }), { ids: newestFirst.slice(2, 4), hasMore: true });
    assert.deepEqual(await list({ limit: 2, endingBefore: newestFirst[1]! }), { ids: newestFirst.slice(0, 1), hasMore: false });
    const both = await callUnary(client, client.listBatches, { merchantId, limit: 2, startingAfter: ids[0]!, endingBefore: ids[1]! }, 10_000).then(
      () => assert.fail('accepted both cursors'),
      (e: ServiceError) => e,
    );
    assert.equal(both.code, status.INVALID_ARGUMENT);
  });
});
