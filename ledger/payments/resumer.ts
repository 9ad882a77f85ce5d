import type { Pool } from '../../lib/db.js';
import type { Logger } from '../../lib/logger.js';
import { PeriodicTask } from '../../lib/periodic.js';
import type { PaymentFlows } from './flows.js';
import { staleOperations } from './store.js';

/**
 * Finishes payment steps left `processing` longer than `resumeAfterMs`: their caller crashed (or gave up)
 * between recording the step and finishing it. Driving a step twice is harmless (derived transfer ids, and
 * a step finishes once), so several instances may resume at the same time.
 */
export class PaymentResumer {
  readonly task: PeriodicTask;

  constructor(
    private readonly pool: Pool,
    private readonly flows: PaymentFlows,
    private readonly logger: Logger,
    private readonly resumeAfterMs: number,
  ) {
    this.task = new PeriodicTask('payment resumer', () => this.resumeOnce(), Math.max(1_000, Math.floor(resumeAfterMs / 2)), logger);
  }

  /** One pass; returns how many steps it drove. */
  async resumeOnce(): Promise<number> {
    const stale = await staleOperations(this.pool, this.resumeAfterMs, 100);
    let resumed = 0;
    for (const op of stale) {
      try {
        await this.flows.resume(op);
        resumed++;
      } catch (err) {
        // A step that fails for good (e.g. an expired authorization) was finished as failed by resume itself.
        this.logger.warn({ err, operation: op.id, kind: op.kind, payment: op.paymentId }, 'payment step could not be resumed');
      }
    }
    if (resumed > 0) this.logger.info({ resumed }, 'payment steps resumed');
    return resumed;
  }
}
