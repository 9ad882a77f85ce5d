import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { compareWithLimit } from '../lib/currency.js';
import { Decision, type ScoreRequest } from '../proto/gen/risk/v1/risk.js';
import { RULE_WEIGHTS, RulesScorer, VelocityWindow } from './rules.js';

const settings = { maxAmount: 100_000n, velocityMax: 3, velocityWindowMs: 60_000, declineThresholdPpm: 800_000, reviewThresholdPpm: 500_000 };

function request(fields: Partial<ScoreRequest> = {}): ScoreRequest {
  return {
    paymentId: '',
    merchantId: '11111111-1111-4111-8111-111111111111',
    customerId: '',
    amount: 1_000n,
    currency: 'USD',
    cardFingerprint: '',
    deviceId: '',
    cardCountry: '',
    ipCountry: '',
    cardType: '',
    merchantCategory: '',
    ...fields,
  };
}

describe('risk rules-only scorer', () => {
  it('approves an ordinary payment with no reasons', () => {
    assert.deepEqual(new RulesScorer(settings).score(request()), { scorePpm: 0, decision: Decision.DECISION_APPROVE, reasons: [], modelVersion: 'rules-v1' });
  });

  it('declines above the amount limit (at the limit is fine)', () => {
    const scorer = new RulesScorer(settings);
    assert.equal(scorer.score(request({ amount: 100_000n })).decision, Decision.DECISION_APPROVE);
    const above = scorer.score(request({ amount: 100_001n }));
    assert.deepEqual([above.decision, above.reasons, above.scorePpm], [Decision.DECISION_DECLINE, ['amount_above_limit'], RULE_WEIGHTS.amount_above_limit]);
  });

  it('takes the amount limit of the payment\'s currency where one is set: minor units of JPY or IDR are not cents', () => {
    const scorer = new RulesScorer({ ...settings, maxAmountByCurrency: new Map([['IDR', 150_000_000n], ['JPY', 15_000n]]) });
    // 1,000,000.00 IDR (about 60 USD) is far below its limit, though far above the default's number.
    assert.equal(scorer.score(request({ amount: 100_000_000n, currency: 'IDR' })).decision, Decision.DECISION_APPROVE);
    assert.deepEqual(scorer.score(request({ amount: 150_000_001n, currency: 'IDR' })).reasons, ['amount_above_limit']);
    assert.deepEqual(scorer.score(request({ amount: 15_001n, currency: 'JPY' })).reasons, ['amount_above_limit']);
    // Currencies not named are compared by their approximate worth in US cents with the default (1,000.00 USD here).
    assert.deepEqual(scorer.score(request({ amount: 95_000n, currency: 'EUR' })).reasons, ['amount_above_limit'], '950.00 EUR is about 1,026 USD');
    assert.deepEqual(scorer.score(request({ amount: 90_000n, currency: 'EUR' })).reasons, [], '900.00 EUR is about 972 USD');
  });

  it('a currency without a limit of its own is held to the default by its worth, not by its number of minor units', () => {
    const scorer = new RulesScorer(settings); // 100,000: 1,000.00 USD
    // 1,000,000.00 IDR (about 63 USD) and 120,000 JPY (about 804 USD) pass; 20,000,000.00 IDR (about 1,260 USD) and
    // 160,000 JPY (about 1,072 USD) do not. As minor units against 100,000, all four were above the limit.
    assert.deepEqual(scorer.score(request({ amount: 100_000_000n, currency: 'IDR' })).reasons, []);
    assert.deepEqual(scorer.score(request({ amount: 120_000n, currency: 'JPY' })).reasons, []);
    assert.deepEqual(scorer.score(request({ amount: 2_000_000_000n, currency: 'IDR' })).reasons, ['amount_above_limit']);
    assert.deepEqual(scorer.score(request({ amount: 160_000n, currency: 'JPY' })).reasons, ['amount_above_limit']);
  });

  it('a converted amount is compared by its worth, not by its worth rounded to a cent: above is above, below is below', () => {
    // 1,492,538 JPY is 1,000,000.46 US cents at the table's rate: above a limit of 1,000,000 (rounded, it was "at" it).
    const scorer = new RulesScorer({ ...settings, maxAmount: 1_000_000n });
    assert.deepEqual(scorer.score(request({ amount: 1_492_538n, currency: 'JPY' })).reasons, ['amount_above_limit']);
    assert.deepEqual(scorer.score(request({ amount: 1_492_537n, currency: 'JPY' })).reasons, [], '999,999.79 cents');
    // The fail-open comparison: 7,462 JPY is 4,999.54 cents, below 5,000 (rounded, it was at it and failed closed).
    assert.equal(compareWithLimit(7_462n, 'JPY', 5_000n), -1);
    assert.equal(compareWithLimit(7_463n, 'JPY', 5_000n), 1, '5,000.21 cents');
    // US cents (and codes outside ISO 4217, taken as cents) compare exactly, beyond 2^53 too.
    assert.equal(compareWithLimit(5_000n, 'USD', 5_000n), 0);
    assert.equal(compareWithLimit(9_007_199_254_740_993n, 'USD', 9_007_199_254_740_993n), 0);
    assert.equal(compareWithLimit(9_007_199_254_740_993n, '', 9_007_199_254_740_992n), 1);
  });

  it('a currency without minor units outside the big ones (XOF, XAF, UGX...) is not taken as a dollar a unit against the limits', () => {
    // 100,000 XOF is about 165 USD, 1,000,000 UGX about 270 USD: far below the default limit (10,000.00 USD). A unit
    // taken as a dollar, they were 100,000 and 1,000,000 dollars (and 10,001 XOF, 16 USD, above the limit).
    const scorer = new RulesScorer({ ...settings, maxAmount: 1_000_000n });
    for (const [amount, currency] of [[100_000n, 'XOF'], [100_000n, 'XAF'], [1_000_000n, 'UGX'], [1_000_000n, 'PYG'], [10_000n, 'XPF']] as const) {
      assert.deepEqual(scorer.score(request({ amount, currency })).reasons, [], `${amount} ${currency}`);
    }
    // Fail-open (10,000: 100.00 USD): 20,000 XOF (about 33 USD) is below it, 100,000 XOF (about 165 USD) is not.
    assert.equal(compareWithLimit(20_000n, 'XOF', 10_000n), -1);
    assert.equal(compareWithLimit(100_000n, 'XOF', 10_000n), 1);
  });

  it('sends a card past its velocity to review, across merchants, and a country mismatch on top declines', () => {
    const scorer = new RulesScorer(settings);
    const card = (merchantId: string, at: number, extra: Partial<ScoreRequest> = {}) => scorer.score(request({ merchantId, cardFingerprint: 'fp', ...extra }), at);
    assert.equal(card('11111111-1111-4111-8111-111111111111', 0).decision, Decision.DECISION_APPROVE);
    assert.equal(card('22222222-2222-4222-8222-222222222222', 1).decision, Decision.DECISION_APPROVE);
    assert.equal(card('33333333-3333-4333-8333-333333333333', 2).decision, Decision.DECISION_APPROVE);
    const fourth = card('44444444-4444-4444-8444-444444444444', 3);
    assert.deepEqual([fourth.decision, fourth.reasons], [Decision.DECISION_REVIEW, ['card_velocity']]);
    const both = card('44444444-4444-4444-8444-444444444444', 4, { cardCountry: 'US', ipCountry: 'RU' });
    assert.deepEqual([both.decision, both.reasons, both.scorePpm], [Decision.DECISION_DECLINE, ['card_velocity', 'country_mismatch'], 900_000]);
  });

  it('counts customers per merchant, devices across merchants', () => {
    const scorer = new RulesScorer({ ...settings, velocityMax: 1 });
    scorer.score(request({ customerId: 'c1' }), 0);
    assert.deepEqual(scorer.score(request({ customerId: 'c1', merchantId: '22222222-2222-4222-8222-222222222222' }), 1).reasons, []);
    assert.deepEqual(scorer.score(request({ customerId: 'c1' }), 2).reasons, ['customer_velocity']);
    scorer.score(request({ deviceId: 'd1' }), 3);
    assert.deepEqual(scorer.score(request({ deviceId: 'd1', merchantId: '22222222-2222-4222-8222-222222222222' }), 4).reasons, ['device_velocity']);
  });

  it('the score is capped at 1,000,000 and never falls when another rule fires', () => {
    const scorer = new RulesScorer({ ...settings, velocityMax: 0 });
    const all = scorer.score(request({ amount: 1_000_000n, cardFingerprint: 'f', customerId: 'c', deviceId: 'd', cardCountry: 'US', ipCountry: 'FR' }));
    assert.equal(all.scorePpm, 1_000_000);
    assert.deepEqual(all.reasons, ['amount_above_limit', 'card_velocity', 'customer_velocity', 'device_velocity', 'country_mismatch']);
  });

  it('the velocity window slides, and forgets the least recently seen key beyond its capacity', () => {
    const window = new VelocityWindow(1_000, 2);
    assert.equal(window.record('a', 0), 1);
    assert.equal(window.record('a', 999), 2);
    assert.equal(window.record('a', 1_500), 2, 'the one at 0 left the window');
    window.record('b', 1_600);
    window.record('a', 1_700); // a is now the most recently seen
    window.record('c', 1_800); // evicts b
    assert.equal(window.trackedKeys, 2);
    assert.equal(window.record('b', 1_900), 1, 'b was forgotten');
    assert.equal(window.record('c', 1_950), 2, 'c was kept');
  });

  it('a burst on one key keeps at most velocityMax + 1 of its payments (each Score costs the same); the rule still fires, and slides', () => {
    // record() counts what the key holds: bounded by maxCount however long the burst (it copied all 20,000).
    const window = new VelocityWindow(3_600_000, 10, 4);
    const counts = Array.from({ length: 20_000 }, (_, i) => window.record('hammer', i));
    assert.deepEqual([counts[0], counts[2], Math.max(...counts)], [1, 3, 4]);
    const scorer = new RulesScorer({ ...settings, velocityWindowMs: 3_600_000 });
    let last = scorer.score(request({ deviceId: 'hammer' }), 0);
    for (let i = 1; i < 20_000; i++) last = scorer.score(request({ deviceId: 'hammer' }), i);
    assert.deepEqual(last.reasons, ['device_velocity']);
    assert.deepEqual(scorer.score(request({ deviceId: 'hammer' }), 20_000 + 3_600_000).reasons, [], 'the burst left the window');
  });
});
