import { credentials } from '@grpc/grpc-js';
import { callUnary } from '../lib/grpc.js';
import { RiskServiceClient, type ScoreRequest, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';

/** Promise client for risk.v1.RiskService; every call carries the caller's deadline. */
export class RiskClient {
  private readonly raw: RiskServiceClient;

  constructor(target: string) {
    this.raw = new RiskServiceClient(target, credentials.createInsecure(), {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      // A risk instance that went away must not make every payment wait for a reconnect backoff of minutes.
      'grpc.max_reconnect_backoff_ms': 2_000,
    });
  }

  score(request: ScoreRequest, deadlineMs: number): Promise<ScoreResponse> {
    return callUnary(this.raw, this.raw.score, request, deadlineMs);
  }

  close(): void {
    this.raw.close();
  }
}
