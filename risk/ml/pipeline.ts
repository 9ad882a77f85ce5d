import type { ScoreRequest } from '../../proto/gen/risk/v1/risk.js';
import { RulesScorer, type RulesSettings } from '../rules.js';
import { FEATURE_NAMES, offlineFeatures, type FeatureVector } from './features.js';
import { calibration, costOptimalThreshold, operatingPoint, prAuc, recallAtFpr, rocAuc, type CostModel, DEFAULT_COST } from './metrics.js';
import { GbtModel, LogisticModel, type FraudModel, type ModelParameters } from './models.js';
import { customerKey } from './serving.js';
import { generatePayments, type SynthOptions, type SynthPayment } from './synth.js';

/** Training and evaluation: a time-based split, labels as known at the training cut-off, the rules baseline. */

const DAY = 86_400_000;

export interface Dataset {
  payments: SynthPayment[];
  vectors: FeatureVector[];
}

/** Synthetic payments as the facts serving sees: customers keyed per merchant, as their ids are. */
export function buildDataset(options: SynthOptions): Dataset {
  const payments = generatePayments(options);
  return { payments, vectors: offlineFeatures(payments.map((p) => ({ ...p, customerId: customerKey(p.merchantId, p.customerId) }))) };
}

export interface Split {
  train: number[];
  test: number[];
  /** Training labels are those known at this time (chargebacks arrive late: recent fraud looks legitimate). */
  cutoff: number;
  /** When labels are known from, if later than the cut-off (retraining: labelled as of the run). */
  labelsAt?: number;
}

/** Earlier weeks train, later weeks test; indices into the data set. */
export function timeSplit(dataset: Dataset, trainWeeks: number): Split {
  const cutoff = trainWeeks * 7 * DAY;
  const train: number[] = [];
  const test: number[] = [];
  dataset.payments.forEach((p, i) => (p.at < cutoff ? train : test).push(i));
  return { train, test, cutoff };
}

export function labelKnownAt(p: SynthPayment, at: number): boolean {
  return p.fraud && p.labelAt !== null && p.labelAt <= at;
}

export interface ModelArtefact {
  version: string;
  kind: 'logistic' | 'gbt';
  features: readonly string[];
  trainingWindow: { fromMs: number; toMs: number; labelsKnownAtMs: number };
  seed: number;
  synth: SynthOptions;
  /** Cost-optimal on the training data (decline at or above). */
  threshold: number;
  trainMetrics: Record<string, number>;
  /** Up to 2,000 training scores, evenly spaced: the reference of the live score drift (PSI). */
  trainingScoreSample: number[];
  /** Feature vectors of the same training rows: the reference of live feature drift (absent in older artefacts). */
  trainingFeatureSample?: number[][];
  parameters: ModelParameters;
  createdAt: string;
}

export async function trainModels(dataset: Dataset, split: Split, synth: SynthOptions, cost: CostModel = DEFAULT_COST): Promise<ModelArtefact[]> {
  const rows = split.train.map((i) => dataset.vectors[i]!);
  const labelsAt = split.labelsAt ?? split.cutoff;
  const labels = split.train.map((i) => labelKnownAt(dataset.payments[i]!, labelsAt));
  const models: FraudModel[] = [LogisticModel.train(rows, labels), await GbtModel.train(rows, labels)];
  const createdAt = new Date().toISOString();
  return models.map((model) => {
    const scored = split.train.map((i, k) => ({ score: model.score(rows[k]!), fraud: labels[k]!, amount: dataset.payments[i]!.amount }));
    const threshold = costOptimalThreshold(scored, cost);
    const sampleEvery = Math.max(1, Math.floor(scored.length / 2_000));
    return {
      version: `${model.kind}-${createdAt.replace(/[-:.]/g, '').slice(0, 15)}-s${synth.seed}`,
      kind: model.kind,
      features: [...FEATURE_NAMES],
      trainingWindow: { fromMs: 0, toMs: split.cutoff, labelsKnownAtMs: labelsAt },
      seed: synth.seed,
      synth,
      threshold,
      trainMetrics: { prAuc: prAuc(scored), rocAuc: rocAuc(scored), positives: labels.filter(Boolean).length, rows: rows.length },
      trainingScoreSample: scored.filter((_, k) => k % sampleEvery === 0).map((r) => r.score),
      trainingFeatureSample: rows.filter((_, k) => k % sampleEvery === 0),
      parameters: model.toJSON(),
      createdAt,
    };
  });
}

/**
 * The artefacts one evaluation compares on one hold-out: the newest artefact's data set and hold-out (the weeks
 * after its training cut-off), and of the others those trained on the same generated data (same generator
 * settings, whatever the weeks) up to that cut-off at the latest. The evaluation took the data set and cut-off of
 * whichever artefact it read first and scored the others on it: a model trained a week longer was scored on
 * its own training payments (inflated PR-AUC and cost), and one of another seed on payments it never modelled.
 */
export function comparableArtefacts<T extends { artefact: ModelArtefact }>(candidates: readonly T[]): { reference: ModelArtefact; comparable: T[]; skipped: { candidate: T; why: string }[] } {
  const newest = [...candidates].sort((a, b) => a.artefact.createdAt.localeCompare(b.artefact.createdAt)).pop();
  if (!newest) throw new Error('no model artefact to evaluate');
  const reference = newest.artefact;
  const sameData = (a: SynthOptions) => (Object.keys(reference.synth) as (keyof SynthOptions)[]).every((k) => k === 'weeks' || a[k] === reference.synth[k]);
  const comparable: T[] = [];
  const skipped: { candidate: T; why: string }[] = [];
  for (const candidate of candidates) {
    const a = candidate.artefact;
    if (!sameData(a.synth)) skipped.push({ candidate, why: `trained on other generated data (${JSON.stringify(a.synth)}) than ${reference.version}` });
    else if (a.trainingWindow.toMs > reference.trainingWindow.toMs) skipped.push({ candidate, why: `trained up to ${a.trainingWindow.toMs} ms, into the hold-out of ${reference.version} (from ${reference.trainingWindow.toMs} ms)` });
    else comparable.push(candidate);
  }
  return { reference, comparable, skipped };
}

/** A synthetic payment as the payment service's Score request; `id` maps the generator's ids (e.g. to UUIDs). */
export function synthScoreRequest(p: SynthPayment, id: (raw: string) => string = (raw) => raw): ScoreRequest {
  return {
    paymentId: id(p.id),
    merchantId: id(p.merchantId),
    customerId: p.customerId,
    amount: BigInt(p.amount),
    currency: 'USD',
    cardFingerprint: p.cardFingerprint,
    deviceId: p.deviceId,
    cardCountry: p.cardCountry,
    ipCountry: p.ipCountry,
    cardType: p.cardType,
    merchantCategory: p.merchantCategory,
  };
}

/** The rules-only scorer replayed over the log in time order (it keeps its own velocity counts). */
export function rulesScores(payments: readonly SynthPayment[], settings: RulesSettings): number[] {
  const scorer = new RulesScorer(settings);
  return payments.map(
    (p) =>
      scorer.score(synthScoreRequest(p), p.at).scorePpm / 1_000_000,
  );
}

export interface EvaluationRow {
  model: string;
  prAuc: number;
  rocAuc: number;
  recallAt1PctFpr: number;
  threshold: number;
  precision: number;
  recall: number;
  declineRate: number;
  /** Expected cost on the hold-out, minor units: missed fraud plus declined good payments. */
  cost: number;
  expectedCalibrationError: number;
}

/** Scores of `model` for the hold-out rows, against their final labels. */
export function evaluateScores(model: string, scores: readonly number[], payments: readonly SynthPayment[], threshold: number, cost: CostModel = DEFAULT_COST): EvaluationRow {
  const rows = scores.map((score, k) => ({ score, fraud: payments[k]!.fraud, amount: payments[k]!.amount }));
  const point = operatingPoint(rows, threshold, cost);
  return {
    model,
    prAuc: prAuc(rows),
    rocAuc: rocAuc(rows),
    recallAt1PctFpr: recallAtFpr(rows, 0.01),
    threshold,
    precision: point.precision,
    recall: point.recall,
    declineRate: point.declineRate,
    cost: point.cost,
    expectedCalibrationError: calibration(rows).expectedCalibrationError,
  };
}

/** The rules' decision threshold as a score: what the rules-only scorer declines in production. */
export function rulesThreshold(settings: RulesSettings): number {
  return settings.declineThresholdPpm / 1_000_000;
}
