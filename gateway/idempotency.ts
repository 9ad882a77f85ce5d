import { createHash, randomUUID } from 'node:crypto';
import type { PoolClient } from 'pg';
import { deleteInChunks, statement, withTransaction, type Pool } from '../lib/db.js';
import { Coalescer } from '../lib/coalesce.js';
import { AppError, ValidationError } from '../lib/errors.js';
import { hasControlCharacters } from '../ledger/validation.js';

/**
 * Idempotency-Key results, in the database (they survive gateway restarts and work across instances). The
 * first answer to a key (success or business error) is kept for the TTL and replayed byte for byte to a retry
 * with the same request fingerprint; other parameters are refused (422); a retry while the first request is
 * still running is refused (409) unless the lock is older than `lockTimeoutMs` (its gateway died): then the
 * retry takes the key over. 5xx and 429 answers are not kept, so a retry runs again. Each holder of a key has
 * its own lock token: a request that was only slow, not dead, cannot release or complete a key taken over.
 */

/** `proceed`: this request holds the key; its lock token names it when it releases or completes the key. */
export type Begin = { kind: 'proceed'; lockToken: string } | { kind: 'replay'; status: number; body: string };

export const MAX_IDEMPOTENCY_KEY = 255;

export function parseIdempotencyKey(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  const key = Array.isArray(header) ? header[0] : header;
  if (key === undefined || key.length === 0 || key.length > MAX_IDEMPOTENCY_KEY || hasControlCharacters(key)) {
    throw new ValidationError('Idempotency-Key', `1-${MAX_IDEMPOTENCY_KEY} printable characters`, 'idempotency_key_invalid');
  }
  return key;
}

/** SHA-256 of method, path and the body with object keys sorted: the same request whatever the key order. */
export function requestFingerprint(method: string, path: string, body: unknown): string {
  return createHash('sha256').update(`${method} ${path}\n`).update(canonicalJson(body)).digest('hex');
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value !== null && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}

interface KeyRecord {
  scope: string;
  key: string;
  fingerprint: string;
  lockToken: string;
}

/** A key as the request that holds it names it. */
export interface HeldKey {
  scope: string;
  key: string;
  lockToken: string;
}

type Completion = HeldKey & { status: number; body: string };

export class IdempotencyStore {
  /** New keys of concurrent requests are recorded together, and their results written together (group commit). */
  private readonly inserts = new Coalescer((records: KeyRecord[]) => this.insertMany(records));
  private readonly completions = new Coalescer((results: Completion[]) => this.completeMany(results).then(() => results.map(() => undefined)));

  constructor(
    private readonly pool: Pool,
    private readonly ttlHours: number,
    private readonly lockTimeoutMs = 60_000,
  ) {}

  /** Records new keys; per record, whether it was new (the first of a key in a batch wins, as in the table). */
  private async insertMany(records: KeyRecord[]): Promise<boolean[]> {
    const first = new Map<string, KeyRecord>();
    for (const r of records) if (!first.has(`${r.scope}\u0000${r.key}`)) first.set(`${r.scope}\u0000${r.key}`, r);
    const unique = [...first.values()];
    const inserted = await statement(this.pool, {
      name: 'gw-idem-insert-many',
      text: `INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, locked_at, lock_token)
             SELECT s, k, f, 'in_flight', now(), t FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[]) AS r(s, k, f, t)
             ON CONFLICT DO NOTHING RETURNING merchant_id, key`,
      values: [unique.map((r) => r.scope), unique.map((r) => r.key), unique.map((r) => r.fingerprint), unique.map((r) => r.lockToken)],
    });
    const recorded = new Set(inserted.rows.map((row) => `${row.merchant_id}\u0000${row.key}`));
    return records.map((r) => first.get(`${r.scope}\u0000${r.key}`) === r && recorded.has(`${r.scope}\u0000${r.key}`));
  }

  private async completeMany(results: Completion[]): Promise<void> {
    await statement(this.pool, {
      name: 'gw-idem-done-many',
      text: `UPDATE idempotency_keys i SET state = 'done', status = r.status, body = r.body
             FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::uuid[]) AS r(s, k, status, body, t)
             WHERE i.merchant_id = r.s AND i.key = r.k AND i.lock_token = r.t AND i.state = 'in_flight'`,
      values: [results.map((r) => r.scope), results.map((r) => r.key), results.map((r) => r.status), results.map((r) => r.body), results.map((r) => r.lockToken)],
    });
  }

  async begin(scope: string, key: string, fingerprint: string): Promise<Begin> {
    // A new key (the common case) is recorded with the other new keys of the moment; a key seen before is
    // read and decided in a transaction of its own.
    const lockToken = randomUUID();
    if (await this.inserts.add({ scope, key, fingerprint, lockToken })) return { kind: 'proceed', lockToken };
    return withTransaction(this.pool, async (client) => {
      const r = await client.query({
        name: 'gw-idem-read',
        text: `SELECT fingerprint, state, status, body,
                 locked_at < now() - ($3::INT8 * INTERVAL '1 millisecond') AS stale,
                 created_at < now() - ($4::INT8 * INTERVAL '1 hour') AS expired
               FROM idempotency_keys WHERE merchant_id = $1 AND key = $2`,
        values: [scope, key, this.lockTimeoutMs, this.ttlHours],
      });
      const row = r.rows[0];
      if (!row) throw new AppError('unavailable', 'idempotency_key_in_use', 'The idempotency key changed concurrently; retry', { retryAfterSeconds: 1 });
      if (row.expired || (row.state === 'in_flight' && row.stale && row.fingerprint === fingerprint)) {
        // An expired key starts afresh; a stale lock belonged to a gateway that died: take the key over.
        await client.query({
          name: 'gw-idem-take',
          text: `UPDATE idempotency_keys SET fingerprint = $3, state = 'in_flight', status = NULL, body = NULL, locked_at = now(), lock_token = $5,
                   created_at = CASE WHEN created_at < now() - ($4::INT8 * INTERVAL '1 hour') THEN now() ELSE created_at END
                 WHERE merchant_id = $1 AND key = $2`,
          values: [scope, key, fingerprint, this.ttlHours, lockToken],
        });
        return { kind: 'proceed', lockToken };
      }
      if (row.fingerprint !== fingerprint) {
        throw new AppError('conflict', 'idempotency_key_reused', 'Keys for idempotent requests can only be used with the same parameters they were first used with', { field: 'Idempotency-Key' });
      }
      if (row.state === 'in_flight') {
        throw new AppError('conflict', 'idempotency_key_in_use', 'A request with this idempotency key is still being processed; retry later', { retryAfterSeconds: 1 });
      }
      return { kind: 'replay', status: row.status, body: row.body };
    });
  }

  /**
   * Records the answer inside the caller's transaction, so that it commits with the effect it describes: a retry
   * after a crash or a lost reply finds the answer instead of making the effect again.
   */
  async completeWithin(client: PoolClient, held: HeldKey, status: number, body: string): Promise<void> {
    await client.query({
      name: 'gw-idem-done',
      text: `UPDATE idempotency_keys SET state = 'done', status = $3, body = $4 WHERE merchant_id = $1 AND key = $2 AND lock_token = $5 AND state = 'in_flight'`,
      values: [held.scope, held.key, status, body, held.lockToken],
    });
  }

  /** Records the answer of the request holding the key (nothing if the key was taken over meanwhile). */
  async complete(held: HeldKey, status: number, body: string): Promise<void> {
    await this.completions.add({ ...held, status, body });
  }

  /** Forgets a key whose request failed in a retryable way (5xx, 429): the retry runs again. */
  async release(held: HeldKey): Promise<void> {
    await statement(this.pool, {
      name: 'gw-idem-release',
      text: `DELETE FROM idempotency_keys WHERE merchant_id = $1 AND key = $2 AND lock_token = $3 AND state = 'in_flight'`,
      values: [held.scope, held.key, held.lockToken],
    });
  }

  /** Deletes every key past the TTL, `rowsPerStatement` at a time; returns how many. */
  async deleteExpired(rowsPerStatement = 10_000): Promise<number> {
    return deleteInChunks(
      this.pool,
      {
        name: 'gw-idem-expire',
        text: `DELETE FROM idempotency_keys WHERE (merchant_id, key) IN (
                 SELECT merchant_id, key FROM idempotency_keys WHERE created_at < now() - ($1::INT8 * INTERVAL '1 hour') ORDER BY created_at LIMIT $2)`,
        values: [this.ttlHours],
      },
      rowsPerStatement,
    );
  }
}
