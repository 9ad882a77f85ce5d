import type { Meter } from '@opentelemetry/api';
import { Decision, type ScoreRequest, type ScoreResponse } from '../../proto/gen/risk/v1/risk.js';
import type { Scorer } from '../service.js';
import { psi, ReferenceWindows } from './monitoring.js';

/**
 * Live monitoring of Score for Prometheus: decisions by outcome, model version and segment (card country, card
 * type: decline-rate parity is a PromQL ratio of these), the score distribution, and the PSI of the last
 * `window` scores against a reference sample (the training scores of the artefact, or the first window seen).
 * With a challenger deciding for a share (split), only the scores of `referenceVersion` (the champion) are
 * compared: a mix of two models' scores has no reference.
 */
export class MonitoredScorer implements Scorer {
  private readonly windows: ReferenceWindows<number, number>;
  private drift = 0;

  constructor(
    private readonly inner: Scorer,
    meter: Meter,
    reference?: readonly number[],
    window = 5_000,
    private readonly referenceVersion?: string,
  ) {
    this.windows = new ReferenceWindows(reference, window, psi);
    this.decisions = meter.createCounter('risk_decisions_total', { description: 'Score decisions by outcome, model version, card country and card type' });
    this.scores = meter.createHistogram('risk_score', { description: 'Scores answered (0..1)', advice: { explicitBucketBoundaries: [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9] } });
    meter.createObservableGauge('risk_score_psi', { description: 'Population stability index of the recent scores against the reference (0.1 watch, 0.25 alert)' }).addCallback((result) => result.observe(this.drift));
  }

  private readonly decisions: ReturnType<Meter['createCounter']>;
  private readonly scores: ReturnType<Meter['createHistogram']>;

  score(request: ScoreRequest, nowMs?: number): ScoreResponse {
    const answer = this.inner.score(request, nowMs);
    const score = answer.scorePpm / 1_000_000;
    const decision = answer.decision === Decision.DECISION_DECLINE ? 'decline' : answer.decision === Decision.DECISION_REVIEW ? 'review' : 'approve';
    this.decisions.add(1, { decision, model_version: answer.modelVersion, card_country: request.cardCountry || 'none', card_type: request.cardType || 'none' });
    this.scores.record(score, { model_version: answer.modelVersion });
    if (this.referenceVersion === undefined || answer.modelVersion === this.referenceVersion) this.drift = this.windows.record(score) ?? this.drift;
    return answer;
  }
}
