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

/** A write stamped with `timestamp` that has not ended yet (CommitHorizon.begin). */
export interface OpenWrite {
  readonly timestamp: bigint;
  /** What the write can change (a merchant's payments), when a listing needs only some writes (`horizon`). */
  readonly scope?: string;
  /** Resolves once the write has ended, committed or not. */
  readonly ended: Promise<void>;
}

/**
 * What an instance has committed, for listings in timestamp order: writes stamp themselves when they start
 * (`begin`, the clock's reading) and commit later, several at once, so one stamped earlier can commit after one
 * stamped later. A reader resuming after the newest row it saw would step over it for good. `horizon` is a
 * timestamp at or below which no write of this instance can commit any more: listings read only up to it.
 */
export class CommitHorizon {
  private readonly open = new Map<OpenWrite, () => void>();

  constructor(readonly clock: MonotonicClock = new MonotonicClock()) {}

  /** A write starting now: it must commit nothing stamped below its `timestamp`, and `end` it however it ends. */
  begin(scope?: string): OpenWrite {
    let resolve!: () => void;
    const write: OpenWrite = { timestamp: this.clock.now(), scope, ended: new Promise<void>((r) => (resolve = r)) };
    this.open.set(write, resolve);
    return write;
  }

  end(write: OpenWrite): void {
    this.open.get(write)?.();
    this.open.delete(write);
  }

  /** A timestamp committed above a write's own (a batch's later events): later readings are above it (MonotonicClock.observe). */
  observe(timestamp: bigint): void {
    this.clock.observe(timestamp);
  }

  /**
   * Waits up to `maxWaitMs` for the writes open now, then reads the clock: every write begun later is stamped
   * above that reading, and every write ended before stamped below it (or observed). The horizon is the reading,
   * lowered to just below the stamp of any write still open. Only some writes count:
   * - with `scope`, those begun with that scope (and those begun without one): a merchant's listing neither
   *   waits for nor is held below another's;
   * - with `readsUpTo` (a listing that reads nothing stamped above it), those stamped at or below it: a window in
   *   the past (settlement's reconciliation) does not wait for the batches running now, which stamp above it.
   */
  async horizon(maxWaitMs: number, only: { scope?: string; readsUpTo?: bigint } = {}): Promise<bigint> {
    const { scope, readsUpTo } = only;
    const counts = (w: OpenWrite) => (scope === undefined || w.scope === undefined || w.scope === scope) && (readsUpTo === undefined || w.timestamp <= readsUpTo);
    const openNow = [...this.open.keys()].filter(counts);
    if (openNow.length > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(openNow.map((w) => w.ended)), new Promise((resolve) => (timer = setTimeout(resolve, maxWaitMs)))]);
      clearTimeout(timer);
    }
    let horizon = this.clock.now();
    for (const w of this.open.keys()) if (counts(w) && w.timestamp - 1n < horizon) horizon = w.timestamp - 1n;
    return horizon;
  }
}
