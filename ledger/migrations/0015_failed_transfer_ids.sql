-- Transfer ids whose event failed for a reason that depends on the ledger's state at that moment (an account or
-- the pending transfer not found, a limit, a closed account, an overflow): TigerBeetle's transient failures. Such
-- an id is spent: the same event sent again is answered `id_already_failed`, never applied later, so a retry
-- after the refusal (a repeat, a resumer, a second driver of the same step) cannot move money that its first
-- answer said did not move. `code` is the first refusal, for whoever must tell why.
CREATE TABLE failed_transfer_ids (
  id UUID PRIMARY KEY,
  code TEXT NOT NULL,
  "timestamp" INT8 NOT NULL,
  shard INT4 NOT NULL
);
