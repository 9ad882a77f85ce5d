import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { driftReport, fairnessReport, FeatureDriftMonitor, psi } from './monitoring.js';
import { Rng } from './random.js';

describe('risk monitoring: drift (PSI) and fairness', () => {
  const rng = new Rng(5);
  const normal = (n: number, mean = 0, sd = 1) => Array.from({ length: n }, () => mean + sd * rng.normal());

  it('PSI is near 0 for the same distribution, watch for a small shift, alert for a large one', () => {
    const training = normal(20_000);
    assert.ok(psi(training, normal(20_000)) < 0.02);
    const small = psi(training, normal(20_000, 0.35));
    assert.ok(small >= 0.1 && small < 0.25, `small shift ${small}`);
    assert.ok(psi(training, normal(20_000, 1)) >= 0.25);
  });

  it('PSI sees drift in a flag or a count that is mostly 0 (its deciles all tie at 0)', () => {
    // country_mismatch on 3% of training payments, then on 30%; card_count_1m mostly 0, then bursts.
    const flag = (n: number, share: number) => Array.from({ length: n }, () => (rng.chance(share) ? 1 : 0));
    const training = flag(5_000, 0.03);
    assert.ok(psi(training, flag(5_000, 0.03)) < 0.1, 'the same share is stable');
    assert.ok(psi(training, flag(5_000, 0.3)) >= 0.25, `3% -> 30%: ${psi(training, flag(5_000, 0.3))}`);
    const counts = (n: number, burst: number) => Array.from({ length: n }, () => (rng.chance(burst) ? rng.int(5, 20) : rng.chance(0.05) ? 1 : 0));
    assert.ok(psi(counts(5_000, 0), counts(5_000, 0.2)) >= 0.25, 'a card-testing burst in a count that is mostly 0');
  });

  it('flags the shifted feature and the score, not the others', () => {
    const training = Array.from({ length: 5_000 }, () => [rng.normal(), rng.normal()]);
    // The current window: amounts (feature 0) tripled in scale, feature 1 unchanged.
    const current = Array.from({ length: 5_000 }, () => [3 * rng.normal() + 2, rng.normal()]);
    const report = driftReport(['amount', 'other'], training, current, training.map((r) => r[0]!), current.map((r) => r[0]!));
    assert.deepEqual(report.map((d) => [d.name, d.status]), [['amount', 'alert'], ['other', 'stable'], ['score', 'alert']]);
  });

  it('live feature drift: nothing before a full window; then the shifted feature alerts and the other stays stable', () => {
    const training = Array.from({ length: 2_000 }, () => [rng.normal(), rng.normal()]);
    const monitor = new FeatureDriftMonitor(['amount', 'other'], training, 1_000);
    for (let i = 0; i < 999; i++) monitor.record([3 * rng.normal() + 2, rng.normal()]);
    assert.equal(monitor.drift.length, 0);
    monitor.record([3 * rng.normal() + 2, rng.normal()]);
    assert.deepEqual(monitor.drift.map((d) => [d.name, d.status]), [['amount', 'alert'], ['other', 'stable']]);
    // Without a reference (an older artefact), the first window becomes it: the same distribution is stable.
    const unanchored = new FeatureDriftMonitor(['amount', 'other'], undefined, 1_000);
    for (let i = 0; i < 2_000; i++) unanchored.record([rng.normal(), rng.normal()]);
    assert.ok(unanchored.drift.every((d) => d.status === 'stable'), JSON.stringify(unanchored.drift));
  });

  it('flags a segment whose legitimate payments a biased scorer declines more, and not the others', () => {
    const rows = Array.from({ length: 30_000 }, (_, i) => {
      const segment = ['US', 'FR', 'NG'][i % 3]!;
      const fraud = rng.chance(0.005);
      // Same fraud signal everywhere; the biased scorer adds 0.2 to every NG payment.
      const score = Math.min(1, rng.next() * 0.6 + (fraud ? 0.4 : 0) + (segment === 'NG' ? 0.2 : 0));
      return { segment, score, fraud };
    });
    const report = fairnessReport(rows, 0.58);
    assert.deepEqual(report.filter((r) => r.flagged).map((r) => r.segment), ['NG']);
    const unbiased = fairnessReport(rows.map((r) => ({ ...r, score: r.segment === 'NG' ? r.score - 0.2 : r.score })), 0.58);
    assert.deepEqual(unbiased.filter((r) => r.flagged), []);
  });
});
