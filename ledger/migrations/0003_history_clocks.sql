-- The last timestamp at which a batch recorded balances of a history account. Batches of different shards
-- that record history for the same account both lock and advance its row, so they serialize: the later one
-- reads the earlier one's balances and takes a later timestamp. Without it a batch whose net change on the
-- account is zero writes no row of it, and could record balances older than another shard's commit under a
-- later timestamp (history going backwards).
CREATE TABLE account_history_clocks (
  account_id UUID PRIMARY KEY,
  last_timestamp INT8 NOT NULL
);
