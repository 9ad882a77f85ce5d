-- Secret API keys of merchants: only their SHA-256 is stored (a key is 32 random bytes, so a plain hash is
-- enough: there is nothing to brute-force). A revoked key stays for the audit trail and stops working.
CREATE TABLE api_keys (
  key_hash TEXT PRIMARY KEY,
  merchant_id UUID NOT NULL REFERENCES merchants (id),
  -- The first characters of the key (sk_...): shown in listings and logs instead of the key.
  prefix TEXT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  revoked_at TIMESTAMPTZ
);
CREATE INDEX api_keys_by_merchant ON api_keys (merchant_id);

-- Idempotency-Key results per merchant (the platform admin uses the nil UUID): the first answer is kept for
-- IDEMPOTENCY_TTL_HOURS and replayed byte for byte to a retry with the same request fingerprint.
CREATE TABLE idempotency_keys (
  merchant_id UUID NOT NULL,
  key TEXT NOT NULL,
  -- SHA-256 of method, path and canonical JSON body.
  fingerprint TEXT NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('in_flight', 'done')),
  status INT4,
  body TEXT,
  -- When the request holding the key started (or took it over): an in-flight key older than the lock
  -- timeout belonged to a gateway that died and may be taken over.
  locked_at TIMESTAMPTZ NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (merchant_id, key)
);
CREATE INDEX idempotency_keys_by_age ON idempotency_keys (created_at);
