/** Kinds of payment card a card source may declare (or none): one list for the API, payments and risk's metric labels. */
export const CARD_TYPES = ['credit', 'debit', 'prepaid'] as const;
export type CardType = (typeof CARD_TYPES)[number];

/** Whether `value` is a card type, or '' (not given). */
export function isCardTypeOrNone(value: string): boolean {
  return value === '' || (CARD_TYPES as readonly string[]).includes(value);
}
