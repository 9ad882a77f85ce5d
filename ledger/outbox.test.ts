import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { randomUUID } from 'node:crypto';
import { EventBatch } from '../proto/gen/events/v1/events.js';
import type { LedgerEvent } from './engine.js';
import { EVENTS_PER_MESSAGE, MAX_MESSAGE_BYTES, encodeEventBatch, nextOutboxSequence } from './outbox.js';

describe('outbox sequences of payment and settlement rows', () => {
  it('strictly increase within a process, even for thousands written in one millisecond, and follow the clock in microseconds', () => {
    const before = BigInt(Date.now()) * 1_000n * 1_024n;
    const sequences = Array.from({ length: 20_000 }, () => nextOutboxSequence());
    const after = BigInt(Date.now() + 1) * 1_000n * 1_024n;
    // A group commit writes many rows at once: equal sequences would be unique violations, and a retry of all.
    for (let i = 1; i < sequences.length; i++) assert.ok(sequences[i]! > sequences[i - 1]!, `sequence ${i} is above the one before`);
    // Within a second of the wall clock (the process's monotonic clock may drift from it a little).
    const second = 1_000_000n * 1_024n;
    assert.ok(sequences[0]! >= before - second && sequences.at(-1)! <= after + second, 'microseconds since the epoch times 1,024');
  });
});

describe('outbox parts of a ledger batch (encodeEventBatch)', () => {
  const traceparent = `00-${'a'.repeat(32)}-${'b'.repeat(16)}-01`;
  const posted = (metadata: Record<string, string>, i: number): LedgerEvent => {
    const id = randomUUID();
    const t = { id, debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 2n ** 63n - 1n, pendingId: randomUUID(), ledger: 4_294_967_295, code: 4_294_967_295 };
    return { type: 'ledger.transfer.voided', aggregateId: id, sequence: 2, timestamp: 2n ** 63n + BigInt(i), transfer: { ...t, flags: 0, timeout: 0, metadata, timestamp: 0n } };
  };
  const decoded = (parts: ReturnType<typeof encodeEventBatch>) => parts.flatMap((p) => EventBatch.decode(p.payload).events);

  it('keeps every part within MAX_MESSAGE_BYTES when the events carry metadata at its limits, all events in order', () => {
    const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`${i}`.padEnd(64, 'k'), '€'.repeat(512)]));
    const events = Array.from({ length: 300 }, (_, i) => posted(metadata, i));
    const parts = encodeEventBatch(randomUUID(), 3, events, traceparent);
    for (const p of parts) assert.ok(p.payload.byteLength <= MAX_MESSAGE_BYTES, `a part of ${p.payload.byteLength} bytes`);
    assert.ok(parts.length >= 8, `${parts.length} parts for about 8 MB`);
    assert.equal(parts.reduce((n, p) => n + p.events, 0), 300);
    assert.deepEqual(decoded(parts).map((e) => e.occurredAt), events.map((e) => e.timestamp));
  });

  it('packs events without metadata EVENTS_PER_MESSAGE a part, as before', () => {
    const parts = encodeEventBatch(randomUUID(), 3, Array.from({ length: 8190 }, (_, i) => posted({}, i)), traceparent);
    assert.deepEqual(parts.map((p) => p.events), [EVENTS_PER_MESSAGE, EVENTS_PER_MESSAGE, EVENTS_PER_MESSAGE, 8190 - 3 * EVENTS_PER_MESSAGE]);
    assert.equal(decoded(parts).length, 8190);
  });
});
