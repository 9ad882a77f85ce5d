-- Whether an event's payment was paid by card (money the platform received through card clearing) or from a
-- wallet account of the merchant (the merchant's own books, which may be funded from an account allowed to go
-- negative): only card money is paid out, so a wallet payment or refund makes no capture or refund entry.
-- Events journaled before this were all settled as card money.
ALTER TABLE settlement_events ADD COLUMN card_funded BOOL NOT NULL DEFAULT true;
