-- Payments on the ledger. A payment's steps (authorize, capture, cancel, refund) are payment_operations: each
-- is recorded `processing` before its ledger transfers are submitted (their ids derive from the operation id,
-- so submitting again is harmless) and finished together with the payment row and its outbox event in one
-- transaction. A crash in between leaves `processing` rows that a retry or the resumer drives to the end.
CREATE TABLE payments (
  id UUID PRIMARY KEY,
  merchant_id UUID NOT NULL REFERENCES merchants (id),
  -- The caller's Idempotency-Key (the id derives from it); NULL when the caller sent none.
  idempotency_key TEXT,
  amount INT8 NOT NULL CHECK (amount > 0),
  currency TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  capture_method TEXT NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
  source_kind TEXT NOT NULL CHECK (source_kind IN ('account', 'card')),
  -- The ledger account debited: the wallet, or the platform's card clearing account of the currency.
  source_account_id UUID NOT NULL,
  card_fingerprint TEXT,
  card_country TEXT,
  destination_account_id UUID NOT NULL,
  customer_id TEXT,
  device_id TEXT,
  ip_country TEXT,
  status TEXT NOT NULL CHECK (status IN ('processing', 'requires_capture', 'succeeded', 'canceled', 'declined', 'partially_refunded', 'refunded')),
  amount_captured INT8 NOT NULL DEFAULT 0,
  amount_refunded INT8 NOT NULL DEFAULT 0,
  fee_bps INT4 NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
  fee INT8 NOT NULL DEFAULT 0,
  decline_code TEXT,
  decline_reason TEXT,
  risk_outcome TEXT NOT NULL CHECK (risk_outcome IN ('scored', 'fail_open', 'fail_closed')),
  risk_score_ppm INT4 NOT NULL,
  risk_decision TEXT NOT NULL,
  risk_reasons JSONB NOT NULL,
  risk_model_version TEXT NOT NULL,
  metadata JSONB NOT NULL,
  -- Events emitted so far: the payment events' per-aggregate sequence.
  version INT8 NOT NULL DEFAULT 0,
  -- Nanoseconds since the Unix epoch.
  created_at INT8 NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CHECK (amount_captured <= amount AND amount_refunded <= amount_captured AND fee <= amount_captured),
  UNIQUE (merchant_id, idempotency_key)
);
CREATE INDEX payments_by_merchant ON payments (merchant_id, created_at DESC, id DESC);

CREATE TABLE payment_operations (
  -- Also the id of the step's main ledger transfer (the refund's id is the refund's).
  id UUID PRIMARY KEY,
  payment_id UUID NOT NULL REFERENCES payments (id),
  merchant_id UUID NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('authorize', 'capture', 'cancel', 'refund')),
  amount INT8 NOT NULL CHECK (amount >= 0),
  fee INT8 NOT NULL DEFAULT 0,
  status TEXT NOT NULL CHECK (status IN ('processing', 'succeeded', 'failed')),
  failure_code TEXT,
  idempotency_key TEXT,
  metadata JSONB NOT NULL,
  created_at INT8 NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX payment_operations_by_payment ON payment_operations (payment_id, kind);
CREATE INDEX payment_operations_processing ON payment_operations (updated_at) WHERE status = 'processing';
CREATE UNIQUE INDEX payment_refunds_by_key ON payment_operations (merchant_id, idempotency_key) WHERE kind = 'refund';
