/** Wall-clock nanoseconds: the unit of ledger timestamps. */
export function wallClockNanos(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/**
 * How far ahead of the wall clock a committed timestamp may carry the instance clock. Expiry of pending transfers
 * is reckoned from timestamps, so a clock carried ahead expires, on every shard, the pendings recorded before
 * early by as much: this bounds that. NTP keeps servers' clocks well within it.
 */
export const MAX_CLOCK_LEAD_NANOS = 100_000_000n;

/**
 * The ledger instance's clock for batch timestamps (a hybrid logical clock): wall-clock nanoseconds that never
 * repeat nor go back within the process, even when the system clock steps back, and that stay above every
 * timestamp a batch of this instance committed (`observe`), up to MAX_CLOCK_LEAD_NANOS ahead of the wall clock.
 * A batch dispatched after a reading stamps its events above that reading (ledger/batch.ts takes the dispatch
 * time as its lowest base), which lets a listing know that no batch started later can still commit a transfer at
 * or below it (LedgerRouter.listingHorizon); and a reading taken after a batch answered is above that batch's
 * timestamps, so a caller's listing shows what it committed.
 */
export class MonotonicClock {
  private last = 0n;

  constructor(private readonly source: () => bigint = wallClockNanos) {}

  now(): bigint {
    const wall = this.source();
    this.last = wall > this.last ? wall : this.last + 1n;
    return this.last;
  }

  /**
   * A timestamp committed: later readings are above it, unless it is more than MAX_CLOCK_LEAD_NANOS ahead of the
   * wall clock (a shard clock left by an instance whose clock ran fast); then they are above that lead only.
   */
  observe(timestamp: bigint): void {
    const cap = this.source() + MAX_CLOCK_LEAD_NANOS;
    const carried = timestamp < cap ? timestamp : cap;
    if (carried > this.last) this.last = carried;
  }
}
