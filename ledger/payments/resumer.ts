import type { Pool } from '../../lib/db.js';
import type { Logger } from '../../lib/logger.js';
import { PeriodicTask } from '../../lib/periodic.js';
import type { PaymentFlows } from './flows.js';
import { deferOperation, expiredAuthorizations, staleOperations } from './store.js';

/**
 * Finishes payment steps left `processing` longer than `resumeAfterMs`: their caller crashed (or gave up)
 * between recording the step and finishing it. Driving a step twice is harmless (derived transfer ids, and
 * a step finishes once), so several instances may resume at the same time. Also cancels payments whose
 * authorization expired uncaptured (the ledger released the amount; the payment says so, with its event).
 */
export class PaymentResumer {
  readonly task: PeriodicTask;

  constructor(
    private readonly pool: Pool,
    private readonly flows: PaymentFlows,
    private readonly logger: Logger,
    private readonly resumeAfterMs: number,
    private readonly authorizationTimeoutSeconds: number,
    /** Steps (and expired authorizations) taken per pass, oldest first. */
    private readonly pageSize = 100,
  ) {
    this.task = new PeriodicTask('payment resumer', () => this.resumeOnce(), Math.max(1_000, Math.floor(resumeAfterMs / 2)), logger);
  }

  /** One pass; returns how many steps it drove (expired authorizations included). */
  async resumeOnce(): Promise<number> {
    const stale = await staleOperations(this.pool, this.resumeAfterMs, this.pageSize);
    let resumed = 0;
    for (const op of stale) {
      try {
        await this.flows.resume(op);
        resumed++;
      } catch (err) {
        // A step that fails for good (e.g. an expired authorization) was finished as failed by resume itself. One
        // that threw goes to the back of the queue, stale again after resumeAfterMs: left first in line, a page of
        // such steps would be all every pass took, and the steps behind them would never be finished.
        this.logger.warn({ err, operation: op.id, kind: op.kind, payment: op.paymentId }, 'payment step could not be resumed; retried later');
        await deferOperation(this.pool, op.id).catch((error: unknown) => this.logger.warn({ err: error, operation: op.id }, 'payment step could not be deferred'));
      }
    }
    // A second of slack: the ledger's sweeper releases the pending transfer first, the cancel records it.
    const expiredBefore = BigInt(Date.now() - 1000) * 1_000_000n;
    const createdBefore = expiredBefore - BigInt(this.authorizationTimeoutSeconds) * 1_000_000_000n;
    for (const payment of await expiredAuthorizations(this.pool, createdBefore, expiredBefore, this.pageSize)) {
      try {
        await this.flows.cancel(payment.merchantId, payment.id);
        resumed++;
      } catch (err) {
        this.logger.warn({ err, payment: payment.id }, 'expired authorization could not be canceled');
      }
    }
    if (resumed > 0) this.logger.info({ resumed }, 'payment steps resumed or expired');
    return resumed;
  }
}
