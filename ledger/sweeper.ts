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
   * its post or void would take now (its debit account's), by the instance that owns that shard. Those are
   * looked for in a query of their own, so that other instances' leftovers never crowd out this one's shards.
   */
  async sweep(): Promise<number> {
    const now = BigInt(Date.now()) * 1_000_000n;
    const { shardCount, ownedShards, maxBatchEvents } = this.router;
    // Candidates only (the batch decides), so no SERIALIZABLE read locks in the batches' way: see lib/db.ts.
    const [own, leftover] = await withTransaction(
      this.pool,
      async (c) => [
        await c.query(
          `SELECT id, shard FROM pending_transfers
           WHERE shard = ANY($1::int4[]) AND state = 1 AND expires_at > 0 AND expires_at <= $2
           ORDER BY expires_at LIMIT $3`,
          [ownedShards, now, MAX_BATCH_EVENTS],
        ),
        await c.query(
          `SELECT id, debit_account_id FROM pending_transfers
           WHERE shard >= $1 AND state = 1 AND expires_at > 0 AND expires_at <= $2
           ORDER BY expires_at LIMIT $3`,
          [shardCount, now, MAX_BATCH_EVENTS],
        ),
      ],
      { isolation: 'repeatable read', readOnly: true },
    );
    const perShard = new Map<number, string[]>();
    const add = (shard: number, id: string) => {
      if (!ownedShards.includes(shard)) return;
      const ids = perShard.get(shard) ?? [];
      // One batch's worth (LEDGER_BATCH_MAX) per shard and pass; the rest next pass. More could exceed what the
      // queue admits at all (LEDGER_MAX_QUEUED_EVENTS need only hold one batch): refused on every pass, never expired.
      if (ids.length >= maxBatchEvents) return;
      ids.push(id);
      perShard.set(shard, ids);
    };
    for (const row of own.rows) add(row.shard, row.id);
    for (const row of leftover.rows) add(shardOf(row.debit_account_id, shardCount), row.id);
    const counts = await Promise.all([...perShard].map(([shard, ids]) => this.router.expire(shard, ids)));
    const expired = counts.reduce((a, b) => a + b, 0);
    if (expired > 0) this.logger.info({ expired }, 'expired pending transfers released');
    return expired;
  }
}
