import { ValidationError, type AppError } from '../../lib/errors.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A path id: a UUID (lower-cased), or "no such object" (an id we never issue cannot name anything). */
export function objectId(raw: string, notFound: (field: string) => AppError): string {
  const id = raw.toLowerCase();
  if (!UUID.test(id)) throw notFound('id');
  return id;
}

/**
 * An id a client chose for a new account or transfer. Version 8 UUIDs are the ids the platform derives itself
 * (lib/derived-id.ts: platform accounts, merchants' balance accounts, payment transfers): anyone can compute
 * them, so a client that could create one would take an account or transfer meant for the platform or another
 * merchant (the ledger answers `exists` to the rightful creator, or refuses it with `exists_with_different_fields`).
 */
export function refuseReservedId(id: string, field: string): void {
  // The version is the first digit of the third group (after any "urn:uuid:" prefix the uuid format allows).
  if (id.slice(-36)[14] === '8') throw new ValidationError(field, 'version 8 UUIDs are reserved for ids the platform derives; use a version 4 or 7 UUID', 'id_reserved');
}
