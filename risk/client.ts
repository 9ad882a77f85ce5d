import { credentials, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { context, type Context } from '@opentelemetry/api';
import { callUnary } from '../lib/grpc.js';
import { mergedCallSpan } from '../observability/tracing.js';
import { RiskServiceClient, type ScoreRequest, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';

/** Requests per ScoreBatch call (the service accepts up to 1,000). */
const MAX_BATCH = 500;

interface Pending {
  request: ScoreRequest;
  deadline: number;
  /** The caller's trace context: its call is made in it, or linked to it when coalesced with others'. */
  context: Context;
  resolve: (response: ScoreResponse) => void;
  reject: (error: unknown) => void;
}

/**
 * Promise client for risk.v1.RiskService. Concurrent Score calls of one event-loop turn are coalesced into one
 * ScoreBatch call (one message instead of many: at payment rates the per-message cost dominates), sent with
 * the earliest deadline among them; a lone call goes as a plain Score. If a batch is refused as malformed,
 * its calls are retried alone, so one bad request fails alone.
 */
export class RiskClient {
  private readonly raw: RiskServiceClient;
  private queue: Pending[] = [];
  private scheduled = false;

  /**
   * `channel`: `channelCredentials(config)` (lib/grpc-tls.ts) in the services. Default plaintext, which a
   * TLS-configured risk service refuses: a client left on it fails closed.
   */
  constructor(target: string, channel: ChannelCredentials = credentials.createInsecure()) {
    this.raw = new RiskServiceClient(target, channel, {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // A risk instance that went away must not make every payment wait for a reconnect backoff of minutes.
      'grpc.max_reconnect_backoff_ms': 2_000,
    });
  }

  score(request: ScoreRequest, deadlineMs: number): Promise<ScoreResponse> {
    return new Promise((resolve, reject) => {
      this.queue.push({ request, deadline: Date.now() + deadlineMs, context: context.active(), resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  private flush(): void {
    this.scheduled = false;
    const calls = this.queue;
    this.queue = [];
    for (let i = 0; i < calls.length; i += MAX_BATCH) this.send(calls.slice(i, i + MAX_BATCH));
  }

  private send(calls: Pending[]): void {
    const remaining = Math.max(1, Math.min(...calls.map((c) => c.deadline)) - Date.now());
    if (calls.length === 1) {
      const [only] = calls as [Pending];
      callUnary(this.raw, this.raw.score, only.request, remaining, { parent: only.context }).then(only.resolve, only.reject);
      return;
    }
    // One call for several payments: a root span linked to each caller (as the ledger batch and CreatePayments), not
    // a child of whichever caller's turn flushed it, which left the other payments' traces without their score.
    const span = mergedCallSpan(calls.map((c) => c.context));
    callUnary(this.raw, this.raw.scoreBatch, { requests: calls.map((c) => c.request) }, remaining, span).then(
      ({ responses }) => calls.forEach((c, i) => (responses[i] ? c.resolve(responses[i]) : c.reject(new Error('ScoreBatch answered fewer responses than requests')))),
      (error: ServiceError) => {
        if (error.code !== status.INVALID_ARGUMENT) return calls.forEach((c) => c.reject(error));
        for (const c of calls) callUnary(this.raw, this.raw.score, c.request, Math.max(1, c.deadline - Date.now()), { parent: c.context }).then(c.resolve, c.reject);
      },
    );
  }

  close(): void {
    for (const c of this.queue) c.reject(new Error('risk client closed'));
    this.queue = [];
    this.raw.close();
  }
}
