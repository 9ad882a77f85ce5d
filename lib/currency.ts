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
