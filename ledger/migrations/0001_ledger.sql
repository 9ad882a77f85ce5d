-- Ledger core. CockroachDB-compatible: UUID keys, no sequences, triggers, advisory locks or LISTEN/NOTIFY
-- (lib/sql-dialect.ts checks). Amounts and balances are INT8 minor units; the ledger refuses (OVERFLOW) any
-- value that would not fit. Timestamps are INT8 nanoseconds since the Unix epoch, assigned by the ledger.
-- Flag bitmasks: accounts linked=1 debits_must_not_exceed_credits=2 credits_must_not_exceed_debits=4
-- history=8 closed=16; transfers linked=1 pending=2 post_pending_transfer=4 void_pending_transfer=8.

-- One row per virtual shard: its batch clock and outbox sequence. Every batch locks its shard's row first,
-- which also fences two instances that both believe they own the shard.
-- Rows updated by every batch keep free space on their pages (fillfactor) so that PostgreSQL can update them
-- in place (HOT) instead of adding index entries, which under SERIALIZABLE turn into read/write conflicts
-- between shards. CockroachDB accepts and ignores the setting.
CREATE TABLE ledger_shards (
  shard INT4 PRIMARY KEY,
  last_timestamp INT8 NOT NULL DEFAULT 0,
  last_sequence INT8 NOT NULL DEFAULT 0
) WITH (fillfactor = 10);

-- Identity and flags of an account; never updated by transfers (no hot rows here).
CREATE TABLE accounts (
  id UUID PRIMARY KEY,
  ledger INT8 NOT NULL CHECK (ledger > 0 AND ledger <= 4294967295),
  code INT8 NOT NULL CHECK (code > 0 AND code <= 4294967295),
  flags INT4 NOT NULL,
  metadata JSONB NOT NULL DEFAULT '{}',
  "timestamp" INT8 NOT NULL,
  -- Set once any balance slot of the account may exceed the per-slot soft limit: from then on every batch
  -- reads its full balances (ledger/store.ts).
  wide BOOL NOT NULL DEFAULT false
);

-- Balances as per-shard slots (a sharded counter): a shard's batches only ever add to their own slot of an
-- account, so batches of different shards crediting one hot account never write the same row. An account's
-- balance is the sum of its slots. Slots hold deltas and may be negative when a pending transfer is resolved
-- on another shard than the one that created it (after a change of LEDGER_SHARDS); sums never are.
CREATE TABLE account_balance_slots (
  account_id UUID NOT NULL,
  shard INT4 NOT NULL,
  debits_pending INT8 NOT NULL,
  debits_posted INT8 NOT NULL,
  credits_pending INT8 NOT NULL,
  credits_posted INT8 NOT NULL,
  -- Shard first: each shard's slots sit together, apart from other shards' (fewer shared index pages, so
  -- fewer false read/write conflicts between shards under PostgreSQL's page-granular SERIALIZABLE checks).
  PRIMARY KEY (shard, account_id)
) WITH (fillfactor = 50);
CREATE INDEX account_balance_slots_by_account ON account_balance_slots (account_id);

-- Current balances: one row per account (filters on id reach the slots through the lateral join).
CREATE VIEW account_balances_current AS
SELECT a.id, a.ledger, a.code, a.flags, a.metadata, a."timestamp",
       s.debits_pending, s.debits_posted, s.credits_pending, s.credits_posted
FROM accounts a,
LATERAL (
  SELECT COALESCE(sum(debits_pending), 0)::INT8 AS debits_pending,
         COALESCE(sum(debits_posted), 0)::INT8 AS debits_posted,
         COALESCE(sum(credits_pending), 0)::INT8 AS credits_pending,
         COALESCE(sum(credits_posted), 0)::INT8 AS credits_posted
  FROM account_balance_slots WHERE account_id = a.id
) s;

CREATE TABLE transfers (
  id UUID PRIMARY KEY,
  debit_account_id UUID NOT NULL,
  credit_account_id UUID NOT NULL,
  amount INT8 NOT NULL CHECK (amount >= 0),
  pending_id UUID,
  ledger INT8 NOT NULL,
  code INT8 NOT NULL,
  flags INT4 NOT NULL,
  timeout INT8 NOT NULL DEFAULT 0,
  metadata JSONB NOT NULL DEFAULT '{}',
  "timestamp" INT8 NOT NULL,
  shard INT4 NOT NULL,
  CHECK (debit_account_id <> credit_account_id)
);
CREATE INDEX transfers_by_debit_account ON transfers (debit_account_id, "timestamp", id);
CREATE INDEX transfers_by_credit_account ON transfers (credit_account_id, "timestamp", id);

-- The state of every pending transfer: 1 pending, 2 posted, 3 voided, 4 expired. A pending amount moves out
-- of state 1 at most once.
CREATE TABLE pending_transfers (
  id UUID PRIMARY KEY,
  debit_account_id UUID NOT NULL,
  credit_account_id UUID NOT NULL,
  amount INT8 NOT NULL CHECK (amount > 0),
  ledger INT8 NOT NULL,
  code INT8 NOT NULL,
  expires_at INT8 NOT NULL DEFAULT 0,
  state INT2 NOT NULL CHECK (state IN (1, 2, 3, 4)),
  shard INT4 NOT NULL,
  resolved_by UUID,
  resolved_at INT8
);
CREATE INDEX pending_transfers_expiry ON pending_transfers (shard, expires_at) WHERE state = 1 AND expires_at > 0;

-- Balance after every change, for accounts with the history flag. transfer_id is the pending transfer's id
-- for an expiry.
CREATE TABLE account_balances (
  account_id UUID NOT NULL,
  "timestamp" INT8 NOT NULL,
  transfer_id UUID NOT NULL,
  debits_pending INT8 NOT NULL,
  debits_posted INT8 NOT NULL,
  credits_pending INT8 NOT NULL,
  credits_posted INT8 NOT NULL,
  PRIMARY KEY (account_id, "timestamp", transfer_id)
);

-- Transactional outbox, written in the batch transaction: a committed ledger batch's events as
-- events.v1.EventBatch messages of at most 2,048 events (NATS limits a message to 1 MiB), one row each
-- (`part` 0, 1, ...). The relay publishes a shard's rows in sequence order, with `batch_id.part` as the
-- message's dedupe id, and deletes them once JetStream has acknowledged them.
CREATE TABLE outbox (
  shard INT4 NOT NULL,
  sequence INT8 NOT NULL,
  batch_id UUID NOT NULL,
  part INT4 NOT NULL,
  event_count INT4 NOT NULL,
  payload BYTEA NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (shard, sequence),
  UNIQUE (batch_id, part)
);
