import type { Config } from '../lib/config.js';
import type { Pool } from '../lib/db.js';
import { AppError, ValidationError } from '../lib/errors.js';
import { unary } from '../lib/grpc.js';
import type { Logger } from '../lib/logger.js';
import { parseId } from '../ledger/validation.js';
import { BatchStatus, type SettlementBatch, type SettlementServiceServer } from '../proto/gen/settlement/v1/settlement.js';
import { payoutInitiationXml } from './payout-file.js';
import { reconcileBatch } from './reconcile.js';
import { batchReportCsv } from './report.js';
import type { SettlementLedger, Settler } from './settler.js';
import * as store from './store.js';

/** settlement.v1.SettlementService: validation and conversion around the settler, reports and reconciliation. */
export function createSettlementService(pool: Pool, ledger: SettlementLedger, settler: Settler, config: Config, logger: Logger): SettlementServiceServer {
  /** The batch, or not_found, also when it belongs to another merchant than a given one. */
  const batchFor = async (batchId: string, merchantId: string): Promise<store.Batch> => {
    const batch = await store.findBatch(pool, parseId(batchId, 'batch_id'));
    if (!batch || (merchantId && batch.merchantId !== parseId(merchantId, 'merchant_id'))) throw new AppError('not_found', 'settlement_not_found', 'no such settlement batch', { field: 'batch_id' });
    return batch;
  };

  return {
    closeWindow: unary(logger, 'CloseWindow', async (request) => {
      if (!/^[A-Z]{3}$/.test(request.currency)) throw new ValidationError('currency', 'expected an ISO 4217 code such as USD', 'invalid_currency');
      const batches = await settler.closeNow(parseId(request.merchantId, 'merchant_id'), request.currency);
      return { batches: batches.map(batchToProto) };
    }),

    getBatch: unary(logger, 'GetBatch', async (request) => ({ batch: batchToProto(await batchFor(request.id, request.merchantId)) })),

    listBatches: unary(logger, 'ListBatches', async (request) => {
      if (request.limit > 100) throw new ValidationError('limit', 'at most 100');
      const merchantId = parseId(request.merchantId, 'merchant_id');
      if (request.startingAfter && request.endingBefore) throw new ValidationError('ending_before', 'give starting_after or ending_before, not both');
      const cursor = request.startingAfter || request.endingBefore;
      const anchor = cursor ? await batchFor(cursor, merchantId) : null;
      const page = await store.listBatches(pool, merchantId, request.limit || 10, anchor, request.endingBefore !== '');
      return { batches: page.batches.map(batchToProto), hasMore: page.hasMore };
    }),

    getReport: unary(logger, 'GetReport', async (request) => {
      const batch = await batchFor(request.batchId, request.merchantId);
      return { csv: batchReportCsv(batch, await store.batchEntries(pool, batch.id)) };
    }),

    getPayoutFile: unary(logger, 'GetPayoutFile', async (request) => {
      const batch = await batchFor(request.batchId, request.merchantId);
      const profile = await store.findProfile(pool, batch.merchantId);
      const debtor = { name: config.SETTLEMENT_DEBTOR_NAME, iban: config.SETTLEMENT_DEBTOR_IBAN, bic: config.SETTLEMENT_DEBTOR_BIC };
      return { xml: payoutInitiationXml(batch, debtor, profile?.payout ?? null, new Date()), messageId: batch.id.replaceAll('-', '') };
    }),

    reconcile: unary(logger, 'Reconcile', async (request) => {
      const r = await reconcileBatch(pool, ledger, await batchFor(request.batchId, request.merchantId));
      return {
        batch: batchToProto(r.batch),
        discrepancies: r.discrepancies.map((d) => ({ kind: d.kind, detail: d.detail, ids: d.ids, expected: d.expected, actual: d.actual })),
        linesChecked: r.linesChecked,
        ledgerTransfersChecked: r.ledgerTransfersChecked,
        eventsChecked: r.eventsChecked,
      };
    }),
  };
}

const STATUS: Record<store.BatchStatus, BatchStatus> = {
  payout_pending: BatchStatus.BATCH_STATUS_PAYOUT_PENDING,
  paid: BatchStatus.BATCH_STATUS_PAID,
  payout_failed: BatchStatus.BATCH_STATUS_PAYOUT_FAILED,
};

/** Due but not paid for lack of balance: when the batch was made, or when its payout moved less than decided. */
function shortfallOf(b: store.Batch): bigint {
  const unpaid = b.carriedOut + b.payoutShort - b.heldForDebt;
  return unpaid > 0n ? unpaid : 0n;
}

export function batchToProto(b: store.Batch): SettlementBatch {
  return {
    id: b.id,
    merchantId: b.merchantId,
    accountId: b.accountId,
    currency: b.currency,
    grossCaptured: b.grossCaptured,
    refunds: b.refunds,
    fees: b.fees,
    net: b.net,
    carriedIn: b.carriedIn,
    carriedOut: b.carriedOut,
    available: b.available,
    payout: store.movedPayout(b),
    shortfall: shortfallOf(b),
    heldForDebt: b.heldForDebt,
    payoutShort: b.payoutShort,
    windowStart: b.windowStart,
    windowEnd: b.windowEnd,
    payoutTransferId: b.payoutTransferId,
    lineCount: b.lineCount,
    status: STATUS[b.status],
    failureCode: b.failureCode ?? '',
  };
}
