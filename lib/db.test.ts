import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { testConfig, testPool } from '../test/support.js';
import { AppError } from './errors.js';
import { asAppError, createPool, isSerializationFailure, withTransaction, type Pool } from './db.js';

describe('database (PostgreSQL at SERIALIZABLE)', () => {
  let pool: Pool;
  before(async () => {
    pool = testPool();
    await pool.query('CREATE TABLE IF NOT EXISTS db_test_oncall (shift UUID NOT NULL, doctor TEXT NOT NULL, on_call BOOL NOT NULL, PRIMARY KEY (shift, doctor))');
  });
  after(async () => {
    await pool.query('DROP TABLE IF EXISTS db_test_oncall');
    await pool.end();
  });

  it('runs every session and transaction at SERIALIZABLE', async () => {
    const r = await pool.query('SHOW default_transaction_isolation');
    assert.equal(r.rows[0].default_transaction_isolation, 'serializable');
    const inTx = await withTransaction(pool, async (c) => (await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation);
    assert.equal(inTx, 'serializable');
  });

  it('a pool asked for REPEATABLE READ (the outbox relay) runs its sessions at it; no other does', async () => {
    const relayPool = createPool(testConfig(), { max: 1, isolation: 'repeatable read' });
    try {
      assert.equal((await relayPool.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'repeatable read');
    } finally {
      await relayPool.end();
    }
    assert.equal((await pool.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'serializable');
  });

  it('a session left idle inside a transaction is ended by the database, its row locks released', async () => {
    const shift = randomUUID();
    await pool.query('INSERT INTO db_test_oncall VALUES ($1, $2, true)', [shift, 'vanished']);
    const short = createPool(testConfig({ DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: '300' }), { max: 1 });
    try {
      const abandoned = await short.connect();
      abandoned.on('error', () => undefined);
      await abandoned.query('BEGIN');
      await abandoned.query('SELECT * FROM db_test_oncall WHERE shift = $1 FOR UPDATE', [shift]);
      // The client goes quiet holding the lock; another session can take it once the database ends that one.
      await withTransaction(pool, (c) => c.query('UPDATE db_test_oncall SET on_call = false WHERE shift = $1', [shift]));
      await assert.rejects(abandoned.query('SELECT 1'));
      abandoned.release(true);
    } finally {
      await short.end();
    }
  });

  it('returns int8 as bigint, exactly, above 2^53', async () => {
    const r = await pool.query('SELECT 9223372036854775807::int8 AS max, 9007199254740993::int8 AS odd');
    assert.equal(r.rows[0].max, 9223372036854775807n);
    assert.equal(r.rows[0].odd, 9007199254740993n);
  });

  // The classic write skew: two doctors each go off call after checking that the other is on call. Under
  // SERIALIZABLE one of the two must fail with 40001; withTransaction retries it and the retry sees the truth.
  it('detects write skew with 40001 and retries the loser', async () => {
    const shift = randomUUID();
    await pool.query("INSERT INTO db_test_oncall VALUES ($1, 'alice', true), ($1, 'bob', true)", [shift]);
    let release!: () => void;
    const bothRead = new Promise<void>((resolve) => (release = resolve));
    let readers = 0;
    const failures: unknown[] = [];
    const goOffCall = (doctor: string) =>
      withTransaction(
        pool,
        async (c) => {
          const r = await c.query('SELECT count(*)::int AS n FROM db_test_oncall WHERE shift = $1 AND on_call', [shift]);
          if (++readers === 2) release();
          await Promise.race([bothRead, new Promise((res) => setTimeout(res, 200))]);
          if (r.rows[0].n < 2) return false;
          await c.query('UPDATE db_test_oncall SET on_call = false WHERE shift = $1 AND doctor = $2', [shift, doctor]);
          return true;
        },
        { retry: { onRetry: (e) => failures.push(e) } },
      );
    const outcomes = await Promise.all([goOffCall('alice'), goOffCall('bob')]);
    assert.deepEqual(outcomes.sort(), [false, true]);
    assert.ok(failures.length >= 1 && failures.every(isSerializationFailure), 'expected at least one 40001 retry');
    const onCall = await pool.query('SELECT count(*)::int AS n FROM db_test_oncall WHERE shift = $1 AND on_call', [shift]);
    assert.equal(onCall.rows[0].n, 1);
  });
});

describe('database failures as callers see them (asAppError)', () => {
  const failure = (code: string) => Object.assign(new Error(`sqlstate ${code}`), { code });

  it('contention past the retries, a lost connection, a lack of resources and a statement timeout are UNAVAILABLE; other errors stay as they are', () => {
    for (const [code, expected] of [
      ['40001', 'contention'],
      ['40P01', 'contention'],
      ['57P01', 'database_unavailable'],
      ['40003', 'database_unavailable'], // CockroachDB: a COMMIT whose outcome is unknown ("result is ambiguous")
      ['53200', 'database_overloaded'],
      ['53300', 'database_overloaded'],
      ['57014', 'database_timeout'], // statement timeout (e.g. waiting for a lock a vanished session holds)
    ] as const) {
      const mapped = asAppError(failure(code));
      assert.ok(mapped instanceof AppError && mapped.kind === 'unavailable' && mapped.code === expected, `${code}: ${String(mapped)}`);
      assert.equal(mapped.details.retryAfterSeconds, 1);
    }
    const bug = failure('23505');
    assert.equal(asAppError(bug), bug);
    const known = new AppError('conflict', 'x', 'y');
    assert.equal(asAppError(known), known);
  });
});
