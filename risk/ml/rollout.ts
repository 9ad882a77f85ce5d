import { createHash, randomUUID } from 'node:crypto';
import type { Logger } from '../../lib/logger.js';
import { traceparentOf } from '../../observability/tracing.js';
import { EventBatch } from '../../proto/gen/events/v1/events.js';
import { Decision, type ScoreRequest, type ScoreResponse } from '../../proto/gen/risk/v1/risk.js';
import type { Scorer } from '../service.js';

/**
 * Champion/challenger: the champion decides, the challenger is scored beside it on every request and, in split
 * mode, decides for a stable share of customers (hash of the customer id, else the card, else the payment id).
 * Every decision is published as a risk.decision event with both scores, for comparing the models on the same
 * traffic. Publishing is best effort: a decision is never held back because NATS is slow or down.
 */

export type RolloutMode = 'split' | 'shadow';

/** 0-99 from a stable key: the same customer always lands in the same bucket. */
export function bucketOf(key: string): number {
  return createHash('sha256').update(key).digest().readUInt32BE(0) % 100;
}

/**
 * The bucket of a request in the trial of challenger `challengerVersion`: salted with the version, so that each
 * trial draws its own customers. Unsalted, every trial gave its share to the same customers, and each challenger was
 * judged on the customers the last one had decided for (their fraud and approvals shaped by it), not a fresh sample.
 */
export function trialBucketOf(challengerVersion: string, r: ScoreRequest): number {
  return bucketOf(`${challengerVersion}|${assignmentKey(r)}`);
}

export function assignmentKey(r: ScoreRequest): string {
  return r.customerId !== '' ? `${r.merchantId}:${r.customerId}` : r.cardFingerprint !== '' ? `card:${r.cardFingerprint}` : `payment:${r.paymentId}`;
}

/** `traceparent`: of the Score call that decided ('' untraced), for the message's header as the relay sets it. */
export type DecisionPublisher = (subject: string, payload: Uint8Array, msgId: string, traceparent: string) => void;

const DECISION_NAMES: Record<number, string> = { [Decision.DECISION_APPROVE]: 'approve', [Decision.DECISION_REVIEW]: 'review', [Decision.DECISION_DECLINE]: 'decline' };

export class ChampionChallenger implements Scorer {
  constructor(
    private readonly champion: Scorer,
    private readonly challenger: Scorer,
    private readonly mode: RolloutMode,
    private readonly percent: number,
    private readonly publish: DecisionPublisher,
    private readonly subject: string,
    private readonly logger: Logger,
  ) {}

  score(request: ScoreRequest, nowMs = Date.now()): ScoreResponse {
    const champion = this.champion.score(request, nowMs);
    // A challenger under trial must not cost a payment its decision: one that fails to score (a model error) is
    // left out, and the champion decides, in shadow mode and for the challenger's share in split mode alike.
    let challenger: ScoreResponse | undefined;
    try {
      challenger = this.challenger.score(request, nowMs);
    } catch (err) {
      this.logger.warn({ err, paymentId: request.paymentId }, 'challenger did not score; the champion decides');
    }
    const variant = challenger && this.mode === 'split' && trialBucketOf(challenger.modelVersion, request) < this.percent ? 'challenger' : 'champion';
    const chosen = variant === 'challenger' && challenger ? challenger : champion;
    try {
      const eventId = randomUUID();
      // In the trace of the Score call (as payment events are in their operation's): a consumer continues it.
      const traceparent = traceparentOf();
      const payload = EventBatch.encode({
        batchId: eventId,
        shard: 0,
        events: [
          {
            eventId,
            type: 'risk.decision',
            aggregateId: request.paymentId,
            sequence: 1n,
            occurredAt: BigInt(nowMs) * 1_000_000n,
            traceparent,
            payload: {
              $case: 'riskDecision',
              value: {
                paymentId: request.paymentId,
                merchantId: request.merchantId,
                variant,
                mode: this.mode,
                decision: DECISION_NAMES[chosen.decision] ?? 'approve',
                championScorePpm: champion.scorePpm,
                championVersion: champion.modelVersion,
                // An empty version: the challenger did not score this payment (its score is no score then).
                challengerScorePpm: challenger?.scorePpm ?? 0,
                challengerVersion: challenger?.modelVersion ?? '',
                amount: request.amount,
                currency: request.currency,
              },
            },
          },
        ],
      }).finish();
      this.publish(this.subject, payload, eventId, traceparent);
    } catch (err) {
      this.logger.warn({ err }, 'risk decision event not published');
    }
    return chosen;
  }
}
