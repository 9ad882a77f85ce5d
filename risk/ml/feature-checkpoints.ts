import { gunzipSync, gzipSync } from 'node:zlib';
import { statement, type Pool } from '../../lib/db.js';
import type { FeatureSnapshot } from './features.js';

export interface Checkpoint {
  /** The last stream message the state includes. */
  seq: number;
  snapshot: FeatureSnapshot;
}

/**
 * The online feature store kept in PostgreSQL: a checkpoint of its state and the stream sequence it reached,
 * one row per feed. Every instance of a feed computes the same state from the same stream, so any of them may
 * write it; a checkpoint never replaces a later one. Serving stays in memory: Score reads no table.
 */
export class FeatureCheckpoints {
  constructor(
    private readonly pool: Pool,
    /** Which feed: the stream and subject filter the features come from. */
    readonly feed: string,
  ) {}

  async load(): Promise<Checkpoint | undefined> {
    const r = await statement(this.pool, { name: 'risk-checkpoint-load', text: 'SELECT stream_seq, state FROM risk_feature_checkpoints WHERE feed = $1', values: [this.feed] });
    const row = r.rows[0];
    if (!row) return undefined;
    return { seq: Number(row.stream_seq), snapshot: JSON.parse(gunzipSync(row.state as Buffer).toString('utf8')) as FeatureSnapshot };
  }

  /** Stores `checkpoint` unless a later one is there already; whether it was stored. */
  async save(checkpoint: Checkpoint): Promise<boolean> {
    const state = gzipSync(JSON.stringify(checkpoint.snapshot));
    const r = await statement(this.pool, {
      name: 'risk-checkpoint-save',
      text: `INSERT INTO risk_feature_checkpoints (feed, stream_seq, state) VALUES ($1, $2, $3)
             ON CONFLICT (feed) DO UPDATE SET stream_seq = excluded.stream_seq, state = excluded.state, taken_at = now()
             WHERE risk_feature_checkpoints.stream_seq < excluded.stream_seq`,
      values: [this.feed, checkpoint.seq, state],
    });
    return r.rowCount === 1;
  }
}
