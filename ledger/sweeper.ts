import { withTransaction, type Pool } from '../lib/db.js';
import type { Logger } from '../lib/logger.js';
import { PeriodicTask } from '../lib/periodic.js';
import { MAX_BATCH_EVENTS } from './model.js';
import { shardOf, type LedgerRouter } from './router.js';

/**
 * Releases expired pending transfers. It only finds candidates; the release itself goes through the batcher
 * of the shard that created the pending transfer (its debit account's shard), so it serializes with every
 * post and void on it, and the batch re-checks that the transfer is still pending and past its timeout.
 */
export class ExpirySweeper {
  private readonly task: PeriodicTask;

  constructor(
    private readonly pool: Pool,
    private readonly router: LedgerRouter,
    private readonly logger: Logger,
    intervalMs: number,
  ) {
    this.task = new PeriodicTask('expiry sweep', () => this.sweep(), intervalMs, logger);
  }

  start(): void {
    this.task.start();
  }

  stop(): Promise<void> {
    return this.task.stop();
  }

  /**
   * One pass over the owned shards; returns how many pending transfers expired. A pending transfer created
   * under a larger LEDGER_SHARDS keeps a shard number that no longer exists: it is released through the shard
   * its post or void would take now (its debit account's), by the instance that owns that shard.
   */
  async sweep(): Promise<number> {
    const now = BigInt(Date.now()) * 1_000_000n;
    const { shardCount, ownedShards } = this.router;
    // Candidates only (the batch decides), so no SERIALIZABLE read locks in the batches' way: see lib/db.ts.
    const r = await withTransaction(
      this.pool,
      (c) =>
        c.query(
          `SELECT id, shard, debit_account_id FROM pending_transfers
           WHERE (shard = ANY($1::int4[]) OR shard >= $4) AND state = 1 AND expires_at > 0 AND expires_at <= $2
           ORDER BY expires_at LIMIT $3`,
          [ownedShards, now, MAX_BATCH_EVENTS, shardCount],
        ),
      { isolation: 'repeatable read', readOnly: true },
    );
    const perShard = new Map<number, string[]>();
    for (const row of r.rows) {
      const shard: number = row.shard < shardCount ? row.shard : shardOf(row.debit_account_id, shardCount);
      if (!ownedShards.includes(shard)) continue;
      const ids = perShard.get(shard) ?? [];
      ids.push(row.id);
      perShard.set(shard, ids);
    }
    const counts = await Promise.all([...perShard].map(([shard, ids]) => this.router.expire(shard, ids)));
    const expired = counts.reduce((a, b) => a + b, 0);
    if (expired > 0) this.logger.info({ expired }, 'expired pending transfers released');
    return expired;
  }
}
