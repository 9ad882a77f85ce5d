import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import type { ScoreRequest } from '../../proto/gen/risk/v1/risk.js';
import { approximateUsdCents } from '../../lib/currency.js';
import { FeatureStore } from './features.js';
import { factsFromScore } from './serving.js';

describe('risk features: amounts compared across currencies', () => {
  const request = (amount: bigint, currency: string): ScoreRequest => ({
    paymentId: 'p', merchantId: 'm', customerId: 'c', amount, currency, cardFingerprint: 'fp', deviceId: 'd', cardCountry: 'ID', ipCountry: 'ID', cardType: 'debit', merchantCategory: 'general',
  });
  const logAmount = (amount: bigint, currency: string) => new FeatureStore().features(factsFromScore(request(amount, currency), 0))[0]!;

  it('an ordinary payment in a currency of large nominal values has the amount features of its value, not of its minor units', () => {
    // 1,000,000.00 IDR, 1,500,000 VND, 80,000 KRW: each about 60 USD, like 6,000 US cents.
    const usd = logAmount(6_000n, 'USD');
    for (const [amount, currency] of [[100_000_000n, 'IDR'], [1_500_000n, 'VND'], [80_000n, 'KRW'], [9_000n, 'JPY'], [5_500n, 'EUR'], [18_500n, 'KWD']] as const) {
      const feature = logAmount(amount, currency);
      assert.ok(Math.abs(feature - usd) < 0.35, `${amount} ${currency}: log amount ${feature.toFixed(2)} against ${usd.toFixed(2)} for 60.00 USD`);
    }
  });

  it('US cents are taken as they are; a currency outside the rate table by its exponent; an unknown code as cents', () => {
    assert.equal(approximateUsdCents(123_456n, 'USD'), 123_456);
    assert.equal(approximateUsdCents(123_456n, ''), 123_456);
    assert.equal(approximateUsdCents(10_000n, 'CLF'), 100, 'CLF (a unit of account, no rate) has 4 decimals: 10,000 as 1 major unit, a dollar');
  });
});
