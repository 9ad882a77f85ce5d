import type { AppError } from '../../lib/errors.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** A path id: a UUID (lower-cased), or "no such object" (an id we never issue cannot name anything). */
export function objectId(raw: string, notFound: (field: string) => AppError): string {
  const id = raw.toLowerCase();
  if (!UUID.test(id)) throw notFound('id');
  return id;
}
