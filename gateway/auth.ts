import { createHash, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import type { PoolClient } from 'pg';
import { withTransaction, type Pool } from '../lib/db.js';
import { AppError, ValidationError } from '../lib/errors.js';
import { hasControlCharacters, parseId } from '../ledger/validation.js';
import { MERCHANT_CATEGORIES } from '../lib/merchant-categories.js';

/** Who is calling: a merchant (by one of its secret keys) or the platform admin (ADMIN_API_KEY). */
export type Caller = { kind: 'merchant'; merchantId: string; keyPrefix: string } | { kind: 'admin' };

/** The platform admin's scope for idempotency keys (no merchant has the nil UUID). */
export const ADMIN_SCOPE = '00000000-0000-0000-0000-000000000000';

export function hashKey(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** A new secret key: 32 random bytes, so a plain SHA-256 of it is safe to store. Shown once. */
export function newSecretKey(): string {
  return `sk_${randomBytes(32).toString('base64url')}`;
}

/** The part of a key that may appear in logs and listings. */
export function keyPrefix(key: string): string {
  return key.slice(0, 7);
}

const unauthenticated = (message: string) => new AppError('unauthenticated', 'invalid_api_key', message);

/**
 * Checks secret keys. A key's merchant is remembered for `cacheMs` (GATEWAY_AUTH_CACHE_MS), saving a database
 * round trip per request: a revoked key then stops working within that time on every instance.
 */
export class Authenticator {
  private readonly adminDigest: Buffer | undefined;
  private readonly known = new Map<string, { merchantId: string; until: number }>();

  constructor(
    private readonly pool: Pool,
    adminKey: string | undefined,
    private readonly cacheMs = 0,
  ) {
    this.adminDigest = adminKey ? createHash('sha256').update(adminKey).digest() : undefined;
  }

  /** The caller of an `Authorization: Bearer <key>` header; 401 for a missing, unknown or revoked key. */
  async authenticate(header: string | undefined): Promise<Caller> {
    const key = bearerKey(header);
    const digest = createHash('sha256').update(key).digest();
    // Constant time whatever the key: the admin key is compared digest to digest, merchant keys are looked up
    // by digest (an index lookup of a hash reveals nothing about the key).
    if (this.adminDigest && timingSafeEqual(digest, this.adminDigest)) return { kind: 'admin' };
    const hash = digest.toString('hex');
    const now = Date.now();
    const cached = this.known.get(hash);
    if (cached && cached.until > now) return { kind: 'merchant', merchantId: cached.merchantId, keyPrefix: keyPrefix(key) };
    const r = await this.pool.query({ name: 'gw-auth', text: 'SELECT merchant_id FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL', values: [hash] });
    if (!r.rows[0]) {
      this.known.delete(hash);
      throw unauthenticated('Invalid API key');
    }
    if (this.cacheMs > 0) {
      // Bounded: past 10,000 keys the oldest entry goes (Map keeps insertion order).
      if (this.known.size >= 10_000) this.known.delete(this.known.keys().next().value!);
      this.known.set(hash, { merchantId: r.rows[0].merchant_id, until: now + this.cacheMs });
    }
    return { kind: 'merchant', merchantId: r.rows[0].merchant_id, keyPrefix: keyPrefix(key) };
  }
}

export interface NewMerchant {
  id: string;
  object: 'merchant';
  name: string;
  secret_key: string;
}

/**
 * Creates a merchant and its first secret key in one transaction; `withinTransaction` runs in it too (the
 * gateway records its idempotent answer there).
 */
export async function createMerchant(pool: Pool, name: string, feeBps: number, category = 'general', withinTransaction?: (client: PoolClient, merchant: NewMerchant) => Promise<void>): Promise<NewMerchant> {
  const trimmed = name.trim();
  if (trimmed.length === 0 || trimmed.length > 200 || hasControlCharacters(trimmed)) throw new ValidationError('name', '1-200 printable characters');
  if (!(MERCHANT_CATEGORIES as readonly string[]).includes(category)) throw new ValidationError('category', `one of ${MERCHANT_CATEGORIES.join(', ')}`);
  const merchant: NewMerchant = { id: randomUUID(), object: 'merchant', name: trimmed, secret_key: newSecretKey() };
  await withTransaction(pool, async (client) => {
    await client.query('INSERT INTO merchants (id, name, fee_bps, category) VALUES ($1, $2, $3, $4)', [merchant.id, trimmed, feeBps, category]);
    await insertKey(client, merchant.id, merchant.secret_key);
    await withinTransaction?.(client, merchant);
  });
  return merchant;
}

async function insertKey(client: PoolClient, merchantId: string, key: string): Promise<void> {
  await client.query('INSERT INTO api_keys (key_hash, merchant_id, prefix) VALUES ($1, $2, $3)', [hashKey(key), merchantId, keyPrefix(key)]);
}

export interface NewKey {
  object: 'api_key';
  merchant: string;
  prefix: string;
  secret_key: string;
}

/**
 * Another secret key for an existing merchant (shown once), its other keys left working: how a key is rolled.
 * A merchant whose only key leaked could otherwise only revoke it and be left with none. Roll: create, move the
 * integration to the new key, then revoke the old one.
 */
export async function createKey(pool: Pool, merchant: string): Promise<NewKey> {
  const merchantId = parseId(merchant, 'merchant');
  const key = newSecretKey();
  await withTransaction(pool, async (client) => {
    const found = await client.query('SELECT 1 FROM merchants WHERE id = $1', [merchantId]);
    if (found.rowCount !== 1) throw new AppError('not_found', 'resource_missing', `No merchant ${merchantId}`);
    await insertKey(client, merchantId, key);
  });
  return { object: 'api_key', merchant: merchantId, prefix: keyPrefix(key), secret_key: key };
}

/** The key of an `Authorization: Bearer <key>` header; 401 when there is none. */
export function bearerKey(header: string | undefined): string {
  const match = /^Bearer (\S{1,200})$/.exec(header ?? '');
  if (!match) throw unauthenticated('Send your secret key as "Authorization: Bearer sk_..."');
  return match[1]!;
}

/** Revokes a key; false if no such active key. */
export async function revokeKey(pool: Pool, key: string): Promise<boolean> {
  const r = await withTransaction(pool, (client) => client.query('UPDATE api_keys SET revoked_at = now() WHERE key_hash = $1 AND revoked_at IS NULL', [hashKey(key)]));
  return r.rowCount === 1;
}
