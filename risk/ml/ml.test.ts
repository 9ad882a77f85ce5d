import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { before, describe, it } from 'mocha';
import { FeatureStore, offlineFeatures } from './features.js';
import { calibration, costOptimalThreshold, operatingPoint, pairedSaving, prAuc, recallAtFpr, rocAuc, rowCost } from './metrics.js';
import { loadModel, GbtModel, LogisticModel } from './models.js';
import { buildDataset, comparableArtefacts, evaluateScores, labelKnownAt, rulesScores, timeSplit, type Dataset, type ModelArtefact, type Split } from './pipeline.js';
import { DEFAULT_SYNTH, generatePayments } from './synth.js';
import { ModelScorer } from './serving.js';
import { Rng } from './random.js';
import { Decision } from '../../proto/gen/risk/v1/risk.js';

const SMALL = { ...DEFAULT_SYNTH, seed: 11, weeks: 4, customers: 800, fraudIncidentsPerDay: 0.6 };
const RULES = { maxAmount: 1_000_000n, velocityMax: 20, velocityWindowMs: 60_000, declineThresholdPpm: 800_000, reviewThresholdPpm: 500_000 };
const digest = (value: unknown) => createHash('sha256').update(JSON.stringify(value)).digest('hex');

describe('risk models: synthetic data, features, training and evaluation', function () {
  this.timeout(120_000);

  describe('synthetic data', () => {
    it('is the same for the same seed and differs for another', () => {
      assert.equal(digest(generatePayments(SMALL)), digest(generatePayments(SMALL)));
      assert.notEqual(digest(generatePayments(SMALL)), digest(generatePayments({ ...SMALL, seed: 12 })));
    });

    it('has fraud near real rates, every documented pattern, and chargebacks that arrive later', () => {
      const payments = generatePayments(SMALL);
      const fraud = payments.filter((p) => p.fraud);
      for (const options of [SMALL, DEFAULT_SYNTH]) {
        const all = generatePayments(options);
        const rate = all.filter((p) => p.fraud).length / all.length;
        assert.ok(rate >= 0.001 && rate <= 0.01, `fraud rate ${rate} of seed ${options.seed}`);
      }
      assert.deepEqual(new Set(fraud.map((p) => p.pattern)), new Set(['card_testing', 'account_takeover', 'collusion', 'velocity']));
      assert.ok(fraud.every((p) => p.labelAt !== null && p.labelAt >= p.at + 86_400_000 && p.labelAt <= p.at + 30 * 86_400_000));
      assert.ok(payments.every((p, i) => i === 0 || payments[i - 1]!.at <= p.at), 'chronological');
      assert.ok(payments.every((p) => Number.isInteger(p.amount) && p.amount > 0));
    });
  });

  describe('features', () => {
    it('online (score, then observe, one payment at a time) equal offline (replay of the log)', () => {
      const payments = generatePayments({ ...SMALL, weeks: 1 });
      const offline = offlineFeatures(payments);
      const online = new FeatureStore();
      payments.forEach((p, i) => {
        assert.deepEqual(online.features(p), offline[i], `payment ${i}`);
        online.observe(p);
      });
    });

    it('a store restored from a snapshot (through JSON, as checkpointed) computes what the uninterrupted one does', () => {
      const payments = generatePayments({ ...SMALL, weeks: 1 });
      const offline = offlineFeatures(payments);
      const half = Math.floor(payments.length / 2);
      const before = new FeatureStore();
      offlineFeatures(payments.slice(0, half), before);
      const restored = new FeatureStore();
      restored.restore(JSON.parse(JSON.stringify(before.snapshot())));
      assert.deepEqual(restored.sizes(), before.sizes());
      assert.deepEqual(offlineFeatures(payments.slice(half), restored), offline.slice(half));
    });

    it('events fed out of time order (payment events of several shards interleave) count as in order', () => {
      const base = { merchantId: 'm', merchantCategory: 'general', customerId: 'm:c', cardFingerprint: 'card', cardType: 'debit', cardCountry: 'US', deviceId: 'd', ipCountry: 'US', amount: 1_000 };
      // Shard 1's relay publishes the payment at 100 s before shard 0's publishes the one at 30 s.
      const early = { ...base, at: 30_000 };
      const late = { ...base, at: 100_000, amount: 5_000 };
      const inOrder = new FeatureStore();
      inOrder.observe(early);
      inOrder.observe(late);
      const asFed = new FeatureStore();
      asFed.observe(late);
      asFed.observe(early);
      const now = { ...base, at: 150_000 };
      const pick = (v: number[]) => [v[1], v[2], v[3], v[4], v[5], v[6], v[8], v[9], v[12]];
      assert.deepEqual(pick(asFed.features(now)), pick(inOrder.features(now)), 'card 1m/1h/24h/sum, customer 1h/24h, customer age, device 1h, merchant 1h');
    });

    it('a wallet payment (no card) on a device is not one more distinct card on it', () => {
      const store = new FeatureStore();
      const base = { merchantId: 'm', merchantCategory: 'general', customerId: 'm:c', cardType: '', cardCountry: '', deviceId: 'd', ipCountry: 'US', amount: 1_000 };
      store.observe({ ...base, at: 0, cardFingerprint: '' });
      store.observe({ ...base, at: 1_000, cardFingerprint: '' });
      store.observe({ ...base, at: 2_000, cardFingerprint: 'card', cardType: 'debit', cardCountry: 'US' });
      assert.equal(store.features({ ...base, at: 3_000, cardFingerprint: 'card' })[10], 1, 'device_distinct_cards_24h');
    });

    it('see a card-testing burst, and keep memory bounded', () => {
      const store = new FeatureStore(50);
      const base = { merchantId: 'm', merchantCategory: 'gift_cards', customerId: 'c', cardFingerprint: 'card', cardType: 'prepaid', cardCountry: 'US', deviceId: 'd', ipCountry: 'RU', amount: 150 };
      for (let i = 0; i < 10; i++) store.observe({ ...base, at: i * 5_000 });
      const v = store.features({ ...base, at: 50_000 });
      assert.deepEqual([v[1], v[2], v[13], v[14]], [10, 10, 1, 1], 'card_count_1m, card_count_1h, country_mismatch, card_prepaid');
      for (let i = 0; i < 500; i++) store.observe({ ...base, cardFingerprint: `card${i}`, customerId: `c${i}`, deviceId: `d${i}`, merchantId: `m${i}`, at: 60_000 + i });
      assert.ok(Object.values(store.sizes()).every((n) => n <= 50), JSON.stringify(store.sizes()));
    });
  });

  describe('models against the rules-only baseline (time split, labels known at the cut-off)', () => {
    let dataset: Dataset;
    let split: Split;
    before(() => {
      dataset = buildDataset(SMALL);
      split = timeSplit(dataset, 3);
    });

    const fit = () => ({ rows: split.train.map((i) => dataset.vectors[i]!), labels: split.train.map((i) => labelKnownAt(dataset.payments[i]!, split.cutoff)) });
    const holdout = () => split.test.map((i) => dataset.payments[i]!);

    it('logistic regression and gradient-boosted trees beat the rules on hold-out PR-AUC by a wide margin', async () => {
      const { rows, labels } = fit();
      const allRules = rulesScores(dataset.payments, RULES);
      const rules = evaluateScores('rules', split.test.map((i) => allRules[i]!), holdout(), 0.8);
      for (const model of [LogisticModel.train(rows, labels), await GbtModel.train(rows, labels, { iterations: 60, maxDepth: 3, eta: 0.2 })]) {
        const row = evaluateScores(model.kind, split.test.map((i) => model.score(dataset.vectors[i]!)), holdout(), 0.5);
        assert.ok(row.prAuc > rules.prAuc + 0.3, `${model.kind} PR-AUC ${row.prAuc.toFixed(3)} vs rules ${rules.prAuc.toFixed(3)}`);
        assert.ok(row.rocAuc > 0.9, `${model.kind} ROC-AUC ${row.rocAuc}`);
      }
    });

    it('a model artefact reloads to the same scores, and names the features behind a high score', async () => {
      const { rows, labels } = fit();
      for (const model of [LogisticModel.train(rows, labels, { epochs: 100, learningRate: 0.5, l2: 1e-3 }), await GbtModel.train(rows, labels, { iterations: 20, maxDepth: 3, eta: 0.3 })]) {
        const reloaded = await loadModel(JSON.parse(JSON.stringify(model.toJSON())));
        const sample = split.test.slice(0, 200).map((i) => dataset.vectors[i]!);
        assert.deepEqual(sample.map((v) => reloaded.score(v)), sample.map((v) => model.score(v)));
        const riskiest = sample.reduce((a, b) => (model.score(b) > model.score(a) ? b : a));
        assert.ok(model.reasons(riskiest).length > 0, `${model.kind} gives reasons`);
      }
    });
  });

  describe('metrics', () => {
    const rows = (pairs: [number, boolean][]) => pairs.map(([score, fraud]) => ({ score, fraud, amount: 1_000 }));

    it('ROC-AUC and PR-AUC of perfect, reversed and tied rankings', () => {
      const perfect = rows([[0.9, true], [0.8, true], [0.2, false], [0.1, false]]);
      assert.equal(rocAuc(perfect), 1);
      assert.equal(prAuc(perfect), 1);
      assert.equal(rocAuc(rows([[0.1, true], [0.9, false]])), 0);
      assert.equal(rocAuc(rows([[0.5, true], [0.5, false]])), 0.5);
      // Positives at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
      assert.ok(Math.abs(prAuc(rows([[0.9, true], [0.8, false], [0.7, true], [0.1, false]])) - (1 + 2 / 3) / 2) < 1e-12);
    });

    it('recall at 1% false positives, cost-optimal threshold, calibration', () => {
      const many = rows([...Array.from({ length: 100 }, (_, i): [number, boolean] => [i / 1000, false]), [0.5, true], [0.05, true]]);
      assert.equal(recallAtFpr(many, 0.01), 0.5);
      const threshold = costOptimalThreshold(many);
      assert.equal(operatingPoint(many, threshold).recall, 0.5, 'declining above 0.099 catches one fraud for no good payment');
      assert.ok(calibration(many).expectedCalibrationError >= 0);
    });

    it('the cost-optimal threshold is exact among many distinct scores: the one fraud at the top is declined alone', () => {
      // 4,001 good payments with distinct scores below the one fraud: declining it alone costs nothing.
      const many = rows([...Array.from({ length: 4_001 }, (_, i): [number, boolean] => [i / 10_000, false]), [0.9, true]]);
      const threshold = costOptimalThreshold(many);
      assert.equal(threshold, 0.9);
      assert.deepEqual([operatingPoint(many, threshold).cost, operatingPoint(many, threshold).falsePositiveRate], [0, 0]);
    });

    it('a saving resting on one large chargeback is not significant; one spread over many payments is (paired bootstrap)', () => {
      const same = Array.from({ length: 1_000 }, (_, i) => (i % 10 === 0 ? 500 : 0));
      // The challenger caught one fraud of 100,000 the champion approved, nothing else differs.
      const once = pairedSaving(same.map((c, i) => (i === 7 ? c + 100_000 : c)), same);
      assert.equal(once.saving, 100_000);
      assert.ok(once.lowerBound <= 0, `lower bound ${once.lowerBound}: a row missing from a third of the resamples`);
      // The same total, saved on 200 payments of 500 each.
      const spread = same.map((c, i) => (i < 200 ? c + 500 : c));
      const steady = pairedSaving(spread, same);
      assert.equal(steady.saving, 100_000);
      assert.ok(steady.lowerBound > 0, `lower bound ${steady.lowerBound}`);
      // Row costs as operatingPoint adds them up.
      const scored = rows([[0.9, true], [0.2, true], [0.8, false], [0.1, false]]);
      assert.equal(scored.reduce((sum, r) => sum + rowCost(r, 0.5), 0), operatingPoint(scored, 0.5).cost);
    });

    it('the lower bound is the (1 - confidence) quantile of the resampled savings: the 100th of 2,000 at 95%, the least of 20', () => {
      // The resamples as pairedSaving draws them (seeded), to see which of them it takes.
      const differences = Array.from({ length: 40 }, (_, i) => ((i * 7919) % 101) - 30 + i / 1_000);
      const resampled = (rounds: number) => {
        const rng = new Rng(1);
        const sums = Array.from({ length: rounds }, () => {
          let sum = 0;
          for (let k = 0; k < differences.length; k++) sum += differences[rng.int(0, differences.length - 1)]!;
          return sum;
        });
        return sums.sort((a, b) => a - b);
      };
      const zeros = differences.map(() => 0);
      // 5% of the resamples at or below the bound, not 5% strictly below it (5.05%): the 100th smallest of 2,000.
      assert.equal(pairedSaving(differences, zeros).lowerBound, resampled(2_000)[99]);
      // Of 20 resamples, 1 is 5%: the least; the second least had 10% of them at or below it, a 90% bound.
      assert.equal(pairedSaving(differences, zeros, { rounds: 20 }).lowerBound, resampled(20)[0]);
      // 90% of 2,000: the 200th (as before, where (1 - 0.9) * 2,000 came to 199.99999999999997).
      assert.equal(pairedSaving(differences, zeros, { confidence: 0.9 }).lowerBound, resampled(2_000)[199]);
    });

    it('"decline nothing" as the cost-optimal threshold survives the artefact\'s JSON: the served model still declines nothing', async () => {
      // No fraud known at the cut-off: every decline only costs, so the optimum is to decline nothing.
      const legitimate = rows(Array.from({ length: 50 }, (_, i): [number, boolean] => [i / 100, false]));
      const threshold = costOptimalThreshold(legitimate);
      assert.equal(operatingPoint(legitimate, threshold).declineRate, 0);
      const stored = (JSON.parse(JSON.stringify({ threshold })) as { threshold: number }).threshold;
      assert.equal(operatingPoint(legitimate, stored).declineRate, 0, `threshold ${threshold} stored as ${stored}`);
      const model = await loadModel({ kind: 'logistic', means: new Array<number>(16).fill(0), stds: new Array<number>(16).fill(1), weights: new Array<number>(16).fill(0), bias: -5 });
      const scorer = new ModelScorer(model, new FeatureStore(), 'logistic-test', stored);
      const answer = scorer.score({ paymentId: '', merchantId: 'm', customerId: 'c', amount: 1_000n, currency: 'USD', cardFingerprint: 'card', deviceId: 'd', cardCountry: 'US', ipCountry: 'US', cardType: 'debit', merchantCategory: 'grocery' });
      assert.equal(answer.decision, Decision.DECISION_APPROVE);
    });
  });
});

describe('risk evaluation: one hold-out for every model compared', function () {
  this.timeout(60_000);

  it('scores no model on payments it trained on or on other generated data: only those trained up to the hold-out, on the same data', async () => {
    const { trainModels } = await import('./pipeline.js');
    const synth = { ...SMALL, weeks: 3 };
    const dataset = buildDataset(synth);
    const [logistic] = await trainModels(dataset, timeSplit(dataset, 2), synth);
    const at = (artefact: ModelArtefact, createdAt: string) => ({ artefact: { ...artefact, createdAt } });
    // The newest: trained on weeks 0-1, so the hold-out is week 2.
    const newest = at(logistic!, '2026-12-06T10:00:00.000Z');
    const olderSameData = at({ ...logistic!, version: 'older', synth: { ...synth, weeks: 4 } }, '2026-12-05T10:00:00.000Z');
    const intoHoldout = at({ ...logistic!, version: 'into-holdout', trainingWindow: { ...logistic!.trainingWindow, toMs: 3 * 7 * 86_400_000 } }, '2026-12-04T10:00:00.000Z');
    const otherSeed = at({ ...logistic!, version: 'other-seed', synth: { ...synth, seed: 99 } }, '2026-12-03T10:00:00.000Z');
    const { reference, comparable, skipped } = comparableArtefacts([otherSeed, olderSameData, intoHoldout, newest]);
    assert.equal(reference, newest.artefact);
    assert.deepEqual(comparable.map((c) => c.artefact.version), ['older', logistic!.version]);
    assert.deepEqual(skipped.map((s) => s.candidate.artefact.version), ['other-seed', 'into-holdout']);
  });
});

describe('risk model serving: decisions', () => {
  const request = { paymentId: '', merchantId: 'm', customerId: 'c', amount: 1_000n, currency: 'USD', cardFingerprint: 'card', deviceId: 'd', cardCountry: 'US', ipCountry: 'US', cardType: 'debit', merchantCategory: 'grocery' };

  it('a score that is not a number (the model overflowed to +Infinity - Infinity) declines, never approves', async () => {
    const weights = new Array<number>(16).fill(0);
    // log_amount and card_sum_1h_log with weights that overflow in opposite directions: the sum is NaN.
    weights[0] = 1e308;
    weights[4] = -1e308;
    const model = await loadModel({ kind: 'logistic', means: new Array<number>(16).fill(0), stds: new Array<number>(16).fill(1), weights, bias: 0 });
    const store = new FeatureStore();
    store.observe({ at: 0, merchantId: 'm', merchantCategory: 'grocery', customerId: 'm:c', cardFingerprint: 'card', cardType: 'debit', cardCountry: 'US', deviceId: 'd', ipCountry: 'US', amount: 1_000 });
    assert.ok(Number.isNaN(model.score(store.features({ ...request, at: 1_000, customerId: 'm:c', amount: 1_000 }))), 'the model answers NaN here');
    const answer = new ModelScorer(model, store, 'logistic-overflow', 0.5).score(request, 1_000);
    assert.equal(answer.decision, Decision.DECISION_DECLINE);
    assert.deepEqual(answer.reasons, ['score_not_finite']);
    assert.equal(answer.scorePpm, 1_000_000);
  });
});

describe('risk retraining', function () {
  this.timeout(120_000);

  const synth = { ...SMALL, weeks: 3 };
  /** A champion trained on three weeks of SMALL, as `change` makes it, written to a fresh artefact file. */
  async function championFile(change: (trained: ModelArtefact) => ModelArtefact = (trained) => trained): Promise<string> {
    const { mkdtemp, writeFile } = await import('node:fs/promises');
    const os = await import('node:os');
    const path = await import('node:path');
    const { trainModels } = await import('./pipeline.js');
    const dataset = buildDataset(synth);
    const [trained] = await trainModels(dataset, timeSplit(dataset, 2), synth);
    const file = path.join(await mkdtemp(path.join(os.tmpdir(), 'champion-')), 'champion.json');
    await writeFile(file, JSON.stringify(change(trained!)));
    return file;
  }

  it('promotes a challenger that is cheaper on the hold-out, and keeps a champion that is not beaten', async () => {
    const { readFile: read } = await import('node:fs/promises');
    const { retrain } = await import('./retrain.js');
    // A champion that declines nothing: every fraud of the hold-out is a loss.
    const file = await championFile((trained) => ({ ...trained, version: 'logistic-weak', threshold: 2 }));
    const first = await retrain(file, 4);
    assert.ok(first.promoted, `challenger ${first.challengerCost} vs champion ${first.championCost}`);
    assert.ok(first.savingLowerBound > 0 && first.savingLowerBound < first.championCost - first.challengerCost, `lower bound ${first.savingLowerBound}`);
    assert.equal(JSON.parse(await read(file, 'utf8')).version, first.challenger.version);
    const second = await retrain(file, 4);
    assert.equal(second.promoted, false, 'an equal challenger does not replace the champion');
    assert.equal(JSON.parse(await read(file, 'utf8')).version, first.challenger.version);
  });

  it('refuses to compare with a champion trained on the hold-out week (its cost there would be in-sample)', async () => {
    const { retrain } = await import('./retrain.js');
    // The champion trained on weeks 0-1; a retraining with two weeks of history holds out week 1.
    const file = await championFile();
    await assert.rejects(retrain(file, 2), /trained up to day 14, into the hold-out week \(from day 7\)/);
  });

  it('trains the challenger on payments at least a week old, labelled with the chargebacks known at the run, not a week before', async () => {
    const { retrain } = await import('./retrain.js');
    const file = await championFile();
    const weeks = 4;
    const { challenger } = await retrain(file, weeks);
    const now = weeks * 7 * 86_400_000;
    const all = buildDataset({ ...synth, weeks });
    const split = timeSplit(all, weeks - 1);
    const knownNow = split.train.filter((i) => labelKnownAt(all.payments[i]!, now)).length;
    assert.ok(knownNow > split.train.filter((i) => labelKnownAt(all.payments[i]!, split.cutoff)).length, 'chargebacks arrived in the last week');
    assert.equal(challenger.trainMetrics['positives'], knownNow, 'fraud labels the challenger learnt from');
    assert.equal(challenger.trainingWindow.labelsKnownAtMs, now);
  });
});
