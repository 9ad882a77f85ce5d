import cc from 'currency-codes';
import { ValidationError } from './errors.js';

export interface Currency {
  /** ISO 4217 alphabetic code, e.g. USD. */
  code: string;
  /** ISO 4217 numeric code: the ledger id of the currency (USD = 840). */
  ledger: number;
  /** Digits after the decimal point: amounts are integers in units of 10^-digits. */
  digits: number;
}

const byCode = new Map<string, Currency>();
for (const record of cc.data) {
  const ledger = Number(record.number);
  // Funds and precious metals without a minor unit ("digits" 0 with no meaning) are still currencies; only
  // codes without a numeric code cannot be a ledger.
  if (Number.isInteger(ledger) && ledger > 0) byCode.set(record.code, { code: record.code, ledger, digits: record.digits });
}
const byLedger = new Map([...byCode.values()].map((c) => [c.ledger, c]));

export function isCurrencyCode(code: string): boolean {
  return byCode.has(code);
}

/** The currency of an ISO 4217 code, or a ValidationError naming `field`. */
export function currencyOf(code: string, field = 'currency'): Currency {
  const currency = byCode.get(code);
  if (!currency) throw new ValidationError(field, `${JSON.stringify(code)} is not an ISO 4217 currency code`, 'invalid_currency');
  return currency;
}

/** The currency whose numeric code is `ledger`, if any. */
export function currencyOfLedger(ledger: number): Currency | undefined {
  return byLedger.get(ledger);
}

/** A minor-unit amount as a decimal string in major units (1234 USD -> "12.34"), exactly: no floating point. */
export function formatMajor(amount: bigint, currency: Currency): string {
  const sign = amount < 0n ? '-' : '';
  const digits = (amount < 0n ? -amount : amount).toString().padStart(currency.digits + 1, '0');
  if (currency.digits === 0) return sign + digits;
  return `${sign}${digits.slice(0, -currency.digits)}.${digits.slice(-currency.digits)}`;
}

/**
 * Approximate US dollars per major unit of every national currency and precious metal of ISO 4217 (mid-market,
 * 2025-2026; the unstable ones, such as VES, SSP or LBP, drift fastest: name them in the per-currency limits). The
 * model's amount features are logarithms, so a rate off by 20% moves log_amount by 0.2 where the spread between
 * an ordinary and a large payment is 3 to 5: approximate rates are enough, and a currency's features no longer
 * depend on how many minor units its nominal values run to. Only funds, units of account and test codes are left
 * out (NON_NATIONAL_CODES; lib/currency.test.ts holds every other code to a rate).
 */
const USD_PER_MAJOR_UNIT: Readonly<Record<string, number>> = {
  USD: 1, EUR: 1.08, GBP: 1.27, CHF: 1.13, JPY: 0.0067, CNY: 0.14, HKD: 0.128, TWD: 0.031, SGD: 0.74, AUD: 0.66,
  NZD: 0.6, CAD: 0.73, SEK: 0.095, NOK: 0.093, DKK: 0.145, ISK: 0.0072, PLN: 0.25, CZK: 0.043, HUF: 0.0027,
  RON: 0.22, BGN: 0.55, TRY: 0.03, UAH: 0.024, INR: 0.012, PKR: 0.0036, BDT: 0.0083, IDR: 0.000063, KRW: 0.00073,
  VND: 0.00004, THB: 0.028, PHP: 0.017, MYR: 0.22, BRL: 0.18, MXN: 0.055, ARS: 0.001, CLP: 0.00105, COP: 0.00024,
  PEN: 0.27, ZAR: 0.054, NGN: 0.00065, KES: 0.0077, EGP: 0.02, MAD: 0.1, AED: 0.272, SAR: 0.267, QAR: 0.275,
  ILS: 0.27, KWD: 3.25, BHD: 2.65, JOD: 1.41, OMR: 2.6, TND: 0.32,
  // Every national currency without minor units: taken by its exponent alone (a unit as a dollar) one was worth
  // 100 to 10,000 times its value, and the default limits held 10,000 XOF (16 USD) as 10,000 USD.
  XOF: 0.00165, XAF: 0.00165, XPF: 0.0091, UGX: 0.00027, PYG: 0.000127, RWF: 0.0007, GNF: 0.000116, KMF: 0.0022,
  DJF: 0.0056, VUV: 0.0083, BIF: 0.00034,
  // The rest of the world's currencies: taken as a dollar per major unit, 1,000,000.00 LBP (about 11 USD) counted as
  // a million dollars.
  AFN: 0.014, ALL: 0.011, AMD: 0.0026, ANG: 0.56, AOA: 0.0011, AWG: 0.56, AZN: 0.59, BAM: 0.55, BBD: 0.5, BMD: 1,
  BND: 0.74, BOB: 0.145, BSD: 1, BTN: 0.012, BWP: 0.074, BYN: 0.31, BZD: 0.5, CDF: 0.00035, CRC: 0.002, CUC: 1,
  CUP: 0.042, CVE: 0.0098, DOP: 0.0165, DZD: 0.0074, ERN: 0.067, ETB: 0.008, FJD: 0.44, FKP: 1.27, GEL: 0.37,
  GHS: 0.07, GIP: 1.27, GMD: 0.014, GTQ: 0.13, GYD: 0.0048, HNL: 0.039, HTG: 0.0076, IQD: 0.00076, IRR: 0.000024,
  JMD: 0.0064, KGS: 0.0115, KHR: 0.00025, KPW: 0.0011, KYD: 1.2, KZT: 0.002, LAK: 0.000046, LBP: 0.0000112,
  LKR: 0.0033, LRD: 0.005, LSL: 0.054, LYD: 0.18, MDL: 0.056, MGA: 0.00022, MKD: 0.0176, MMK: 0.00048,
  MNT: 0.00029, MOP: 0.124, MRU: 0.025, MUR: 0.022, MVR: 0.065, MWK: 0.00058, MZN: 0.0157, NAD: 0.054, NIO: 0.027,
  NPR: 0.0074, PAB: 1, PGK: 0.25, RSD: 0.0093, RUB: 0.011, SBD: 0.12, SCR: 0.07, SDG: 0.0017, SHP: 1.27,
  SLE: 0.044, SOS: 0.00175, SRD: 0.028, SSP: 0.00022, STN: 0.044, SVC: 0.114, SYP: 0.000077, SZL: 0.054,
  TJS: 0.094, TMT: 0.285, TOP: 0.42, TTD: 0.147, TZS: 0.00038, UYU: 0.025, UZS: 0.000079, VED: 0.007, VES: 0.007,
  WST: 0.36, XCD: 0.37, YER: 0.004, ZMW: 0.037, ZWG: 0.037,
  // Precious metals (a troy ounce) and the IMF's SDR: as a dollar per unit, an ounce of gold was worth 1 USD.
  XAU: 3_000, XAG: 33, XPT: 1_000, XPD: 1_000, XDR: 1.35,
};

/**
 * ISO 4217 codes that are no national currency or metal: funds (BOV, CHE, CHW, CLF, COU, MXV, USN, UYI, UYW), the
 * bond-market units (XBA-XBD), the SUCRE and ADB units (XSU, XUA), the test and "no currency" codes (XTS, XXX).
 * They have no rate: taken as a dollar per major unit.
 */
export const NON_NATIONAL_CODES: ReadonlySet<string> = new Set(['BOV', 'CHE', 'CHW', 'CLF', 'COU', 'MXV', 'USN', 'UYI', 'UYW', 'XBA', 'XBB', 'XBC', 'XBD', 'XSU', 'XUA', 'XTS', 'XXX']);

/** Whether the approximate conversion has a rate for `code` (the rest are taken as a dollar per major unit). */
export function hasUsdRate(code: string): boolean {
  return code in USD_PER_MAJOR_UNIT;
}

/** Every ISO 4217 code this build knows (with a numeric code: a ledger). */
export function currencyCodes(): string[] {
  return [...byCode.keys()];
}

/**
 * An amount as US cents, approximately: what the risk model's features and the default risk limits compare across
 * currencies. In minor units as sent, 1,000,000.00 IDR (about 63 USD) was 100,000,000, the log amount of a
 * million-dollar payment, and every ordinary payment in IDR, VND or KRW looked like an outlier to a model trained on
 * cents (and was above a limit meant as 10,000.00 USD). A currency outside the
 * table is taken by its exponent alone (a major unit as one dollar); an empty or unknown code as US cents.
 */
export function approximateUsdCents(amount: bigint, currency: string): number {
  return Math.round(worthInUsdCents(amount, currency) ?? Number(amount));
}

/** An amount's approximate worth in US cents, unrounded; undefined when it is in US cents already (USD, or no known code). */
function worthInUsdCents(amount: bigint, currency: string): number | undefined {
  if (currency === 'USD' || !isCurrencyCode(currency)) return undefined;
  const { digits } = currencyOf(currency);
  return (Number(amount) / 10 ** digits) * (USD_PER_MAJOR_UNIT[currency] ?? 1) * 100;
}

/**
 * How an amount compares with a limit (-1 below, 0 at, 1 above): the limit set for its currency (`byCurrency`, in
 * that currency's minor units), else `usdCents` against the amount's approximate worth in US cents. One number of
 * minor units for every currency was 10,000.00 USD, 1,000,000 JPY and 10,000.00 IDR (0.63 USD) at once.
 */
export function compareWithLimit(amount: bigint, currency: string, usdCents: bigint, byCurrency?: ReadonlyMap<string, bigint>): -1 | 0 | 1 {
  const own = byCurrency?.get(currency);
  // The worth unrounded: rounded to a cent, a payment up to half a cent above the limit was "at" it (no
  // amount_above_limit), and one up to half a cent below it was too (failed closed). Amounts already in cents
  // compare exactly, as bigints.
  const worth = own === undefined ? worthInUsdCents(amount, currency) : undefined;
  const [value, limit] = worth !== undefined ? [worth, Number(usdCents)] : [amount, own ?? usdCents];
  return value < limit ? -1 : value > limit ? 1 : 0;
}
