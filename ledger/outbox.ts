import { randomInt, randomUUID } from 'node:crypto';
import { EventBatch, type EventEnvelope } from '../proto/gen/events/v1/events.js';
import type { Queryable } from '../lib/db.js';
import { invariant } from '../lib/errors.js';
import { metadataSizeBound } from './encoded-size.js';
import type { LedgerEvent } from './engine.js';

/** Events per message at most: 2,048 transfer events without metadata encode to about 400 KB. */
export const EVENTS_PER_MESSAGE = 2048;

/**
 * Encoded bytes per message at most. NATS refuses a message beyond its max_payload (1 MiB by default, headers
 * included), and the relay would retry that row for ever, holding up its shard: transfers with metadata at its
 * limits (16 entries of up to 64 + 512 characters, about 28 KB) pass 1 MiB at about 40 events.
 */
export const MAX_MESSAGE_BYTES = 960 * 1024;

/**
 * The max_payload a NATS server must allow for the relay: a message of MAX_MESSAGE_BYTES and its headers (id and
 * traceparent, about 140 bytes), with room for a consumer's dead letter of it (its reason and origin headers, up to
 * about 1.1 KB: lib/consumer.ts). 1 MiB, NATS's default, leaves more.
 */
export const NATS_PAYLOAD_NEEDED = MAX_MESSAGE_BYTES + 4096;

/**
 * An upper bound of one event's encoded size inside an EventBatch, besides its traceparent and metadata: every
 * field of the envelope and of a transfer at its longest (ids of 36 characters, varints of 10 bytes), tags and
 * lengths included (about 310 bytes).
 */
const EVENT_FIXED_BYTES = 320;

function encodedEventBound(e: LedgerEvent, traceparent: string): number {
  return EVENT_FIXED_BYTES + traceparent.length + (e.transfer ? metadataSizeBound(e.transfer.metadata) : 0);
}

/** One outbox row's message: its encoded EventBatch and how many events it holds. */
export interface OutboxPart {
  payload: Uint8Array;
  events: number;
}

/**
 * Payment events share the outbox and its relay: they are written under outbox shard
 * PAYMENT_OUTBOX_SHARD_BASE + (the payment's ledger shard), published by the instance owning that ledger shard.
 * Ledger shards stay below 4,096 (lib/config.ts), so the two ranges never meet.
 */
export const PAYMENT_OUTBOX_SHARD_BASE = 10_000;

/** Settlement's events (settlement.batch.created) are written under this outbox shard and relayed by settlement. */
export const SETTLEMENT_OUTBOX_SHARD = 20_000;

let lastSequence = 0n;

/**
 * The sequence of an outbox row written outside a ledger batch (payment steps, settlement batches): it orders
 * the relay's reads of a shard and need not be dense. Microseconds since the epoch times 1,024 plus a random
 * tail, so writers in different processes share no counter row and rarely a value (a collision is a unique
 * violation: the writing transaction retries); strictly increasing within this process, so rows written here
 * never collide and keep their order, however many are written in one microsecond.
 */
export function nextOutboxSequence(): bigint {
  // The wall clock's milliseconds (processes agree on them), the monotonic clock's fraction for the microseconds.
  const micros = BigInt(Date.now()) * 1_000n + BigInt(Math.floor((performance.now() % 1) * 1_000));
  const candidate = micros * 1_024n + BigInt(randomInt(1_024));
  lastSequence = candidate > lastSequence ? candidate : lastSequence + 1n;
  return lastSequence;
}

/** The outbox shards whose rows an instance owning `ledgerShards` publishes. */
export function relayedOutboxShards(ledgerShards: readonly number[]): number[] {
  return [...ledgerShards, ...ledgerShards.map((s) => PAYMENT_OUTBOX_SHARD_BASE + s)];
}

/**
 * Outbox shards of ledger shards that no longer exist (LEDGER_SHARDS was lowered) and still hold rows that
 * were committed but not yet published: each is published by the instance owning ledger shard (its number mod
 * the shard count), so that exactly one relay takes it. The relay asks again every few seconds: during a
 * rolling change, instances with the old count still write there.
 */
export async function leftoverOutboxShards(db: Queryable, shardCount: number, ownedShards: readonly number[]): Promise<number[]> {
  const r = await db.query(
    `SELECT DISTINCT shard FROM outbox WHERE (shard >= $1 AND shard < $2) OR (shard >= $2 + $1 AND shard < $3)`,
    [shardCount, PAYMENT_OUTBOX_SHARD_BASE, SETTLEMENT_OUTBOX_SHARD],
  );
  return r.rows.map((row) => row.shard as number).filter((shard) => ownedShards.includes((shard % PAYMENT_OUTBOX_SHARD_BASE) % shardCount));
}

/** The subject an outbox shard's events are published on (under EVENTS_SUBJECT_PREFIX). */
export function outboxSubject(prefix: string, outboxShard: number): string {
  if (outboxShard === SETTLEMENT_OUTBOX_SHARD) return `${prefix}.settlement`;
  return outboxShard >= PAYMENT_OUTBOX_SHARD_BASE ? `${prefix}.payments.${outboxShard - PAYMENT_OUTBOX_SHARD_BASE}` : `${prefix}.ledger.${outboxShard}`;
}

/** The JetStream dedupe id (Nats-Msg-Id) of one part of a batch's events. */
export function outboxMessageId(batchId: string, part: number): string {
  return `${batchId}.${part}`;
}

/**
 * Packs the events of one committed ledger batch into events.v1.EventBatch messages of at most
 * EVENTS_PER_MESSAGE events and MAX_MESSAGE_BYTES: one outbox row and one NATS message each.
 */
export function encodeEventBatch(batchId: string, shard: number, events: readonly LedgerEvent[], traceparent = ''): OutboxPart[] {
  const parts: OutboxPart[] = [];
  const pack = (start: number, end: number) => {
    const payload = EventBatch.encode({ batchId, shard, events: events.slice(start, end).map((e) => toEnvelope(e, traceparent)) }).finish();
    invariant(payload.byteLength <= MAX_MESSAGE_BYTES, `outbox part of ${end - start} events encodes to ${payload.byteLength} bytes, beyond ${MAX_MESSAGE_BYTES}`);
    parts.push({ payload, events: end - start });
  };
  // The batch's own fields and the rest of the envelope's room.
  const room = MAX_MESSAGE_BYTES - 128 - batchId.length;
  let start = 0;
  let bytes = 0;
  for (let i = 0; i < events.length; i++) {
    const size = encodedEventBound(events[i]!, traceparent);
    if (i > start && (i - start >= EVENTS_PER_MESSAGE || bytes + size > room)) {
      pack(start, i);
      start = i;
      bytes = 0;
    }
    bytes += size;
  }
  if (events.length > start) pack(start, events.length);
  return parts;
}

function toEnvelope(e: LedgerEvent, traceparent: string): EventEnvelope {
  return {
    eventId: randomUUID(),
    type: e.type,
    aggregateId: e.aggregateId,
    sequence: BigInt(e.sequence),
    occurredAt: e.timestamp,
    traceparent,
    payload: e.account
      ? { $case: 'account', value: { accountId: e.account.id, ledger: e.account.ledger, code: e.account.code } }
      : e.transfer
        ? {
            $case: 'transfer',
            value: {
              transferId: e.transfer.id,
              debitAccountId: e.transfer.debitAccountId,
              creditAccountId: e.transfer.creditAccountId,
              amount: e.transfer.amount,
              ledger: e.transfer.ledger,
              code: e.transfer.code,
              pendingId: e.transfer.pendingId,
              metadata: e.transfer.metadata,
            },
          }
        : undefined,
  };
}
