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
        // The oldest batch's worth of each owned shard, shared out below: one limit over all of them gave every
        // candidate to the shard with the oldest backlog, and the other shards' expired transfers waited for as many
        // passes as it lasted.
        await c.query(
          `SELECT p.id, p.shard FROM unnest($1::int4[]) AS s(shard)
           CROSS JOIN LATERAL (
             SELECT id, shard, expires_at FROM pending_transfers
             WHERE shard = s.shard AND state = 1 AND expires_at > 0 AND expires_at <= $2
             ORDER BY expires_at LIMIT $3
           ) AS p
           ORDER BY p.shard, p.expires_at`,
          [ownedShards, now, maxBatchEvents],
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
    const candidates = new Map<number, string[]>();
    for (const row of own.rows) {
      const ids = candidates.get(row.shard) ?? [];
      ids.push(row.id);
      candidates.set(row.shard, ids);
    }
    for (const [shard, ids] of shareOut(candidates, MAX_BATCH_EVENTS)) for (const id of ids) add(shard, id);
    for (const row of leftover.rows) add(shardOf(row.debit_account_id, shardCount), row.id);
    const counts = await Promise.all([...perShard].map(([shard, ids]) => this.router.expire(shard, ids)));
    const expired = counts.reduce((a, b) => a + b, 0);
    if (expired > 0) this.logger.info({ expired }, 'expired pending transfers released');
    return expired;
  }
}

/**
 * At most `total` of the candidates, as evenly shared between the shards as their numbers allow (what one shard
 * does not need goes to the others): a batch's worth in all per pass, as one limit gave, so that a pass does not
 * fill the queues that callers' requests need (LEDGER_MAX_QUEUED_EVENTS). Each shard keeps its oldest.
 */
function shareOut(candidates: ReadonlyMap<number, string[]>, total: number): Map<number, string[]> {
  const fewestFirst = [...candidates].sort(([, a], [, b]) => a.length - b.length);
  const shares = new Map<number, string[]>();
  let left = total;
  fewestFirst.forEach(([shard, ids], i) => {
    const share = ids.slice(0, Math.floor(left / (fewestFirst.length - i)));
    shares.set(shard, share);
    left -= share.length;
  });
  return shares;
}
