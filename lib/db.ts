import { context, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import pg from 'pg';
import type { Config } from './config.js';
import { AppError, UnavailableError } from './errors.js';
import { retry, type RetryOptions } from './retry.js';

/**
 * The one database access layer: a `pg` pool that speaks to PostgreSQL locally and CockroachDB in production,
 * and a transaction helper that retries serialization failures, the normal outcome of contention at
 * SERIALIZABLE isolation on both databases.
 */

// int8 (bigint) columns come back as strings by default; money is never a JS number, so parse to bigint.
pg.types.setTypeParser(pg.types.builtins.INT8, (value: string) => BigInt(value));

export type Pool = pg.Pool;
export type PoolClient = pg.PoolClient;
export type Queryable = pg.Pool | pg.PoolClient;

export interface PoolOptions {
  max?: number;
  applicationName?: string;
  /**
   * For pools whose transactions must only touch rows by key (the ledger's batches). On PostgreSQL a table
   * scan at SERIALIZABLE takes a read lock on the whole relation, and once statistics make a small table look
   * cheap to scan (ledger_shards: a few rows), every concurrent batch conflicts with every other. CockroachDB
   * tracks reads per key span and needs no such setting.
   */
  keyAccessOnly?: boolean;
  /** This pool's statement timeout instead of DATABASE_STATEMENT_TIMEOUT_MS (the gateway's: GATEWAY_DATABASE_TIMEOUT_MS). */
  statementTimeoutMs?: number;
  /**
   * The sessions' default isolation: SERIALIZABLE unless the pool's only user proves it needs less (see
   * TransactionOptions.isolation): the outbox relay, whose single statements then need no BEGIN and COMMIT.
   */
  isolation?: 'serializable' | 'repeatable read';
}

type PoolConfig = Pick<Config, 'DATABASE_URL' | 'DATABASE_DIALECT' | 'DATABASE_POOL_MAX' | 'DATABASE_STATEMENT_TIMEOUT_MS' | 'DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS'>;

/** How long past statement_timeout a statement's answer may take to arrive before the connection is given up. */
const QUERY_ANSWER_MARGIN_MS = 5_000;

export function createPool(config: PoolConfig, options: PoolOptions = {}): pg.Pool {
  // Sessions run at SERIALIZABLE, whatever the server default, so local behaviour matches CockroachDB; only a
  // pool that asks for less (the outbox relay's) runs at REPEATABLE READ (on CockroachDB that is SERIALIZABLE
  // unless sql.txn.repeatable_read_isolation.enabled is set: correct either way, single statements retry).
  const isolation = options.isolation === 'repeatable read' ? 'repeatable\\ read' : 'serializable';
  const settings = [`-c default_transaction_isolation=${isolation}`, `-c idle_in_transaction_session_timeout=${config.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS}`];
  if (options.keyAccessOnly && config.DATABASE_DIALECT === 'postgresql') settings.push('-c enable_seqscan=off');
  const statementTimeout = options.statementTimeoutMs ?? config.DATABASE_STATEMENT_TIMEOUT_MS;
  const pool = new pg.Pool({
    connectionString: config.DATABASE_URL,
    max: options.max ?? config.DATABASE_POOL_MAX,
    application_name: options.applicationName ?? 'ledgerline',
    statement_timeout: statementTimeout,
    // The database ends a statement at statement_timeout; an answer still missing well after it never comes (a
    // middlebox dropped the connection without a reset). Without a limit here the transaction would wait for it for
    // good, and with it a ledger shard's batch, and every batch of the shard after it.
    query_timeout: statementTimeout + QUERY_ANSWER_MARGIN_MS,
    connectionTimeoutMillis: 5_000,
    options: settings.join(' '),
  });
  // An idle client losing its connection (database restart) must not crash the process; the next query fails
  // and is handled by its caller.
  pool.on('error', () => undefined);
  return pool;
}

/** SQLSTATEs after which re-running the whole transaction is correct. */
const RETRYABLE_SQLSTATES = new Set([
  '40001', // serialization_failure (CockroachDB: restart transaction)
  '40P01', // deadlock_detected
]);

/** SQLSTATE classes / codes meaning the database cannot be reached or is going away. */
/**
 * The connection went away, or (40003, CockroachDB's "result is ambiguous") a COMMIT's outcome is unknown: the
 * same for callers, never retried inside the transaction, answered UNAVAILABLE for an idempotent retry.
 */
const CONNECTION_SQLSTATES = new Set(['57P01', '57P02', '57P03', '08000', '08001', '08003', '08006', '40003']);
const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH']);

export function sqlState(error: unknown): string | undefined {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function isSerializationFailure(error: unknown): boolean {
  const code = sqlState(error);
  return code !== undefined && RETRYABLE_SQLSTATES.has(code);
}

export function isConnectionError(error: unknown): boolean {
  const code = sqlState(error);
  if (code !== undefined && (CONNECTION_SQLSTATES.has(code) || CONNECTION_ERRNOS.has(code))) return true;
  const message = error instanceof Error ? error.message : '';
  return /Connection terminated|timeout exceeded when trying to connect|Client has encountered a connection error|Query read timeout/.test(message);
}

/** SQLSTATE class 53, insufficient resources (out of memory or shared memory, too many connections): passing. */
const isInsufficientResources = (error: unknown) => sqlState(error)?.startsWith('53') ?? false;

/**
 * SQLSTATE 57014, query_canceled: a statement past DATABASE_STATEMENT_TIMEOUT_MS, typically waiting for a lock that a
 * vanished session holds until the database ends it (DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS). Its transaction
 * rolled back, so it is passing like contention, not a bug of the request.
 */
const isStatementTimeout = (error: unknown) => sqlState(error) === '57014';

/**
 * A database failure as callers see it: unreachable, contended past the retries, short of resources or timed out is
 * UNAVAILABLE with Retry-After (nothing was committed, so the same request may be sent again); anything else
 * is returned as it is (an AppError already, or a bug).
 */
export function asAppError(error: unknown): unknown {
  if (error instanceof AppError) return error;
  if (isConnectionError(error)) return new UnavailableError('database_unavailable', 'database unavailable', 1, { cause: error });
  if (isSerializationFailure(error)) return new UnavailableError('contention', 'conflicting concurrent update; retry', 1, { cause: error });
  if (isInsufficientResources(error)) return new UnavailableError('database_overloaded', 'database short of resources; retry', 1, { cause: error });
  if (isStatementTimeout(error)) return new UnavailableError('database_timeout', 'database statement timed out; retry', 1, { cause: error });
  return error;
}

export interface TransactionOptions {
  retry?: Partial<Omit<RetryOptions, 'isRetryable'>>;
  readOnly?: boolean;
  /**
   * SERIALIZABLE unless a caller proves it needs less. Only readers that take no decision from what they read
   * run at REPEATABLE READ, so that their reads put no SERIALIZABLE read locks in the way of the ledger's
   * batches: the outbox relay (committed outbox rows never change; its pool's sessions default to it) and the
   * expiry sweeper (it only proposes candidates; the batch re-checks each under its own locks).
   */
  isolation?: 'serializable' | 'repeatable read';
  /** Further errors after which re-running the transaction is correct (besides serialization failures). */
  retryIf?: (error: unknown) => boolean;
}

export function isUniqueViolation(error: unknown): boolean {
  return sqlState(error) === '23505';
}

/**
 * Runs `work` in one SERIALIZABLE transaction, retrying the whole of it on serialization failure or deadlock.
 * `work` must therefore be free of side effects outside the transaction. A lost connection becomes an
 * UnavailableError: whether a COMMIT that lost its connection took effect is unknown, and only idempotent
 * callers (ids chosen by the client) may retry it.
 */
export async function withTransaction<T>(pool: pg.Pool, work: (client: pg.PoolClient) => Promise<T>, options: TransactionOptions = {}): Promise<T> {
  return retry(
    async () => {
      const attempt = queryTracing();
      const level = options.isolation === 'repeatable read' ? 'REPEATABLE READ' : 'SERIALIZABLE';
      let client: pg.PoolClient;
      try {
        client = await begun(pool, `BEGIN ISOLATION LEVEL ${level}${options.readOnly ? ' READ ONLY' : ''}`);
      } catch (error) {
        // No connection, or BEGIN refused (a database outage): the attempt's span ends too, with the error.
        attempt?.end(error);
        throw error;
      }
      let broken = false;
      // A checked-out client whose connection dies emits 'error'; unheard, that would crash the process. The
      // query in flight fails on its own and the client is discarded at release.
      const onError = (): void => {
        broken = true;
      };
      client.on('error', onError);
      const untrace = attempt?.trace(client);
      try {
        const result = await work(client);
        await client.query('COMMIT');
        attempt?.end();
        return result;
      } catch (error) {
        // A connection that failed is discarded (which ends its transaction): a ROLLBACK on it could only fail, or
        // wait behind the statement whose answer never came.
        if (isConnectionError(error)) broken = true;
        else {
          try {
            await client.query('ROLLBACK');
          } catch {
            broken = true;
          }
        }
        attempt?.end(error);
        if (isConnectionError(error)) throw new UnavailableError('database_unavailable', 'database unavailable', 1, { cause: error });
        throw error;
      } finally {
        untrace?.();
        client.off('error', onError);
        client.release(broken);
      }
    },
    {
      attempts: 50,
      baseDelayMs: 2,
      maxDelayMs: 200,
      ...options.retry,
      isRetryable: (error) => isSerializationFailure(error) || (options.retryIf?.(error) ?? false),
    },
  );
}

/**
 * A pooled connection with a transaction begun on it. A connection the database closed while it sat idle in the
 * pool (a restart; or, in a worker thread paused between tasks, one it could not hear close) fails its BEGIN, which
 * did nothing: it is discarded and another taken, up to as many as the pool holds, so a restart costs callers nothing.
 */
async function begun(pool: pg.Pool, begin: string): Promise<pg.PoolClient> {
  for (let discarded = 0; ; discarded++) {
    let client: pg.PoolClient;
    try {
      client = await pool.connect();
    } catch (error) {
      throw new UnavailableError('database_unavailable', 'database unavailable', 1, { cause: error });
    }
    // Heard while BEGIN runs: unheard, a connection's 'error' would crash the process.
    const ignore = (): void => undefined;
    client.on('error', ignore);
    try {
      await client.query(begin);
      return client;
    } catch (error) {
      client.release(true);
      if (!isConnectionError(error)) throw error;
      if (discarded >= (pool.options.max ?? 10)) throw new UnavailableError('database_unavailable', 'database unavailable', 1, { cause: error });
    } finally {
      client.off('error', ignore);
    }
  }
}

/**
 * One statement as its own (implicit, at the pool's isolation) transaction: a round trip instead of BEGIN, statement,
 * COMMIT. Retried on serialization failure like withTransaction; a lost connection is an UnavailableError.
 * Only for statements that are a whole transaction by themselves.
 */
export async function statement(pool: pg.Pool, query: pg.QueryConfig): Promise<pg.QueryResult> {
  return retry(
    async () => {
      const span = querySpan(query);
      try {
        const result = await pool.query(query);
        span?.end();
        return result;
      } catch (error) {
        endWithError(span, error);
        if (isConnectionError(error)) throw new UnavailableError('database_unavailable', 'database unavailable', 1, { cause: error });
        throw error;
      }
    },
    { attempts: 50, baseDelayMs: 2, maxDelayMs: 200, isRetryable: isSerializationFailure },
  );
}

/**
 * Runs `query`, a DELETE whose last parameter is a row limit (`... IN (SELECT ... LIMIT $n)`: PostgreSQL has no
 * DELETE ... LIMIT), `rowsPerStatement` rows at a time until a statement deletes fewer: each statement a short
 * transaction of its own, so clearing a large backlog never holds locks long. Returns the rows deleted.
 */
export async function deleteInChunks(pool: pg.Pool, query: { name: string; text: string; values: unknown[] }, rowsPerStatement: number): Promise<number> {
  let deleted = 0;
  for (;;) {
    const r = await statement(pool, { ...query, values: [...query.values, rowsPerStatement] });
    deleted += r.rowCount ?? 0;
    if ((r.rowCount ?? 0) < rowsPerStatement) return deleted;
  }
}

/**
 * A PostgreSQL array literal for values whose text form needs no quoting: numbers, bigints and UUIDs (all
 * validated before they get here), or null. Several times cheaper than pg's general array serialization,
 * which escapes every element; it matters for the ledger's multi-row statements of 8,190 rows.
 */
export function sqlArray(values: readonly (string | number | bigint | null)[]): string {
  let text = '{';
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (i > 0) text += ',';
    text += v === null ? 'NULL' : String(v);
  }
  return text + '}';
}

// --- tracing -----------------------------------------------------------------------------------------------

const dbTracer = trace.getTracer('pg');

/** A CLIENT span for one statement, when the active span is recorded (nothing is made otherwise). */
function querySpan(query: string | pg.QueryConfig): Span | undefined {
  if (!trace.getSpan(context.active())?.isRecording()) return undefined;
  const text = typeof query === 'string' ? query : query.text;
  const operation = /^\s*(?:WITH\b[\s\S]*?\)\s*)?(\w+)/i.exec(text)?.[1]?.toUpperCase() ?? 'QUERY';
  const name = typeof query === 'string' ? undefined : query.name;
  return dbTracer.startSpan(`pg ${name ?? operation}`, {
    kind: SpanKind.CLIENT,
    // Statements carry parameters separately: the text holds no values, so no secrets or card data.
    attributes: { 'db.system.name': 'postgresql', 'db.operation.name': operation, 'db.query.text': text.length > 2000 ? `${text.slice(0, 2000)}...` : text },
  });
}

function endWithError(span: Span | undefined, error: unknown): void {
  if (!span) return;
  span.setStatus({ code: SpanStatusCode.ERROR, message: (error as { code?: string }).code ?? (error instanceof Error ? error.message : String(error)) });
  span.end();
}

/**
 * One transaction attempt as a span ('db.transaction') with a span per statement, when the caller is traced.
 * The client's query method is wrapped for the attempt and restored before the client goes back to the pool.
 */
function queryTracing(): { trace(client: pg.PoolClient): () => void; end(error?: unknown): void } | undefined {
  const parent = context.active();
  if (!trace.getSpan(parent)?.isRecording()) return undefined;
  const transaction = dbTracer.startSpan('db.transaction', { kind: SpanKind.CLIENT, attributes: { 'db.system.name': 'postgresql' } }, parent);
  const inside = trace.setSpan(parent, transaction);
  return {
    trace(client) {
      const original = client.query;
      const traced = function (this: pg.PoolClient, ...args: unknown[]) {
        const span = context.with(inside, () => querySpan(args[0] as string | pg.QueryConfig));
        const result = (original as (...a: unknown[]) => unknown).apply(this, args);
        if (result instanceof Promise) result.then(() => span?.end(), (error: unknown) => endWithError(span, error));
        else span?.end();
        return result;
      };
      client.query = traced as typeof client.query;
      return () => {
        client.query = original;
      };
    },
    end(error) {
      if (error === undefined) transaction.end();
      else endWithError(transaction, error);
    },
  };
}

export interface StatementTiming {
  name: string;
  operation: string;
  /** Epoch milliseconds (fractional). */
  start: number;
  end: number;
  attempt: number;
  failed: boolean;
}

/**
 * Times every statement of a client (until it goes back to the pool): for worker threads, which have no
 * tracer, so that the main thread can make their spans. The wrapper is removed at release.
 */
export function recordStatements(client: pg.PoolClient, sink: StatementTiming[], attempt: number): void {
  const original = client.query;
  const now = () => performance.timeOrigin + performance.now();
  client.query = function (this: pg.PoolClient, ...args: unknown[]) {
    const query = args[0] as string | pg.QueryConfig;
    const text = typeof query === 'string' ? query : query.text;
    const timing: StatementTiming = {
      name: (typeof query === 'string' ? undefined : query.name) ?? '',
      operation: /^\s*(\w+)/.exec(text)?.[1]?.toUpperCase() ?? 'QUERY',
      start: now(),
      end: 0,
      attempt,
      failed: false,
    };
    sink.push(timing);
    const result = (original as (...a: unknown[]) => unknown).apply(this, args);
    if (result instanceof Promise) {
      result.then(
        () => (timing.end = now()),
        () => ((timing.end = now()), (timing.failed = true)),
      );
    } else timing.end = now();
    return result;
  } as typeof client.query;
  const release = client.release;
  client.release = function (this: pg.PoolClient, ...args: Parameters<typeof release>) {
    client.query = original;
    client.release = release;
    return release.apply(this, args);
  };
}
