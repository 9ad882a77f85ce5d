-- Answers of merchant creations kept for Idempotency-Key replays before they were sealed held the new secret
-- key in plain text: forget them (a replay of such a key now finds nothing and runs as a new request).
DELETE FROM idempotency_keys WHERE body LIKE '%"secret_key"%';
