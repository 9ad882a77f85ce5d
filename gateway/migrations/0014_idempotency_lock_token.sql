-- Which request holds an in-flight key. A request whose lock went stale (its gateway looked dead) loses the key
-- to the retry that takes it over; if it was only slow, its late release or completion must not touch the key
-- the retry now holds. Each holder gets its own token; release and completion name it.
ALTER TABLE idempotency_keys ADD COLUMN lock_token UUID;
