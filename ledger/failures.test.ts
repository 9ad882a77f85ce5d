import { strict as assert } from 'node:assert';
import { status, type ServiceError } from '@grpc/grpc-js';
import { account, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { spawnLedger } from '../test/ledger-process.js';
import { TcpProxy } from '../test/tcp-proxy.js';
import { testConfig, testPool, listenForTest } from '../test/support.js';
import type { Pool } from '../lib/db.js';
import { CreateTransferResultCode, type Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { LedgerClient } from './client.js';
import { transferCodeName } from './convert.js';
import { randomUUID } from 'node:crypto';
import { Server as GrpcServer } from '@grpc/grpc-js';
import { Piscina } from 'piscina';
import { createPool } from '../lib/db.js';
import { createLogger } from '../lib/logger.js';
import { LedgerServiceService } from '../proto/gen/ledger/v1/ledger.js';
import { executeBatch, type BatchTask } from './batch.js';
import { InternalError, UnavailableError } from '../lib/errors.js';
import { accountsWithBalanceRules } from './queries.js';
import { LedgerRouter, shardOf } from './router.js';
import { createLedgerService } from './service.js';
import type { WorkerReply } from './worker.js';

/** DESIGN.md "Failure behaviour": retries never double-charge across crashes; a dead database fails fast. */
describe('ledger failure behaviour', function () {
  this.timeout(120_000);
  let pool: Pool;
  before(() => {
    pool = testPool();
  });
  after(async () => {
    await pool.end();
  });

  async function createAccounts(client: LedgerClient, n: number): Promise<string[]> {
    const list = Array.from({ length: n }, () => account());
    const results = await client.createAccounts(list);
    assert.ok(results.every((r) => r.code === 1));
    return list.map((a) => a.id);
  }

  function randomTransfers(accounts: readonly string[], n: number): Transfer[] {
    return Array.from({ length: n }, (_, i) => {
      const d = accounts[Math.floor(Math.random() * accounts.length)]!;
      let c = accounts[Math.floor(Math.random() * accounts.length)]!;
      while (c === d) c = accounts[Math.floor(Math.random() * accounts.length)]!;
      return transfer({ debitAccountId: d, creditAccountId: c, amount: BigInt(1 + (i % 97)) });
    });
  }

  /** Every transfer recorded exactly once, and the accounts' posted balances equal the transfers' sums. */
  async function assertAppliedExactlyOnce(transfers: readonly Transfer[], accounts: readonly string[]): Promise<void> {
    const ids = transfers.map((t) => t.id);
    const counts = await pool.query('SELECT id, count(*)::int AS n FROM transfers WHERE id = ANY($1::uuid[]) GROUP BY id', [ids]);
    assert.equal(counts.rows.length, ids.length, 'some transfers were lost');
    assert.ok(counts.rows.every((r) => r.n === 1), 'some transfers were applied twice');
    const expected = new Map<string, { d: bigint; c: bigint }>(accounts.map((a) => [a, { d: 0n, c: 0n }]));
    for (const t of transfers) {
      expected.get(t.debitAccountId)!.d += t.amount;
      expected.get(t.creditAccountId)!.c += t.amount;
    }
    const rows = await pool.query('SELECT id, debits_posted, credits_posted FROM account_balances_current WHERE id = ANY($1::uuid[])', [accounts]);
    for (const r of rows.rows) {
      assert.equal(r.debits_posted, expected.get(r.id)!.d, `debits of ${r.id}`);
      assert.equal(r.credits_posted, expected.get(r.id)!.c, `credits of ${r.id}`);
    }
  }

  /** Sends each request until it gets an answer; every answer must be ok or exists. */
  async function settle(client: LedgerClient, requests: Transfer[][]): Promise<void> {
    for (const request of requests) {
      for (let attempt = 0; ; attempt++) {
        try {
          const results = await client.createTransfers(request);
          assert.ok(results.every((r) => ['ok', 'exists'].includes(transferCodeName(r.code))), results.map((r) => transferCodeName(r.code)).join(','));
          break;
        } catch (error) {
          assert.equal((error as ServiceError).code, status.UNAVAILABLE, String(error));
          if (attempt > 50) throw error;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
    }
  }

  it('worker threads killed mid-batch: calls fail with UNAVAILABLE, none hangs, retries apply each transfer once', async () => {
    const ledger: TestLedger = await startTestLedger({}, { autoBatch: false });
    try {
      const accounts = await createAccounts(ledger.client, 50);
      const requests = Array.from({ length: 60 }, () => randomTransfers(accounts, 400));
      const outcomes = requests.map((r) => ledger.client.createTransfers(r).then(() => 'answered' as const, (e: ServiceError) => e));
      // Kill the threads as soon as the first batch has completed: the next ones are then in flight.
      const completedBefore = ledger.app.workers.completed;
      while (ledger.app.workers.completed === completedBefore) await new Promise((r) => setImmediate(r));
      const threads = [...ledger.app.workers.threads];
      assert.ok(threads.length > 0);
      await Promise.all(threads.map((t) => t.terminate()));
      const settled = await Promise.race([Promise.all(outcomes), new Promise<never>((_, reject) => setTimeout(() => reject(new Error('a call hung after the worker crash')), 30_000))]);
      const failed = settled.filter((o) => o !== 'answered');
      assert.ok(failed.length > 0, 'the crash failed no call: the test did not hit a batch in flight');
      for (const error of failed) assert.equal((error as ServiceError).code, status.UNAVAILABLE, String(error));
      await settle(ledger.client, requests);
      await assertAppliedExactlyOnce(requests.flat(), accounts);
    } finally {
      await ledger.close();
    }
  });

  it('the ledger process killed with SIGKILL under load: retrying every unanswered request applies each transfer once', async () => {
    const env = { DATABASE_URL: testConfig().DATABASE_URL, LOG_LEVEL: 'silent', LEDGER_SHARDS: '8', LEDGER_RELAY_ENABLED: 'false', METRICS_PORT: '0' };
    let ledger = await spawnLedger(env);
    let client = new LedgerClient(ledger.target, { autoBatch: false, deadlineMs: 10_000 });
    const accounts = await createAccounts(client, 40);
    const sent: Transfer[][] = [];
    const unanswered: Transfer[][] = [];
    let stop = false;
    const load = Array.from({ length: 4 }, async () => {
      while (!stop) {
        const request = randomTransfers(accounts, 50);
        sent.push(request);
        try {
          await client.createTransfers(request);
        } catch {
          unanswered.push(request);
          return; // the process is gone: this caller stops
        }
      }
    });
    await new Promise((r) => setTimeout(r, 1500));
    await ledger.stop('SIGKILL');
    await Promise.all(load);
    stop = true;
    client.close();
    assert.ok(unanswered.length > 0, 'the kill interrupted no request');

    ledger = await spawnLedger(env);
    client = new LedgerClient(ledger.target, { autoBatch: false });
    try {
      await settle(client, unanswered);
      await assertAppliedExactlyOnce(sent.flat(), accounts);
    } finally {
      client.close();
      await ledger.stop();
    }
  });

  it('database unreachable: calls fail fast with UNAVAILABLE and retry-after, then succeed when it returns', async () => {
    // A TCP proxy in front of PostgreSQL that the test can cut, as a network partition or a database restart would.
    const proxy = await TcpProxy.start(new URL(testConfig().DATABASE_URL));
    const ledger = await startTestLedger({ DATABASE_URL: proxy.via(testConfig().DATABASE_URL) }, { autoBatch: false });
    try {
      const accounts = await createAccounts(ledger.client, 4);
      await proxy.cut();
      const started = Date.now();
      const request = randomTransfers(accounts, 5);
      await assert.rejects(ledger.client.createTransfers(request), (e: ServiceError) => {
        assert.equal(e.code, status.UNAVAILABLE, e.message);
        assert.ok(e.metadata.get('retry-after').length === 1, 'no retry-after');
        return true;
      });
      assert.ok(Date.now() - started < 10_000, `took ${Date.now() - started} ms to fail`);
      // The database returns; the client retries the same request (same ids), as a caller told UNAVAILABLE would.
      await proxy.open();
      await settle(ledger.client, [request]);
      await assertAppliedExactlyOnce(request, accounts);
    } finally {
      await ledger.close();
      await proxy.cut().catch(() => undefined);
    }
  });

  it('the database ends the workers\' idle connections (a restart): later calls get new connections, none fails', async () => {
    const ledger = await startTestLedger({}, { autoBatch: false });
    try {
      const accounts = await createAccounts(ledger.client, 20);
      // Concurrent requests over every shard: each worker opens several connections, idle after.
      const burst = () => Promise.all(Array.from({ length: 16 }, () => ledger.client.createTransfers(randomTransfers(accounts, 20)).then(() => 'ok', (e: ServiceError) => `${status[e.code]} ${e.details}`)));
      assert.deepEqual(new Set(await burst()), new Set(['ok']));
      const workerSessions = "FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'ledger-worker'";
      const ended = await pool.query(`SELECT pg_terminate_backend(pid) ${workerSessions}`);
      assert.ok(ended.rowCount! > 0, 'the workers had no connection open');
      while ((await pool.query(`SELECT 1 ${workerSessions}`)).rowCount! > 0) await new Promise((r) => setTimeout(r, 50));
      // The workers hear of the closed connections while idle (a second is ample); those are not handed out again.
      await new Promise((r) => setTimeout(r, 1000));
      assert.deepEqual(new Set(await burst()), new Set(['ok']));
    } finally {
      await ledger.close();
    }
  });

  it('a connection that goes silent (a middlebox dropped it): its statement times out, the batch runs on a new connection, the shard is not stuck', async () => {
    // One thread with one connection: the next batch surely runs on the connection that goes silent.
    const proxy = await TcpProxy.start(new URL(testConfig().DATABASE_URL));
    const env = { DATABASE_URL: proxy.via(testConfig().DATABASE_URL), DATABASE_STATEMENT_TIMEOUT_MS: '1000', LEDGER_WORKERS: '1', LEDGER_WORKER_CONCURRENCY: '1' };
    const ledger = await startTestLedger(env, { autoBatch: false, deadlineMs: 30_000 });
    try {
      const accounts = await createAccounts(ledger.client, 2);
      proxy.freeze();
      const request = [transfer({ debitAccountId: accounts[0]!, creditAccountId: accounts[1]!, amount: 1n })];
      // The batch's BEGIN finds the silent connection (pg's query_timeout: statement timeout + 5 s): nothing was
      // done on it, so the batch takes another connection. Without the timeout the call waited for good, and every
      // later call of the shard behind it.
      const [result] = await ledger.client.createTransfers(request);
      assert.equal(result?.code, CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_OK);
      // The shard's next batches run on a new connection.
      await settle(ledger.client, [request]);
      await assertAppliedExactlyOnce(request, accounts);
    } finally {
      await proxy.cut();
      await ledger.close();
    }
  });

  it('a shard locked by a session that went quiet: the batch times out with UNAVAILABLE and retry-after, then succeeds once the lock is gone', async () => {
    // A vanished client (behind a middlebox) keeps its locks until DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: the
    // batches of its shard wait until their statement timeout, and their callers must be told to retry.
    const ledger = await startTestLedger({ DATABASE_STATEMENT_TIMEOUT_MS: '500' }, { autoBatch: false });
    const holder = await pool.connect();
    try {
      const accounts = await createAccounts(ledger.client, 2);
      const request = [transfer({ debitAccountId: accounts[0]!, creditAccountId: accounts[1]!, amount: 1n })];
      await holder.query('BEGIN');
      await holder.query('SELECT 1 FROM ledger_shards WHERE shard = $1 FOR UPDATE', [shardOf(accounts[0]!, 8)]);
      await assert.rejects(ledger.client.createTransfers(request), (e: ServiceError) => {
        assert.equal(e.code, status.UNAVAILABLE, e.message);
        assert.equal(e.metadata.get('retry-after').length, 1, 'no retry-after');
        return true;
      });
      await holder.query('ROLLBACK');
      await settle(ledger.client, [request]);
      await assertAppliedExactlyOnce(request, accounts);
    } finally {
      await holder.query('ROLLBACK').catch(() => undefined);
      holder.release();
      await ledger.close();
    }
  });
});

/** A database that cannot be reached at all (nothing listens on port 1), and instances started beside others. */
describe('ledger failure behaviour: no database, and starting beside a running instance', function () {
  this.timeout(60_000);
  const CLOSED = (() => {
    const url = new URL(testConfig().DATABASE_URL);
    url.hostname = '127.0.0.1';
    url.port = '1';
    return url.toString();
  })();

  it('startLedger without a reachable database fails fast (it needs the database to claim its shards)', async () => {
    const started = Date.now();
    // The connection error itself, or an UnavailableError wrapping it.
    await assert.rejects(startTestLedger({ DATABASE_URL: CLOSED }), (e: { code?: string; kind?: string }) => e.code === 'ECONNREFUSED' || e.kind === 'unavailable');
    assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms to fail`);
  });

  /**
   * startLedger cannot run without the database, so the service is assembled as startLedger does (router over a
   * piscina worker pool, gRPC service) on a configuration whose database port is closed.
   */
  describe('a ledger service whose database port is closed', () => {
    let server: GrpcServer;
    let workers: Piscina<BatchTask, WorkerReply>;
    let queryPool: Pool;
    let client: LedgerClient;
    before(async () => {
      const config = testConfig({ DATABASE_URL: CLOSED, LEDGER_SHARDS: '8' });
      workers = new Piscina<BatchTask, WorkerReply>({ filename: new URL('./worker.ts', import.meta.url).href, minThreads: 1, maxThreads: 1, workerData: { config } });
      queryPool = createPool(config, { applicationName: 'ledger' });
      const router = new LedgerRouter(8, [0, 1, 2, 3, 4, 5, 6, 7], (task) => workers.run(task), { maxEvents: 8190, windowMs: 1, maxQueuedEvents: 200_000, readBalanceRules: (ids) => accountsWithBalanceRules(queryPool, ids) });
      server = new GrpcServer();
      server.addService(LedgerServiceService, createLedgerService(router, queryPool, createLogger('ledger-test', 'silent')));
      const address = await listenForTest(server);
      client = new LedgerClient(address, { autoBatch: false, deadlineMs: 15_000 });
    });
    after(async () => {
      client?.close();
      server?.forceShutdown();
      await workers?.destroy();
      await queryPool?.end();
    });

    async function expectUnavailableFast(call: Promise<unknown>, what: string): Promise<void> {
      const started = Date.now();
      await assert.rejects(call, (e: ServiceError) => {
        assert.equal(e.code, status.UNAVAILABLE, `${what}: ${e.code} ${e.message}`);
        assert.equal(e.metadata.get('retry-after').length, 1, `${what}: no retry-after`);
        return true;
      });
      assert.ok(Date.now() - started < 5_000, `${what} took ${Date.now() - started} ms to fail`);
    }

    it('writes fail fast with UNAVAILABLE and retry-after', async () => {
      await expectUnavailableFast(client.createAccounts([account()]), 'CreateAccounts');
      await expectUnavailableFast(client.createTransfers([transfer({ debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n })]), 'CreateTransfers');
    });

    it('reads, and a post naming no account (its shard is looked up), fail fast with UNAVAILABLE too, not INTERNAL', async () => {
      const accountId = randomUUID();
      const calls: Record<string, () => Promise<unknown>> = {
        LookupAccounts: () => client.lookupAccounts([accountId]),
        LookupTransfers: () => client.lookupTransfers([randomUUID()]),
        GetAccountTransfers: () => client.getAccountTransfers({ accountId }),
        GetAccountBalances: () => client.getAccountBalances({ accountId }),
        GetAccountBalanceAt: () => client.getAccountBalanceAt(accountId, 1n),
        'CreateTransfers (post naming no account)': () => client.createTransfers([transfer({ pendingId: randomUUID(), ledger: 0, code: 0, flags: { postPendingTransfer: true } })]),
      };
      // Every call's outcome, so that one failure shows them all.
      const outcomes: Record<string, string> = {};
      for (const [name, call] of Object.entries(calls)) {
        const started = Date.now();
        outcomes[name] = await call().then(
          () => 'answered',
          (e: ServiceError) => `${status[e.code]}${e.metadata.get('retry-after').length === 1 ? ' with retry-after' : ''}${Date.now() - started < 5_000 ? '' : ' (slow)'}`,
        );
      }
      assert.deepEqual(outcomes, Object.fromEntries(Object.keys(calls).map((name) => [name, 'UNAVAILABLE with retry-after'])));
    });
  });

  it('a second instance starts while the first commits batches on the same shards (rolling restart)', async () => {
    const first = await startTestLedger({}, { autoBatch: false });
    try {
      const list = Array.from({ length: 64 }, () => account());
      assert.ok((await first.client.createAccounts(list)).every((r) => r.code === 1));
      let stop = false;
      const load = Array.from({ length: 4 }, async () => {
        while (!stop) {
          await first.client.createTransfers(Array.from({ length: 32 }, (_, i) => transfer({ debitAccountId: list[i * 2]!.id, creditAccountId: list[i * 2 + 1]!.id, amount: 1n })));
        }
      });
      const failures: string[] = [];
      try {
        for (let attempt = 0; attempt < 25 && failures.length === 0; attempt++) {
          try {
            const second = await startTestLedger();
            await second.close();
          } catch (error) {
            failures.push(`start ${attempt + 1}: ${(error as { code?: string }).code ?? ''} ${String(error)}`);
          }
        }
      } finally {
        stop = true;
        await Promise.all(load);
      }
      assert.deepEqual(failures, []);
    } finally {
      await first.close();
    }
  });
});

/** executeBatch's reruns over a stand-in pool: which failure its callers hear after the last rerun. */
describe('ledger batch: a failure after its reruns', () => {
  /** A pool whose transactions begin, then fail their first statement with the next of `failures`. */
  function poolFailingWith(failures: Error[]): Pool {
    const client = {
      query: async (text: string) => {
        if (/^(BEGIN|ROLLBACK)/.test(text)) return { rows: [], rowCount: 0 };
        throw failures.shift() ?? new Error('no more failures scripted');
      },
      on: () => client,
      off: () => client,
      release: () => undefined,
    };
    return { connect: async () => client, options: { max: 1 } } as unknown as Pool;
  }
  const withCode = (code: string, message: string) => Object.assign(new Error(message), { code });

  it('is UNAVAILABLE when the last attempt lost its connection, as on any other attempt', async () => {
    const failures = [...Array.from({ length: 8 }, () => withCode('23505', 'duplicate key value violates unique constraint "transfers_pkey"')), withCode('ECONNRESET', 'read ECONNRESET')];
    await assert.rejects(executeBatch(poolFailingWith(failures), { shard: 0, submissions: [] }), (e: unknown) => e instanceof UnavailableError && e.code === 'database_unavailable');
  });

  it('is INTERNAL when it still learns new facts after its last rerun', async () => {
    const failures = Array.from({ length: 9 }, () => withCode('23505', 'duplicate key value violates unique constraint "transfers_pkey"'));
    await assert.rejects(executeBatch(poolFailingWith(failures), { shard: 0, submissions: [] }), (e: unknown) => e instanceof InternalError && /did not settle after 8 reruns/.test(e.message));
  });
});
