-- The part of a batch's payout the ledger did not move (settlement/settler.ts): the payout is a balancing debit, so a
-- debit of the account between the batch and its payout (a refund meanwhile) makes it move less, never overdraw the
-- account. `payout` is then what moved, and this part is carried to the account's next batch. Before: 0.
ALTER TABLE settlement_batches ADD COLUMN payout_short INT8 NOT NULL DEFAULT 0;
