import { hash } from 'node:crypto';

/**
 * A UUID (version 8, RFC 9562 "custom") derived from a namespace and a name: the same inputs give the same id
 * on every instance and after every restart. Retrying a step whose ledger transfers have derived ids can
 * therefore never post twice: the ledger answers `exists`.
 */
export function derivedId(namespace: string, name: string): string {
  // The one-shot hash: half the cost of a Hash object, and payments derive several ids each.
  const h = hash('sha256', `${namespace}\u0000${name}`, 'buffer');
  h[6] = (h[6]! & 0x0f) | 0x80;
  h[8] = (h[8]! & 0x3f) | 0x80;
  const hex = h.subarray(0, 16).toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20, 32)}`;
}
