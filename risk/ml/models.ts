import type { XGBoostClass, XGBoostModel } from 'ml-xgboost';
import { FEATURE_NAMES, type FeatureVector } from './features.js';

/** Trained fraud models: a score in [0, 1] from a feature vector, and the features that pushed it up. */
export interface FraudModel {
  readonly kind: 'logistic' | 'gbt';
  score(vector: FeatureVector): number;
  /** Features that raised this score the most, strongest first. */
  reasons(vector: FeatureVector, top?: number): string[];
  /** What `loadModel` rebuilds the model from. */
  toJSON(): ModelParameters;
}

export type ModelParameters =
  | { kind: 'logistic'; means: number[]; stds: number[]; weights: number[]; bias: number }
  | { kind: 'gbt'; booster: { name: string; model: number[]; options: Record<string, unknown> }; means: number[] };

const sigmoid = (z: number) => 1 / (1 + Math.exp(-z));

/** XGBoost's WebAssembly module, loaded on first use only (the rules and logistic models never need it). */
function loadXGBoost(): Promise<XGBoostClass> {
  return import('ml-xgboost').then((m) => m.default);
}

function columnStats(rows: readonly FeatureVector[]): { means: number[]; stds: number[] } {
  const d = FEATURE_NAMES.length;
  const means = new Array<number>(d).fill(0);
  const squares = new Array<number>(d).fill(0);
  for (const row of rows) for (let j = 0; j < d; j++) means[j]! += row[j]! / rows.length;
  for (const row of rows) for (let j = 0; j < d; j++) squares[j]! += (row[j]! - means[j]!) ** 2 / rows.length;
  return { means, stds: squares.map((s) => Math.sqrt(s) || 1) };
}

/**
 * L2-regularised logistic regression with an intercept and class weights, fitted by full-batch gradient
 * descent on standardised features. Written here because the npm library (ml-logistic-regression) has no
 * intercept, no regularisation, no class weights and answers labels, not probabilities. The class weights
 * are undone on the intercept afterwards (prior correction), so scores stay calibrated probabilities.
 */
export class LogisticModel implements FraudModel {
  readonly kind = 'logistic';

  constructor(private readonly p: Extract<ModelParameters, { kind: 'logistic' }>) {}

  static train(rows: readonly FeatureVector[], labels: readonly boolean[], options = { epochs: 400, learningRate: 0.5, l2: 1e-3 }): LogisticModel {
    const { means, stds } = columnStats(rows);
    const x = rows.map((r) => r.map((v, j) => (v - means[j]!) / stds[j]!));
    const positives = labels.filter(Boolean).length;
    const negatives = labels.length - positives;
    // Balanced classes while fitting: the rare class would otherwise barely move the weights.
    const wPos = labels.length / (2 * Math.max(1, positives));
    const wNeg = labels.length / (2 * Math.max(1, negatives));
    const d = FEATURE_NAMES.length;
    const weights = new Array<number>(d).fill(0);
    let bias = 0;
    for (let epoch = 0; epoch < options.epochs; epoch++) {
      const grad = new Array<number>(d).fill(0);
      let gradBias = 0;
      for (let i = 0; i < x.length; i++) {
        const row = x[i]!;
        let z = bias;
        for (let j = 0; j < d; j++) z += weights[j]! * row[j]!;
        const error = (sigmoid(z) - (labels[i] ? 1 : 0)) * (labels[i] ? wPos : wNeg);
        for (let j = 0; j < d; j++) grad[j]! += error * row[j]!;
        gradBias += error;
      }
      for (let j = 0; j < d; j++) weights[j]! -= options.learningRate * (grad[j]! / x.length + options.l2 * weights[j]!);
      bias -= (options.learningRate * gradBias) / x.length;
    }
    // Prior correction: fitted at 50/50, the intercept moves back to the true odds.
    bias += Math.log(Math.max(1, positives) / Math.max(1, negatives));
    return new LogisticModel({ kind: 'logistic', means, stds, weights, bias });
  }

  private contributions(vector: FeatureVector): number[] {
    return vector.map((v, j) => this.p.weights[j]! * ((v - this.p.means[j]!) / this.p.stds[j]!));
  }

  score(vector: FeatureVector): number {
    return sigmoid(this.contributions(vector).reduce((a, b) => a + b, this.p.bias));
  }

  reasons(vector: FeatureVector, top = 3): string[] {
    return topPositive(this.contributions(vector), top);
  }

  toJSON(): ModelParameters {
    return this.p;
  }
}

/** Gradient-boosted trees: XGBoost (WebAssembly, from npm) with the binary logistic objective. */
export class GbtModel implements FraudModel {
  readonly kind = 'gbt';

  private constructor(
    private readonly booster: XGBoostModel,
    private readonly means: number[],
  ) {}

  static async train(rows: readonly FeatureVector[], labels: readonly boolean[], options = { iterations: 120, maxDepth: 4, eta: 0.15 }): Promise<GbtModel> {
    const XGBoost = await loadXGBoost();
    const booster = new XGBoost({
      booster: 'gbtree',
      objective: 'binary:logistic',
      max_depth: options.maxDepth,
      eta: options.eta,
      min_child_weight: 1,
      subsample: 1,
      colsample_bytree: 1,
      silent: 1,
      iterations: options.iterations,
    });
    booster.train(rows.map((r) => [...r]), labels.map((l) => (l ? 1 : 0)));
    return new GbtModel(booster, columnStats(rows).means);
  }

  static async load(p: Extract<ModelParameters, { kind: 'gbt' }>): Promise<GbtModel> {
    const XGBoost = await loadXGBoost();
    return new GbtModel(XGBoost.load(p.booster as Parameters<typeof XGBoost.load>[0]), p.means);
  }

  score(vector: FeatureVector): number {
    return this.booster.predict([vector])[0]!;
  }

  /** Trees have no per-feature weights: a feature's reason is how much the score falls when it is set to its mean. */
  reasons(vector: FeatureVector, top = 3): string[] {
    const base = this.score(vector);
    const drops = vector.map((_, j) => base - this.score(vector.map((v, k) => (k === j ? this.means[k]! : v))));
    return topPositive(drops, top);
  }

  toJSON(): ModelParameters {
    return { kind: 'gbt', booster: this.booster.toJSON(), means: this.means };
  }
}

function topPositive(values: readonly number[], top: number): string[] {
  return values
    .map((value, j) => ({ value, name: FEATURE_NAMES[j]! }))
    .filter((c) => c.value > 0)
    .sort((a, b) => b.value - a.value)
    .slice(0, top)
    .map((c) => c.name);
}

export async function loadModel(p: ModelParameters): Promise<FraudModel> {
  return p.kind === 'logistic' ? new LogisticModel(p) : GbtModel.load(p);
}
