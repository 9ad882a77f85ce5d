import { compareWithLimit } from '../lib/currency.js';
import { Decision, type ScoreRequest, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';

/**
 * The rules-only scorer: the baseline every model is compared against, and what scores payments until a
 * trained model is deployed. Each rule that fires adds its weight (parts per million) to the score, capped at
 * 1,000,000, so the score is monotone in the rules fired; reasons list the fired rules, heaviest first.
 */

export interface RulesSettings {
  /**
   * Single-payment amount above which `amount_above_limit` fires, in US cents: a payment in another currency is
   * compared by its approximate worth in cents (lib/currency.ts approximateUsdCents), unless its currency is named below.
   */
  maxAmount: bigint;
  /** The limit of the currencies named here instead (RISK_RULES_MAX_AMOUNT_BY_CURRENCY): minor units differ in worth. */
  maxAmountByCurrency?: ReadonlyMap<string, bigint>;
  /** More than this many payments in the window for one card, customer or device fires its velocity rule. */
  velocityMax: number;
  velocityWindowMs: number;
  declineThresholdPpm: number;
  reviewThresholdPpm: number;
  /** Keys (card, customer, device) tracked at once; the least recently seen are forgotten beyond it. */
  maxTrackedKeys?: number;
}

export const RULES_MODEL_VERSION = 'rules-v1';

/** Weights in parts per million: the amount limit alone declines, a velocity breach alone sends to review. */
export const RULE_WEIGHTS = {
  amount_above_limit: 850_000,
  card_velocity: 600_000,
  customer_velocity: 550_000,
  device_velocity: 500_000,
  country_mismatch: 300_000,
} as const;
export type RuleName = keyof typeof RULE_WEIGHTS;

/**
 * Sliding-window counts of recent payments per key, in memory with a bounded number of keys (a Map keeps
 * insertion order: re-inserting on use makes its first key the least recently used). Counts are per instance:
 * with several risk instances, a burst spread across them is seen partly by each.
 */
export class VelocityWindow {
  private readonly seen = new Map<string, number[]>();

  constructor(
    private readonly windowMs: number,
    private readonly maxKeys: number,
    /** Payments kept per key, the most recent: a count above it is reported as it (a burst costs no more). */
    private readonly maxCount = Number.POSITIVE_INFINITY,
  ) {}

  /**
   * Records one payment for `key` at `nowMs`; returns how many fall within the window, this one included (at
   * most `maxCount`).
   */
  record(key: string, nowMs: number): number {
    const since = nowMs - this.windowMs;
    const times = (this.seen.get(key) ?? []).filter((t) => t > since);
    times.push(nowMs);
    if (times.length > this.maxCount) times.splice(0, times.length - this.maxCount);
    this.seen.delete(key);
    this.seen.set(key, times);
    if (this.seen.size > this.maxKeys) this.seen.delete(this.seen.keys().next().value!);
    return times.length;
  }

  get trackedKeys(): number {
    return this.seen.size;
  }
}

export class RulesScorer {
  private readonly velocity: VelocityWindow;
  readonly version = RULES_MODEL_VERSION;

  constructor(private readonly settings: RulesSettings) {
    // A rule only asks whether a count exceeds velocityMax: one more than it is all a key needs to keep.
    this.velocity = new VelocityWindow(settings.velocityWindowMs, settings.maxTrackedKeys ?? 100_000, settings.velocityMax + 1);
  }

  score(request: ScoreRequest, nowMs = Date.now()): ScoreResponse {
    const fired: RuleName[] = [];
    if (compareWithLimit(request.amount, request.currency, this.settings.maxAmount, this.settings.maxAmountByCurrency) > 0) fired.push('amount_above_limit');
    // Every scored attempt counts, declined or not: card testing is a burst of attempts.
    // Cards and devices are counted across merchants (card testing hops between them); customer ids are the
    // merchant's own, so they are counted per merchant.
    const keys: [RuleName, string, string][] = [
      ['card_velocity', request.cardFingerprint, request.cardFingerprint],
      ['customer_velocity', request.customerId, `${request.merchantId}:${request.customerId}`],
      ['device_velocity', request.deviceId, request.deviceId],
    ];
    for (const [rule, given, key] of keys) {
      if (given !== '' && this.velocity.record(`${rule}:${key}`, nowMs) > this.settings.velocityMax) fired.push(rule);
    }
    if (request.cardCountry !== '' && request.ipCountry !== '' && request.cardCountry !== request.ipCountry) fired.push('country_mismatch');

    fired.sort((a, b) => RULE_WEIGHTS[b] - RULE_WEIGHTS[a]);
    const scorePpm = Math.min(1_000_000, fired.reduce((sum, rule) => sum + RULE_WEIGHTS[rule], 0));
    return { scorePpm, decision: this.decide(scorePpm), reasons: fired, modelVersion: RULES_MODEL_VERSION };
  }

  private decide(scorePpm: number): Decision {
    if (scorePpm >= this.settings.declineThresholdPpm) return Decision.DECISION_DECLINE;
    if (scorePpm >= this.settings.reviewThresholdPpm) return Decision.DECISION_REVIEW;
    return Decision.DECISION_APPROVE;
  }
}
