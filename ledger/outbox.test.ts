import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { nextOutboxSequence } from './outbox.js';

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
