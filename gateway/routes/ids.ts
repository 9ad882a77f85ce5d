import type { FastifyRequest } from 'fastify';
import { randomUUID } from 'node:crypto';
import { derivedId } from '../../lib/derived-id.js';
import { ValidationError, type AppError } from '../../lib/errors.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const NIL_UUID = '00000000-0000-0000-0000-000000000000';

/**
 * A path id: a UUID (lower-cased), or "no such object" (an id we never issue cannot name anything: the nil UUID
 * neither, which the backends refuse as an argument, 400, instead of not finding it).
 */
export function objectId(raw: string, notFound: (field: string) => AppError): string {
  const id = raw.toLowerCase();
  if (!UUID.test(id) || id === NIL_UUID) throw notFound('id');
  return id;
}

/**
 * An id a client chose for a new account or transfer. Version 8 UUIDs are the ids the platform derives itself
 * (lib/derived-id.ts: platform accounts, merchants' balance accounts, payment transfers): anyone can compute
 * them, so a client that could create one would take an account or transfer meant for the platform or another
 * merchant (the ledger answers `exists` to the rightful creator, or refuses it with `exists_with_different_fields`).
 */
export function refuseReservedId(id: string, field: string): void {
  // The version is the first digit of the third group.
  if (id[14] === '8') throw new ValidationError(field, 'version 8 UUIDs are reserved for ids the platform derives; use a version 4 or 7 UUID', 'id_reserved');
}

/**
 * The id of a ledger object (account or transfer; `index` for a batch item) that a POST creates without naming
 * one. With an Idempotency-Key it derives from the merchant, the key and the request, so every attempt of one
 * request names the same object: a retry after an answer that was lost or a 5xx (the gateway forgets those
 * keys so the retry runs again) although the ledger committed is answered `exists` (200 with the object of the
 * first attempt) instead of creating a second one. Without a key every attempt is a new object (random id),
 * as before: the client asked for no deduplication.
 *
 * The request's fingerprint (method, path, canonical body: equal for every attempt the key store lets through)
 * is part of the name because of the key's 24h TTL: the same key with the same parameters after the TTL still
 * names the first object (a very late retry of an unknown outcome must not post twice; it gets that object
 * back, 200), while the same key with other parameters after the TTL is a new request (a new object, as the
 * key store treats it), not a clash with the first one.
 */
export function createdObjectId(request: FastifyRequest, merchantId: string, kind: 'account' | 'transfer', index?: number): string {
  const key = request.idempotency?.key;
  if (key === undefined || !request.fingerprint) return randomUUID();
  // Merchant ids are UUIDs and indexes digits, fingerprints hex, and keys have no control characters: the
  // separators cannot be forged.
  return derivedId(`rest-${kind}:${merchantId}${index === undefined ? '' : `:${index}`}`, `${request.fingerprint}\u0001${key}`);
}
