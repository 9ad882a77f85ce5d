-- Which stream a checkpoint's sequence counts in: its creation time as NATS reports it (RFC 3339, kept as
-- text to compare exactly). A stream created anew (NATS back without its store) numbers its messages from 1
-- again, so a sequence of another stream says nothing about where to resume. Checkpoints taken before this
-- column existed name no stream ('') and are read as another stream's.
ALTER TABLE risk_feature_checkpoints ADD COLUMN stream_created TEXT NOT NULL DEFAULT '';
