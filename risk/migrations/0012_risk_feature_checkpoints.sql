-- Checkpoints of the risk service's online feature store (risk/ml/feature-checkpoints.ts): its state after the
-- events of a feed up to a stream sequence, so that an instance starts from there instead of replaying the
-- stream, and keeps what the stream's retention has already dropped.
CREATE TABLE risk_feature_checkpoints (
  -- The stream and subject filter the features were computed from.
  feed TEXT PRIMARY KEY,
  -- The last stream message applied.
  stream_seq INT8 NOT NULL CHECK (stream_seq > 0),
  -- gzip of the FeatureStore snapshot (JSON).
  state BYTEA NOT NULL,
  taken_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
