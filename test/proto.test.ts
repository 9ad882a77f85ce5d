import { strict as assert } from 'node:assert';
import { Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { EventBatch } from '../proto/gen/events/v1/events.js';

describe('protobuf generated code', () => {
  it('keeps 64-bit amounts exact above 2^53', () => {
    const amount = 2n ** 63n + 12345n; // not representable as a JS number
    const max = 2n ** 64n - 1n;
    const transfer = Transfer.fromPartial({ id: 'f3a7c1de-0000-4000-8000-000000000001', amount, timestamp: max, ledger: 840, code: 1, metadata: { order: '42' } });
    const decoded = Transfer.decode(Transfer.encode(transfer).finish());
    assert.equal(typeof decoded.amount, 'bigint');
    assert.equal(decoded.amount, amount);
    assert.equal(decoded.timestamp, max);
    assert.deepEqual(decoded.metadata, { order: '42' });
  });

  it('round-trips an event batch with a oneof payload', () => {
    const batch = EventBatch.fromPartial({
      batchId: 'b',
      shard: 7,
      events: [{ eventId: 'e1', type: 'ledger.transfer.posted', sequence: 9007199254740993n, payload: { $case: 'transfer', value: { transferId: 't', amount: 9007199254740993n } } }],
    });
    const decoded = EventBatch.decode(EventBatch.encode(batch).finish());
    assert.equal(decoded.events[0]?.sequence, 9007199254740993n);
    const payload = decoded.events[0]?.payload;
    assert.equal(payload?.$case, 'transfer');
    assert.equal(payload?.$case === 'transfer' ? payload.value.amount : 0n, 9007199254740993n);
  });
});
