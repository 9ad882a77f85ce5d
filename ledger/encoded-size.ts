import type { Account, Transfer } from '../proto/gen/ledger/v1/ledger.js';

/**
 * Upper bounds of encoded protobuf sizes, without encoding: what keeps requests, replies and outbox messages under
 * the limits of gRPC (client.ts, service.ts) and NATS (outbox.ts). Strings count 3 bytes a UTF-16 unit at most.
 */

/** A metadata map's entries: key and value, with their tags and lengths. */
export function metadataSizeBound(metadata: Record<string, string>): number {
  let bytes = 0;
  for (const key in metadata) bytes += 16 + Buffer.byteLength(key) + Buffer.byteLength(metadata[key]!);
  return bytes;
}

/** A transfer: its ids, integers and flags, and its metadata. */
export function encodedSizeBound(t: Transfer): number {
  return 96 + 3 * (t.id.length + t.debitAccountId.length + t.creditAccountId.length + t.pendingId.length) + metadataSizeBound(t.metadata);
}

/** An account: its id, integers (four balances) and flags, and its metadata. */
export function encodedAccountSizeBound(a: Account): number {
  return 128 + 3 * a.id.length + metadataSizeBound(a.metadata);
}
