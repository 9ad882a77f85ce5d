import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'mocha';
import { REPORT_COLUMNS, batchReportCsv } from './report.js';
import type { Batch, Entry } from './store.js';

describe('settlement report (CSV)', () => {
  it('is RFC 4180: every record, the header included, ends with CRLF', () => {
    const batch: Batch = {
      id: randomUUID(), merchantId: randomUUID(), accountId: randomUUID(), currency: 'JPY', windowStart: 1_764_000_000_000_000_000n, windowEnd: 1_764_086_400_000_000_000n,
      grossCaptured: 1_000n, refunds: 0n, fees: 10n, lineCount: 2, net: 990n, carriedIn: 0n, available: 990n, payout: 990n, carriedOut: 0n, heldForDebt: 0n, payoutShort: 0n,
      payoutTransferId: randomUUID(), status: 'paid', failureCode: null,
    };
    const line = (kind: Entry['kind'], amount: bigint): Entry => ({ transferId: randomUUID(), kind, amount, paymentId: randomUUID(), eventId: randomUUID(), occurredAt: batch.windowStart + 1n, effectiveAt: batch.windowStart + 1n });
    const csv = batchReportCsv(batch, [line('capture', 1_000n), line('fee', 10n)]);
    const records = csv.split('\r\n');
    assert.equal(records.pop(), '', 'the last record ends with CRLF too');
    assert.equal(records.length, 1 + 2 + 8, 'header, two lines, eight totals');
    assert.equal(records[0], REPORT_COLUMNS.join(','));
    assert.ok(records.every((r) => !r.includes('\n')), 'no bare LF');
    // JPY has no minor unit: major units are the amount itself.
    assert.deepEqual(records[2]!.split(',').slice(6, 8), ['-10', '-10']);
  });
});
