/** Wall-clock nanoseconds: the unit of ledger timestamps. */
export function wallClockNanos(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

/**
 * The ledger instance's clock for batch timestamps (a hybrid logical clock): wall-clock nanoseconds that never
 * repeat nor go back within the process, even when the system clock steps back, and that stay above every
 * timestamp a batch of this instance committed (`observe`). A batch dispatched after a reading stamps its events
 * above that reading (ledger/batch.ts takes the dispatch time as its lowest base), which lets a listing know that
 * no batch started later can still commit a transfer at or below it (LedgerRouter.listingHorizon); and a reading
 * taken after a batch answered is above that batch's timestamps, so a caller's listing shows what it committed.
 * A shard clock found ahead of the wall clock (one left by an instance whose clock ran fast) carries every shard
 * of the instance ahead with it until the wall clock catches up, as a hybrid logical clock does.
 */
export class MonotonicClock {
  private last = 0n;

  constructor(private readonly source: () => bigint = wallClockNanos) {}

  now(): bigint {
    const wall = this.source();
    this.last = wall > this.last ? wall : this.last + 1n;
    return this.last;
  }

  /** A timestamp committed: later readings are above it. */
  observe(timestamp: bigint): void {
    if (timestamp > this.last) this.last = timestamp;
  }
}
