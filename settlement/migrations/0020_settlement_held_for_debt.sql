-- What a batch held back of what was due for the merchant's debt on its other settled accounts in the currency
-- (settlement/settler.ts): part of a positive carried_out, told apart from a shortfall of the account's balance.
-- Batches made before this column were not told apart: 0.
ALTER TABLE settlement_batches ADD COLUMN held_for_debt INT8 NOT NULL DEFAULT 0;
