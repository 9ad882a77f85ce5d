import { currencyOf, isCurrencyCode } from '../../lib/currency.js';

/**
 * Approximate US dollars per major unit of the currencies most payments are in (mid-market, 2025-2026). The
 * model's amount features are logarithms, so a rate off by 20% moves log_amount by 0.2 where the spread between
 * an ordinary and a large payment is 3 to 5: approximate rates are enough, and a currency's features no longer
 * depend on how many minor units its nominal values run to.
 */
const USD_PER_MAJOR_UNIT: Readonly<Record<string, number>> = {
  USD: 1, EUR: 1.08, GBP: 1.27, CHF: 1.13, JPY: 0.0067, CNY: 0.14, HKD: 0.128, TWD: 0.031, SGD: 0.74, AUD: 0.66,
  NZD: 0.6, CAD: 0.73, SEK: 0.095, NOK: 0.093, DKK: 0.145, ISK: 0.0072, PLN: 0.25, CZK: 0.043, HUF: 0.0027,
  RON: 0.22, BGN: 0.55, TRY: 0.03, UAH: 0.024, INR: 0.012, PKR: 0.0036, BDT: 0.0083, IDR: 0.000063, KRW: 0.00073,
  VND: 0.00004, THB: 0.028, PHP: 0.017, MYR: 0.22, BRL: 0.18, MXN: 0.055, ARS: 0.001, CLP: 0.00105, COP: 0.00024,
  PEN: 0.27, ZAR: 0.054, NGN: 0.00065, KES: 0.0077, EGP: 0.02, MAD: 0.1, AED: 0.272, SAR: 0.267, QAR: 0.275,
  ILS: 0.27, KWD: 3.25, BHD: 2.65, JOD: 1.41, OMR: 2.6, TND: 0.32,
};

/**
 * A payment's amount as US cents, approximately: what the features compare across payments. In minor units as
 * sent, 1,000,000.00 IDR (about 63 USD) was 100,000,000, the log amount of a million-dollar payment, and every
 * ordinary payment in IDR, VND or KRW looked like an outlier to a model trained on cents. A currency outside the
 * table is taken by its exponent alone (a major unit as one dollar); an empty or unknown code as US cents.
 */
export function comparableAmount(amount: bigint, currency: string): number {
  if (currency === 'USD' || !isCurrencyCode(currency)) return Number(amount);
  const { digits } = currencyOf(currency);
  return Math.round((Number(amount) / 10 ** digits) * (USD_PER_MAJOR_UNIT[currency] ?? 1) * 100);
}
