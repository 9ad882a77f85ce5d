-- Reconciliation asks which of an account's ledger transfers are wallet movements settlement consumed (and did
-- not pay out), by transfer id: without this index, a scan of every event ever consumed. Its own migration: an
-- index beside a column added in the same transaction is a schema change CockroachDB may refuse.
CREATE INDEX settlement_events_by_operation ON settlement_events (operation_id);
