import assert from 'node:assert/strict';
import type { Meter } from '@opentelemetry/api';
import { describe, it } from 'mocha';
import { createLogger } from '../../lib/logger.js';
import { EventBatch } from '../../proto/gen/events/v1/events.js';
import { Decision, type ScoreRequest, type ScoreResponse } from '../../proto/gen/risk/v1/risk.js';
import { ChampionChallenger, assignmentKey, bucketOf, trialBucketOf } from './rollout.js';
import { MonitoredScorer } from './score-monitor.js';

const request = (customerId: string): ScoreRequest => ({
  paymentId: `p-${customerId}`,
  merchantId: '11111111-1111-4111-8111-111111111111',
  customerId,
  amount: 500n,
  currency: 'USD',
  cardFingerprint: '',
  deviceId: '',
  cardCountry: '',
  ipCountry: '',
  cardType: '',
  merchantCategory: '',
});
/** A scorer that always answers the same: the rollout logic, not a model, is under test here. */
const fixed = (scorePpm: number, decision: Decision, modelVersion: string) => ({ score: (): ScoreResponse => ({ scorePpm, decision, reasons: [], modelVersion }) });

describe('risk rollout: champion/challenger', () => {
  it('assigns a customer to the same bucket every time, and the split matches the configured share', () => {
    assert.equal(bucketOf('m:alice'), bucketOf('m:alice'));
    const keys = Array.from({ length: 20_000 }, (_, i) => assignmentKey(request(`customer-${i}`)));
    const share = keys.filter((k) => bucketOf(k) < 10).length / keys.length;
    assert.ok(Math.abs(share - 0.1) < 0.01, `share ${share}`);
  });

  it('split: the challenger decides for its share; shadow: never; every decision is published with both scores', () => {
    const published: Uint8Array[] = [];
    const make = (mode: 'split' | 'shadow') =>
      new ChampionChallenger(fixed(100_000, Decision.DECISION_APPROVE, 'champ-1'), fixed(900_000, Decision.DECISION_DECLINE, 'chall-2'), mode, 30, (_s, payload) => published.push(payload), 'x.risk.decisions', createLogger('t', 'silent'));
    const split = make('split');
    const customers = Array.from({ length: 2_000 }, (_, i) => `c${i}`);
    for (const c of customers) {
      const answer = split.score(request(c));
      const expected = trialBucketOf('chall-2', request(c)) < 30 ? 'chall-2' : 'champ-1';
      assert.equal(answer.modelVersion, expected);
      assert.equal(split.score(request(c)).modelVersion, expected, 'stable for the same customer');
    }
    const shadow = make('shadow');
    assert.ok(customers.every((c) => shadow.score(request(c)).modelVersion === 'champ-1'));
    assert.equal(published.length, customers.length * 3);
    const last = EventBatch.decode(published[published.length - 1]!).events[0]!;
    assert.equal(last.type, 'risk.decision');
    assert.equal(last.payload?.$case, 'riskDecision');
    if (last.payload?.$case === 'riskDecision') {
      assert.deepEqual(
        [last.payload.value.variant, last.payload.value.mode, last.payload.value.championScorePpm, last.payload.value.challengerScorePpm, last.payload.value.challengerVersion, last.payload.value.amount, last.payload.value.currency],
        ['champion', 'shadow', 100_000, 900_000, 'chall-2', 500n, 'USD'],
      );
    }
  });

  it('each challenger\'s trial draws its own customers: two trials of 30% share about 9% of them, not the same 30%', () => {
    const customers = Array.from({ length: 5_000 }, (_, i) => `c${i}`);
    const decidedBy = (version: string) => {
      const rollout = new ChampionChallenger(fixed(100_000, Decision.DECISION_APPROVE, 'champ-1'), fixed(900_000, Decision.DECISION_DECLINE, version), 'split', 30, () => undefined, 'x.risk.decisions', createLogger('t', 'silent'));
      return new Set(customers.filter((c) => rollout.score(request(c)).modelVersion === version));
    };
    const [first, second] = [decidedBy('chall-2'), decidedBy('chall-3')];
    for (const trial of [first, second]) assert.ok(Math.abs(trial.size / customers.length - 0.3) < 0.03, `share ${trial.size / customers.length}`);
    const both = [...first].filter((c) => second.has(c)).length / customers.length;
    assert.ok(Math.abs(both - 0.09) < 0.025, `${(100 * both).toFixed(1)}% of customers in both trials`);
  });

  it('a challenger that fails to score costs no decision: the champion decides, and the event says the challenger did not score', () => {
    const broken = { score: (): ScoreResponse => { throw new Error('booster failed'); } };
    for (const mode of ['shadow', 'split'] as const) {
      const published: Uint8Array[] = [];
      // 100%: in split mode every customer is the challenger's.
      const rollout = new ChampionChallenger(fixed(100_000, Decision.DECISION_APPROVE, 'champ-1'), broken, mode, 100, (_s, payload) => published.push(payload), 'x.risk.decisions', createLogger('t', 'silent'));
      const answer = rollout.score(request('alice'));
      assert.deepEqual([answer.modelVersion, answer.decision], ['champ-1', Decision.DECISION_APPROVE], mode);
      const event = EventBatch.decode(published[0]!).events[0]!;
      if (event.payload?.$case !== 'riskDecision') assert.fail('a risk.decision event');
      assert.deepEqual([event.payload.value.variant, event.payload.value.championVersion, event.payload.value.challengerVersion], ['champion', 'champ-1', ''], mode);
    }
  });

  it('split: risk_score_psi watches the champion\'s scores against its training scores, not a mix with the challenger\'s', () => {
    let n = 0;
    // The champion scores as in training (uniform over 0..0.99); the challenger, otherwise.
    const champion = { score: (): ScoreResponse => ({ scorePpm: (n++ % 100) * 10_000, decision: Decision.DECISION_APPROVE, reasons: [], modelVersion: 'champ-1' }) };
    const split = new ChampionChallenger(champion, fixed(990_000, Decision.DECISION_DECLINE, 'chall-2'), 'split', 30, () => undefined, 'x.risk.decisions', createLogger('t', 'silent'));
    let gauge: ((result: { observe(value: number): void }) => void) | undefined;
    const meter = {
      createCounter: () => ({ add: () => undefined }),
      createHistogram: () => ({ record: () => undefined }),
      createObservableGauge: () => ({ addCallback: (callback: typeof gauge) => (gauge = callback) }),
    } as unknown as Meter;
    const reference = Array.from({ length: 2_000 }, (_, i) => (i % 100) / 100);
    const monitored = new MonitoredScorer(split, meter, reference, 5_000, 'champ-1');
    for (let i = 0; i < 20_000; i++) monitored.score(request(`customer-${i}`));
    let psi = NaN;
    gauge!({ observe: (value) => (psi = value) });
    assert.ok(psi < 0.1, `risk_score_psi ${psi} with the champion scoring exactly as in training`);
  });
});
