-- Facts fraud scoring uses: the merchant's category (a prior of fraud exposure), kept on each payment as it
-- was when the payment was made, and the card's type.
ALTER TABLE merchants ADD COLUMN category TEXT NOT NULL DEFAULT 'general';
ALTER TABLE payments ADD COLUMN card_type TEXT;
ALTER TABLE payments ADD COLUMN merchant_category TEXT;
