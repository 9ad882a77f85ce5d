import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { NON_NATIONAL_CODES, approximateUsdCents, compareWithLimit, currencyCodes, hasUsdRate } from './currency.js';

describe('currencies: approximate worth in US cents', () => {
  it('every national currency and metal of ISO 4217 has a rate; only funds, units of account and test codes do not', () => {
    const codes = currencyCodes();
    assert.ok(codes.length > 150, `${codes.length} codes`);
    assert.deepEqual(codes.filter((c) => !hasUsdRate(c) && !NON_NATIONAL_CODES.has(c)), []);
    assert.deepEqual([...NON_NATIONAL_CODES].filter((c) => hasUsdRate(c)), []);
  });

  it('a currency far from the dollar is held to a limit in US cents by its worth', () => {
    // 1,000,000.00 LBP is about 11 USD: far below 10,000.00 USD, where as a dollar per unit it was a million dollars.
    assert.equal(compareWithLimit(100_000_000n, 'LBP', 1_000_000n), -1);
    assert.equal(approximateUsdCents(100_000_000n, 'RUB'), 1_100_000, 'RUB 1,000,000.00 is about 11,000 USD');
    // An ounce of gold is about 3,000 USD, not 1.
    assert.equal(approximateUsdCents(1n, 'XAU'), 300_000);
  });
});
