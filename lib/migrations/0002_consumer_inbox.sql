-- The consumers' inbox (lib/consumer.ts): one row per event a consumer has applied, written in the same
-- transaction as the event's effect, so a redelivered event finds its row and does nothing.
CREATE TABLE consumer_inbox (
  consumer TEXT NOT NULL,
  event_id TEXT NOT NULL,
  processed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer, event_id)
);
