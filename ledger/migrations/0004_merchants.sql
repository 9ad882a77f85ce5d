-- Merchants and the ledger accounts they own, shared by the gateway (which creates them and checks ownership)
-- and the payment service (fees, wallets, balance accounts).
CREATE TABLE merchants (
  id UUID PRIMARY KEY,
  name TEXT NOT NULL CHECK (char_length(name) BETWEEN 1 AND 200),
  -- Platform fee on each capture, basis points.
  fee_bps INT4 NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Which merchant owns a ledger account, and what the account is for: `wallet` (a customer's funds, cannot be
-- overdrawn), `balance` (the merchant's own funds; payments are credited here), or `custom` (created through
-- POST /v1/accounts with the merchant's own flags). Platform accounts (card clearing, fee revenue, payout
-- clearing) belong to no merchant and have no row.
CREATE TABLE merchant_accounts (
  account_id UUID PRIMARY KEY,
  merchant_id UUID NOT NULL REFERENCES merchants (id),
  currency TEXT NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
  purpose TEXT NOT NULL CHECK (purpose IN ('wallet', 'balance', 'custom')),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX merchant_accounts_by_merchant ON merchant_accounts (merchant_id, currency, purpose);
