import { randomUUID } from 'node:crypto';
import { EventBatch, type EventEnvelope } from '../proto/gen/events/v1/events.js';
import type { LedgerEvent } from './engine.js';

/** Packs the events of one committed ledger batch into one events.v1.EventBatch (one outbox row, one message). */
export function encodeEventBatch(batchId: string, shard: number, events: readonly LedgerEvent[]): Uint8Array {
  const envelopes: EventEnvelope[] = events.map((e) => ({
    eventId: randomUUID(),
    type: e.type,
    aggregateId: e.aggregateId,
    sequence: BigInt(e.sequence),
    occurredAt: e.timestamp,
    traceparent: '',
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
  }));
  return EventBatch.encode({ batchId, shard, events: envelopes }).finish();
}
