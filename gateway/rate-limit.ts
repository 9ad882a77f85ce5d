import { ResourceExhaustedError } from '../lib/errors.js';

/**
 * Per-caller token buckets, in memory: each gateway instance limits on its own (with N instances behind a
 * balancer a caller gets up to N times the rate). Buckets idle long enough to be full again are dropped, so
 * memory follows the callers active in the last few seconds.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private lastSweep = 0;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Takes one token for `caller`, or throws 429 with the seconds until one is available. */
  take(caller: string): void {
    const now = this.now();
    const bucket = this.buckets.get(caller) ?? { tokens: this.burst, at: now };
    bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.at) / 1000) * this.perSecond);
    bucket.at = now;
    this.buckets.set(caller, bucket);
    if (now - this.lastSweep > 10_000) this.sweep(now);
    if (bucket.tokens < 1) {
      throw new ResourceExhaustedError('rate_limit', `Too many requests: at most ${this.perSecond} per second (burst ${this.burst})`, Math.ceil((1 - bucket.tokens) / this.perSecond));
    }
    bucket.tokens -= 1;
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    const refill = (this.burst / this.perSecond) * 1000;
    for (const [caller, bucket] of this.buckets) if (now - bucket.at > refill) this.buckets.delete(caller);
  }
}
