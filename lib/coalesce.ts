import { context, type Context } from '@opentelemetry/api';

/**
 * Group commit for the callers of one event-loop turn: `add` queues an item, and once per turn the queue goes
 * to `flush` as one batch (at most `maxBatch` items, at most `maxInFlight` batches at once; the rest waits for
 * the next turn). `flush` answers one result per item, in order; if it throws, every item of that batch gets
 * the error (callers retry as they would for their own failure).
 */
export class Coalescer<In, Out> {
  private queue: { item: In; context: Context; resolve: (out: Out) => void; reject: (error: unknown) => void }[] = [];
  private scheduled = false;
  private inFlight = 0;

  constructor(
    private readonly flush: (items: In[]) => Promise<Out[]>,
    private readonly maxBatch = 1_000,
    private readonly maxInFlight = 4,
  ) {}

  add(item: In): Promise<Out> {
    return new Promise((resolve, reject) => {
      this.queue.push({ item, context: context.active(), resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled || this.queue.length === 0 || this.inFlight >= this.maxInFlight) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.drain();
    });
  }

  private drain(): void {
    while (this.queue.length > 0 && this.inFlight < this.maxInFlight) {
      const batch = this.queue.splice(0, this.maxBatch);
      this.inFlight++;
      // Through a promise even if `flush` throws at once: its items are answered, the in-flight slot freed.
      // In the trace of the batch's first caller: drained from a timer or from the end of the batch before, the
      // context here is whichever caller's scheduled it, and under load every batch would go into one old trace.
      const first = batch[0]!.context;
      Promise.resolve()
        .then(() => context.with(first, () => this.flush(batch.map((b) => b.item))))
        .then(
          (results) => batch.forEach((b, i) => (i < results.length ? b.resolve(results[i]!) : b.reject(new Error('coalesced flush answered fewer results than items')))),
          (error: unknown) => batch.forEach((b) => b.reject(error)),
        )
        .finally(() => {
          this.inFlight--;
          this.schedule();
        });
    }
  }
}
