import { gunzipSync, gzipSync } from 'node:zlib';
import { statement, type Pool } from '../../lib/db.js';
import type { FeatureSnapshot } from './features.js';

export interface Checkpoint {
  /** The last stream message the state includes. */
  seq: number;
  /**
   * The creation time of the stream `seq` counts in, as NATS reports it: a stream created anew numbers its
   * messages from 1 again ('' for a checkpoint taken before streams were told apart).
   */
  streamCreated: string;
  snapshot: FeatureSnapshot;
}

/**
 * The online feature store kept in PostgreSQL: a checkpoint of its state and the stream sequence it reached,
 * one row per feed. Every instance of a feed computes the same state from the same stream, so any of them may
 * write it; a checkpoint never replaces a later one of the same stream. One of another stream replaces it: after
 * the stream was created anew, its sequences are no later or earlier than the old one's, and a restored
 * checkpoint of another stream is read from the new stream's start anyway (PaymentFeatureFeed.start). Serving
 * stays in memory: Score reads no table.
 */
export class FeatureCheckpoints {
  constructor(
    private readonly pool: Pool,
    /** Which feed: the stream and subject filter the features come from. */
    readonly feed: string,
  ) {}

  async load(): Promise<Checkpoint | undefined> {
    const r = await statement(this.pool, { name: 'risk-checkpoint-load', text: 'SELECT stream_seq, stream_created, state FROM risk_feature_checkpoints WHERE feed = $1', values: [this.feed] });
    const row = r.rows[0];
    if (!row) return undefined;
    return { seq: Number(row.stream_seq), streamCreated: row.stream_created as string, snapshot: JSON.parse(gunzipSync(row.state as Buffer).toString('utf8')) as FeatureSnapshot };
  }

  /** Stores `checkpoint` unless a later one of the same stream is there already; whether it was stored. */
  async save(checkpoint: Checkpoint): Promise<boolean> {
    const state = gzipSync(JSON.stringify(checkpoint.snapshot));
    const r = await statement(this.pool, {
      name: 'risk-checkpoint-save',
      text: `INSERT INTO risk_feature_checkpoints (feed, stream_seq, stream_created, state) VALUES ($1, $2, $3, $4)
             ON CONFLICT (feed) DO UPDATE
             SET stream_seq = excluded.stream_seq, stream_created = excluded.stream_created, state = excluded.state, taken_at = now()
             WHERE risk_feature_checkpoints.stream_seq < excluded.stream_seq
                OR risk_feature_checkpoints.stream_created <> excluded.stream_created`,
      values: [this.feed, checkpoint.seq, checkpoint.streamCreated, state],
    });
    return r.rowCount === 1;
  }
}
