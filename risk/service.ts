import { currencyOf } from '../lib/currency.js';
import { ValidationError } from '../lib/errors.js';
import { unary } from '../lib/grpc.js';
import type { Logger } from '../lib/logger.js';
import type { RiskServiceServer, ScoreRequest, ScoreResponse } from '../proto/gen/risk/v1/risk.js';
import { parseId } from '../ledger/validation.js';
import { CARD_TYPES, isCardTypeOrNone } from '../lib/card-types.js';

/** The rules-only scorer or a trained model with its online features. */
export interface Scorer {
  score(request: ScoreRequest, nowMs?: number): ScoreResponse;
}

/** risk.v1.RiskService over a scorer; the input is validated like every other gRPC boundary. */
export function createRiskService(scorer: Scorer, logger: Logger): RiskServiceServer {
  return {
    score: unary(logger, 'Score', async (request) => scorer.score(parseScoreRequest(request))),
    scoreBatch: unary(logger, 'ScoreBatch', async (request) => {
      if (request.requests.length === 0 || request.requests.length > MAX_BATCH) throw new ValidationError('requests', `1-${MAX_BATCH} requests`);
      // Every request is checked before any is scored: a malformed batch changes no velocity count.
      const parsed = request.requests.map((r, i) => {
        try {
          return parseScoreRequest(r);
        } catch (error) {
          if (error instanceof ValidationError && error.details.field) throw new ValidationError(`requests.${i}.${error.details.field}`, error.message);
          throw error;
        }
      });
      return { responses: parsed.map((r) => scorer.score(r)) };
    }),
  };
}

const MAX_BATCH = 1_000;

const COUNTRY = /^[A-Z]{2}$/;

function parseScoreRequest(r: ScoreRequest): ScoreRequest {
  if (r.amount <= 0n) throw new ValidationError('amount', 'must be a positive integer of minor units');
  currencyOf(r.currency);
  for (const [field, value] of [
    ['card_country', r.cardCountry],
    ['ip_country', r.ipCountry],
  ] as const) {
    if (value !== '' && !COUNTRY.test(value)) throw new ValidationError(field, 'an ISO 3166-1 alpha-2 code');
  }
  for (const [field, value] of [
    ['customer_id', r.customerId],
    ['card_fingerprint', r.cardFingerprint],
    ['device_id', r.deviceId],
    ['merchant_category', r.merchantCategory],
  ] as const) {
    if (value.length > 200) throw new ValidationError(field, 'at most 200 characters');
  }
  // A label of the decision metrics: only the known kinds (an open set would grow the series without bound).
  if (!isCardTypeOrNone(r.cardType)) throw new ValidationError('card_type', CARD_TYPES.join(', '));
  return { ...r, merchantId: parseId(r.merchantId, 'merchant_id'), paymentId: parseId(r.paymentId, 'payment_id', { optional: true }) };
}
