import { DeliverPolicy, type ConsumerMessages, type JetStreamManager } from '@nats-io/jetstream';
import { SpanKind } from '@opentelemetry/api';
import { contextOf, tracer } from '../../observability/tracing.js';
import type { Config } from '../../lib/config.js';
import type { Logger } from '../../lib/logger.js';
import { PeriodicTask } from '../../lib/periodic.js';
import { connectJetStream, connectNats, type NatsConnection } from '../../lib/nats.js';
import { ensureEventStream } from '../../lib/streams.js';
import { EventBatch, type PaymentEvent } from '../../proto/gen/events/v1/events.js';
import { Decision, type ScoreRequest, type ScoreResponse } from '../../proto/gen/risk/v1/risk.js';
import { approximateUsdCents } from '../../lib/currency.js';
import type { FeatureCheckpoints } from './feature-checkpoints.js';
import { FeatureStore, type PaymentFacts } from './features.js';
import type { FraudModel } from './models.js';
import type { FeatureDriftMonitor } from './monitoring.js';

/**
 * Serving a trained model: Score reads the online features of the request from a FeatureStore that a feed of
 * payment events keeps up to date. Every risk instance replays the payment events of the stream into its own
 * store (an ordered consumer: no shared state between instances, each sees every payment), so the features
 * are the offline ones computed over the same event log: a payment's features come from the payments before it.
 */

/** The key a payment's customer is counted under: customer ids are the merchant's own, so per merchant. */
export function customerKey(merchantId: string, customerId: string): string {
  return customerId === '' ? '' : `${merchantId}:${customerId}`;
}

export function factsFromScore(r: ScoreRequest, at: number): PaymentFacts {
  return {
    at,
    merchantId: r.merchantId,
    merchantCategory: r.merchantCategory,
    customerId: customerKey(r.merchantId, r.customerId),
    cardFingerprint: r.cardFingerprint,
    cardType: r.cardType,
    cardCountry: r.cardCountry,
    deviceId: r.deviceId,
    ipCountry: r.ipCountry,
    amount: approximateUsdCents(r.amount, r.currency),
  };
}

export function factsFromEvent(e: PaymentEvent): PaymentFacts {
  return {
    at: Number(e.createdAt / 1_000_000n),
    merchantId: e.merchantId,
    merchantCategory: e.merchantCategory,
    customerId: customerKey(e.merchantId, e.customerId),
    cardFingerprint: e.cardFingerprint,
    cardType: e.cardType,
    cardCountry: e.cardCountry,
    deviceId: e.deviceId,
    ipCountry: e.ipCountry,
    amount: approximateUsdCents(e.amount, e.currency),
    paymentId: e.paymentId,
  };
}

/** Each payment is observed once: at its authorization, or at its decline (declined attempts count too). */
const OBSERVED = new Set(['payment.authorized', 'payment.declined']);
const feedTracer = tracer('risk-features');

export class PaymentFeatureFeed {
  private nc: NatsConnection | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;
  private readonly checkpointTask: PeriodicTask | undefined;
  /** Payments observed since start (for readiness and tests). */
  applied = 0;
  /** The last stream message applied (from the checkpoint restored at start, then the feed). */
  lastSeq = 0;
  private checkpointedSeq = 0;
  /** When the stream read was created: a different one is a new stream, whose sequences start again. */
  private streamCreated = '';

  constructor(
    private readonly store: FeatureStore,
    private readonly config: Config,
    private readonly logger: Logger,
    /** Where the store is checkpointed (every RISK_FEATURE_CHECKPOINT_MS and at stop) and restored from at start. */
    private readonly checkpoints?: FeatureCheckpoints,
  ) {
    if (checkpoints) this.checkpointTask = new PeriodicTask('feature checkpoint', () => this.checkpoint(), config.RISK_FEATURE_CHECKPOINT_MS, logger);
  }

  /** The subjects a feed reads: what a checkpoint's state was computed from. */
  static subjects(config: Pick<Config, 'EVENTS_SUBJECT_PREFIX'>): string {
    return `${config.EVENTS_SUBJECT_PREFIX}.payments.>`;
  }

  async start(): Promise<void> {
    this.nc = await connectNats(this.config, { name: 'risk-feature-feed' });
    const { js, jsm } = await connectJetStream(this.nc);
    await ensureEventStream(jsm, this.config);
    this.streamCreated = (await jsm.streams.info(this.config.EVENTS_STREAM)).created;
    const restored = await this.checkpoints?.load();
    if (restored) {
      this.store.restore(restored.snapshot);
      // A checkpoint of another stream (NATS came back without its store while no instance ran) keeps the history
      // it holds, but its sequence counts in the old stream: resuming after it would skip as many of the new
      // stream's payments. The new stream is read from its start; a payment observed before counts once.
      const sameStream = restored.streamCreated === this.streamCreated;
      this.lastSeq = this.checkpointedSeq = sameStream ? restored.seq : 0;
      this.logger.info({ seq: restored.seq, sameStream, keys: this.store.sizes() }, 'feature store restored from its checkpoint');
    }
    // After a checkpoint, from the message after it (or the oldest kept, if retention dropped that far).
    const from = this.lastSeq > 0 ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: this.lastSeq + 1 } : {};
    const consumer = await js.consumers.get(this.config.EVENTS_STREAM, { filter_subjects: PaymentFeatureFeed.subjects(this.config), ...from });
    // Score serves only once the feed has caught up: start() returns when the payment message that is the last in
    // the stream now is applied (a store still replaying would answer low velocities for a card-testing burst).
    const last = await jsm.streams.getMessage(this.config.EVENTS_STREAM, { last_by_subj: PaymentFeatureFeed.subjects(this.config) });
    const target = last?.seq ?? 0;
    let caughtUp!: () => void;
    const ready = new Promise<void>((resolve) => (caughtUp = resolve));
    if (this.lastSeq >= target) caughtUp();
    let messages = await consumer.consume();
    this.checkpointTask?.start();
    this.loop = (async () => {
      for (;;) {
        const renewed = this.watchForNewStream(jsm, messages);
        await this.apply(messages, target, caughtUp);
        const created = await renewed;
        if (this.stopped || created === undefined) return;
        // The stream was created anew (NATS back without its store, the relay made it again): its sequences start
        // at 1 again, and the ordered consumer would go on after the last one seen here, skipping as many payments.
        // Read from its start; the store counts a payment observed before only once. Stream and sequence change
        // together, so no checkpoint names the new stream with a sequence of the old one.
        this.streamCreated = created;
        this.lastSeq = this.checkpointedSeq = 0;
        messages = await (await js.consumers.get(this.config.EVENTS_STREAM, { filter_subjects: PaymentFeatureFeed.subjects(this.config) })).consume();
      }
    })().finally(() => caughtUp());
    await ready;
  }

  /**
   * The creation time of the stream that replaced the one `messages` read (then `messages` is stopped), or
   * undefined when `messages` ended otherwise: checked when the ordered consumer had to be created again, as it
   * is after the stream was lost.
   */
  private async watchForNewStream(jsm: JetStreamManager, messages: ConsumerMessages): Promise<string | undefined> {
    for await (const status of messages.status()) {
      if (status.type !== 'ordered_consumer_recreated') continue;
      const info = await jsm.streams.info(this.config.EVENTS_STREAM).catch(() => undefined);
      if (info && info.created !== this.streamCreated) {
        messages.stop();
        return info.created;
      }
    }
    return undefined;
  }

  private async apply(messages: ConsumerMessages, target: number, caughtUp: () => void): Promise<void> {
    for await (const m of messages) {
      if (this.stopped) break;
      // A CONSUMER span in the trace of the payment that produced the message (traceparent header).
      const parent = contextOf(m.headers?.get('traceparent'));
      const span = feedTracer.startSpan(`${m.subject} process`, { kind: SpanKind.CONSUMER, attributes: { 'messaging.system': 'nats', 'messaging.destination.name': m.subject } }, parent);
      try {
        for (const e of EventBatch.decode(m.data).events) {
          if (e.payload?.$case !== 'payment' || !OBSERVED.has(e.type)) continue;
          // At least once: a payment whose event comes again is not counted again.
          if (this.store.observe(factsFromEvent(e.payload.value))) this.applied++;
        }
      } catch (err) {
        span.recordException(err as Error);
        this.logger.error({ err, seq: m.seq }, 'payment event could not be read; skipped');
      } finally {
        this.lastSeq = m.seq;
        span.end();
        if (m.seq >= target) caughtUp();
      }
    }
  }

  /** Saves the store's state if it moved since the last checkpoint; state and sequence taken in one step. */
  async checkpoint(): Promise<void> {
    if (!this.checkpoints || this.lastSeq <= this.checkpointedSeq) return;
    const seq = this.lastSeq;
    await this.checkpoints.save({ seq, streamCreated: this.streamCreated, snapshot: this.store.snapshot() });
    this.checkpointedSeq = seq;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.checkpointTask?.stop();
    await this.nc?.close();
    await this.loop;
    await this.checkpoint().catch((err: unknown) => this.logger.warn({ err }, 'last feature checkpoint not saved'));
  }
}

/** The reason of a decline because the model's score was not a finite number. */
export const SCORE_NOT_FINITE = 'score_not_finite';

/** Score with a model: decline at the artefact's cost-optimal threshold, review from half of it. */
export class ModelScorer {
  constructor(
    private readonly model: FraudModel,
    private readonly store: FeatureStore,
    readonly version: string,
    private readonly threshold: number,
    /** Sees every feature vector served (live feature drift). */
    private readonly drift?: FeatureDriftMonitor,
  ) {}

  score(request: ScoreRequest, nowMs = Date.now()): ScoreResponse {
    const vector = this.store.features(factsFromScore(request, nowMs));
    this.drift?.record(vector);
    const score = this.model.score(vector);
    // A score that is no number (a NaN feature, an overflow in the model) compares false with every threshold,
    // which read as approve with a score of 0: it declines instead, and says why.
    if (!Number.isFinite(score)) return { scorePpm: 1_000_000, decision: Decision.DECISION_DECLINE, reasons: [SCORE_NOT_FINITE], modelVersion: this.version };
    const decision = score >= this.threshold ? Decision.DECISION_DECLINE : score >= this.threshold / 2 ? Decision.DECISION_REVIEW : Decision.DECISION_APPROVE;
    return {
      scorePpm: Math.round(Math.min(1, Math.max(0, score)) * 1_000_000),
      decision,
      reasons: decision === Decision.DECISION_APPROVE ? [] : this.model.reasons(vector),
      modelVersion: this.version,
    };
  }
}
