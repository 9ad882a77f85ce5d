-- Settlement (settlement/README.md): the payment events it consumed, the money movements they describe on each
-- settled account, the windows those movements are gathered in, and the batches (payouts) that close them.

-- A merchant's settlement terms: when its windows end (daily at a local cut-off, or every N minutes aligned to
-- the Unix epoch) and the bank account payouts go to. A merchant without a row follows SETTLEMENT_* in the
-- configuration and has no bank account on file (its batches are made and paid to the payout clearing
-- account, but no bank file can be produced for them).
CREATE TABLE settlement_profiles (
  merchant_id UUID PRIMARY KEY REFERENCES merchants (id),
  kind TEXT NOT NULL CHECK (kind IN ('daily', 'interval')),
  -- IANA time zone of the daily cut-off.
  time_zone TEXT NOT NULL,
  -- Minutes after local midnight (daily).
  cutoff_minute INT4 NOT NULL DEFAULT 0 CHECK (cutoff_minute BETWEEN 0 AND 1439),
  interval_minutes INT4 CHECK (interval_minutes BETWEEN 1 AND 10080),
  payout_name TEXT CHECK (char_length(payout_name) BETWEEN 1 AND 140),
  payout_iban TEXT CHECK (payout_iban ~ '^[A-Z]{2}[0-9]{2}[A-Z0-9]{11,30}$'),
  payout_bic TEXT CHECK (payout_bic ~ '^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$'),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CHECK ((kind = 'interval') = (interval_minutes IS NOT NULL)),
  CHECK ((payout_iban IS NULL) = (payout_name IS NULL))
);

-- A settled account (the merchant account payments credit) and where its windows stand.
CREATE TABLE settlement_accounts (
  account_id UUID PRIMARY KEY,
  merchant_id UUID NOT NULL,
  currency TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  -- Every movement effective before this instant (ns since the Unix epoch) is in a batch; a movement that
  -- happened earlier but arrives later (a late event) is effective from here, so it lands in the next batch.
  closed_through INT8 NOT NULL,
  -- Carried into the next batch: owed to the merchant but not paid out (positive, a shortfall), or owed by the
  -- merchant (negative: refunds and fees above the captures).
  carried INT8 NOT NULL DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settlement_accounts_by_merchant ON settlement_accounts (merchant_id, currency);

-- The journal of the payment events settlement applied (payment.captured, payment.refunded), as consumed.
CREATE TABLE settlement_events (
  event_id TEXT PRIMARY KEY,
  type TEXT NOT NULL,
  payment_id UUID NOT NULL,
  operation_id UUID NOT NULL,
  account_id UUID NOT NULL,
  amount INT8 NOT NULL CHECK (amount > 0),
  fee INT8 NOT NULL CHECK (fee >= 0),
  fee_transfer_id UUID,
  occurred_at INT8 NOT NULL,
  effective_at INT8 NOT NULL,
  consumed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX settlement_events_by_account ON settlement_events (account_id, effective_at);

-- Money movements on a settled account, one per ledger transfer: a capture (credit), its platform fee (debit),
-- a refund (debit). The primary key keeps a movement in one batch, however often its event arrives.
CREATE TABLE settlement_entries (
  transfer_id UUID PRIMARY KEY,
  account_id UUID NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('capture', 'fee', 'refund')),
  amount INT8 NOT NULL CHECK (amount > 0),
  payment_id UUID NOT NULL,
  event_id TEXT NOT NULL,
  occurred_at INT8 NOT NULL,
  effective_at INT8 NOT NULL,
  batch_id UUID
);
CREATE INDEX settlement_entries_unbatched ON settlement_entries (account_id, effective_at) WHERE batch_id IS NULL;
CREATE INDEX settlement_entries_by_batch ON settlement_entries (batch_id, transfer_id);

-- A closed window of one account: its totals, and the payout transfer that paid the net out.
CREATE TABLE settlement_batches (
  id UUID PRIMARY KEY,
  merchant_id UUID NOT NULL,
  account_id UUID NOT NULL,
  currency TEXT NOT NULL,
  window_start INT8 NOT NULL,
  window_end INT8 NOT NULL CHECK (window_end > window_start),
  gross_captured INT8 NOT NULL CHECK (gross_captured >= 0),
  refunds INT8 NOT NULL CHECK (refunds >= 0),
  fees INT8 NOT NULL CHECK (fees >= 0),
  line_count INT4 NOT NULL,
  -- gross_captured - refunds - fees.
  net INT8 NOT NULL,
  carried_in INT8 NOT NULL,
  -- The account's available balance (ledger) when the batch was made.
  available INT8 NOT NULL,
  payout INT8 NOT NULL CHECK (payout >= 0),
  -- net + carried_in - payout.
  carried_out INT8 NOT NULL,
  payout_transfer_id UUID NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('payout_pending', 'paid', 'payout_failed')),
  failure_code TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CHECK (net = gross_captured - refunds - fees),
  CHECK (carried_out = net + carried_in - payout),
  UNIQUE (account_id, window_end)
);
CREATE INDEX settlement_batches_by_merchant ON settlement_batches (merchant_id, window_end DESC);
CREATE INDEX settlement_batches_pending ON settlement_batches (updated_at) WHERE status = 'payout_pending';
