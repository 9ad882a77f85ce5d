/** What a merchant sells, as the platform records it: fraud scoring uses it as a prior of fraud exposure. */
export const MERCHANT_CATEGORIES = ['general', 'grocery', 'restaurants', 'travel', 'electronics', 'gift_cards', 'clothing', 'digital_goods'] as const;
export type MerchantCategory = (typeof MERCHANT_CATEGORIES)[number];
