/** Evaluation of fraud scores against labels: ranking quality, the operating point, cost and calibration. */
import { Rng } from './random.js';

export interface CostModel {
  /** A declined legitimate payment costs this share of its amount (lost margin, customer friction)... */
  declineCostRate: number;
  /** ...plus this much (minor units) per declined legitimate payment (support contact, churn). */
  declineCostFixed: number;
}

/** Missed fraud costs its amount (the chargeback); see risk/README.md for the objective. */
export const DEFAULT_COST: CostModel = { declineCostRate: 0.1, declineCostFixed: 200 };

interface Scored {
  score: number;
  fraud: boolean;
  amount: number;
}

function byScoreDesc(rows: readonly Scored[]): Scored[] {
  return [...rows].sort((a, b) => b.score - a.score);
}

/** Area under the ROC curve (ties counted half), by the rank statistic. */
export function rocAuc(rows: readonly Scored[]): number {
  const sorted = [...rows].sort((a, b) => a.score - b.score);
  let rankSum = 0;
  let positives = 0;
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j < sorted.length && sorted[j]!.score === sorted[i]!.score) j++;
    const rank = (i + 1 + j) / 2;
    for (let k = i; k < j; k++) if (sorted[k]!.fraud) {
      rankSum += rank;
      positives++;
    }
    i = j;
  }
  const negatives = sorted.length - positives;
  return positives === 0 || negatives === 0 ? NaN : (rankSum - (positives * (positives + 1)) / 2) / (positives * negatives);
}

/** Area under the precision-recall curve as average precision (the step-wise sum over the positives). */
export function prAuc(rows: readonly Scored[]): number {
  const sorted = byScoreDesc(rows);
  const positives = sorted.filter((r) => r.fraud).length;
  let tp = 0;
  let sum = 0;
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    let newTp = 0;
    while (j < sorted.length && sorted[j]!.score === sorted[i]!.score) newTp += sorted[j++]!.fraud ? 1 : 0;
    tp += newTp;
    sum += newTp * (tp / j);
    i = j;
  }
  return positives === 0 ? NaN : sum / positives;
}

export interface OperatingPoint {
  threshold: number;
  precision: number;
  recall: number;
  falsePositiveRate: number;
  declineRate: number;
  /** Minor units over the data set: fraud approved plus the cost of declined good payments. */
  cost: number;
}

export function operatingPoint(rows: readonly Scored[], threshold: number, costModel: CostModel = DEFAULT_COST): OperatingPoint {
  let tp = 0;
  let fp = 0;
  let fn = 0;
  let tn = 0;
  let cost = 0;
  for (const r of rows) {
    const declined = r.score >= threshold;
    if (r.fraud && declined) tp++;
    else if (r.fraud) fn++;
    else if (declined) fp++;
    else tn++;
    cost += rowCost(r, threshold, costModel);
  }
  return {
    threshold,
    precision: tp + fp === 0 ? 0 : tp / (tp + fp),
    recall: tp + fn === 0 ? 0 : tp / (tp + fn),
    falsePositiveRate: fp + tn === 0 ? 0 : fp / (fp + tn),
    declineRate: rows.length === 0 ? 0 : (tp + fp) / rows.length,
    cost,
  };
}

/** What declining a legitimate payment of `amount` costs (the cost model's rate and fixed part). */
function goodDeclineCost(amount: number, costModel: CostModel): number {
  return amount * costModel.declineCostRate + costModel.declineCostFixed;
}

/** What one payment costs at `threshold`: its amount if fraud is approved, the decline cost if a good one is declined. */
export function rowCost(r: Scored, threshold: number, costModel: CostModel = DEFAULT_COST): number {
  const declined = r.score >= threshold;
  if (r.fraud) return declined ? 0 : r.amount;
  return declined ? goodDeclineCost(r.amount, costModel) : 0;
}

export interface PairedSaving {
  /** How much less `cheaper` costs than `baseline` on the rows: sum of the per-row differences. */
  saving: number;
  /** The saving's one-sided lower confidence bound from the paired bootstrap. */
  lowerBound: number;
}

/**
 * The saving of one model over another on the same rows (`baseline[i]` and `cheaper[i]`: row i's cost under each),
 * with a one-sided lower bound from a paired bootstrap: the rows resampled with replacement `rounds` times (seeded,
 * so a run is reproducible), the saving of each resample, and its (1 - confidence) quantile. Fraud costs are few
 * and large: one chargeback of a big payment caught by luck makes a model cheaper on a week's hold-out, and a
 * positive lower bound says the saving does not rest on a few such rows.
 */
export function pairedSaving(baseline: readonly number[], cheaper: readonly number[], options: { rounds?: number; confidence?: number; seed?: number } = {}): PairedSaving {
  if (baseline.length !== cheaper.length) throw new Error(`paired costs of ${baseline.length} and ${cheaper.length} rows`);
  const { rounds = 2_000, confidence = 0.95, seed = 1 } = options;
  const differences = baseline.map((cost, i) => cost - cheaper[i]!);
  const saving = differences.reduce((sum, d) => sum + d, 0);
  if (differences.length === 0) return { saving: 0, lowerBound: 0 };
  const rng = new Rng(seed);
  const resampled: number[] = [];
  for (let round = 0; round < rounds; round++) {
    let sum = 0;
    for (let k = 0; k < differences.length; k++) sum += differences[rng.int(0, differences.length - 1)]!;
    resampled.push(sum);
  }
  resampled.sort((a, b) => a - b);
  // The (1 - confidence) quantile: the least resample with that share of them at or below it, the ((1 - confidence)
  // * rounds)-th smallest. floor() as an index took the one after it (the 101st of 2,000, the 2nd of 20: a 90%
  // bound), or not, as (1 - confidence) * rounds came out of floating point a hair above or below a whole number.
  const rank = Math.ceil((1 - confidence) * rounds - 1e-6);
  return { saving, lowerBound: resampled[Math.min(rounds - 1, Math.max(0, rank - 1))]! };
}

/**
 * "Decline nothing" as a threshold no score reaches. Finite: the threshold is stored in the artefact's JSON, which
 * writes Infinity as null, and a null threshold compares as 0 (decline everything).
 */
export const DECLINE_NOTHING = Number.MAX_VALUE;

/**
 * The threshold with the least expected cost on `rows` (chosen on training data, reported on the test set). Every
 * distinct score is a candidate, plus "decline nothing", in one sweep from the highest score down: a grid of 2,000
 * candidates skipped most of the few high scores where the optimum lies (on 36,000 training rows every 18th
 * score), and could return a threshold that declines good payments the exact one spares. On equal cost the
 * higher threshold (fewer declines) wins.
 */
export function costOptimalThreshold(rows: readonly Scored[], costModel: CostModel = DEFAULT_COST): number {
  const sorted = byScoreDesc(rows);
  let cost = sorted.reduce((sum, r) => sum + (r.fraud ? r.amount : 0), 0);
  let best = { threshold: DECLINE_NOTHING, cost };
  for (let i = 0; i < sorted.length; ) {
    const score = sorted[i]!.score;
    // Declining at `score` declines every row scored at it: the fraud is no longer lost, the good ones cost.
    for (; i < sorted.length && sorted[i]!.score === score; i++) {
      const r = sorted[i]!;
      cost += r.fraud ? -r.amount : goodDeclineCost(r.amount, costModel);
    }
    if (cost < best.cost) best = { threshold: score, cost };
  }
  return best.threshold;
}

/** Recall when at most `fpr` of legitimate payments are declined. */
export function recallAtFpr(rows: readonly Scored[], fpr: number): number {
  const sorted = byScoreDesc(rows);
  const negatives = sorted.filter((r) => !r.fraud).length;
  const positives = sorted.length - negatives;
  let fp = 0;
  let tp = 0;
  let best = 0;
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    let newFp = 0;
    let newTp = 0;
    while (j < sorted.length && sorted[j]!.score === sorted[i]!.score) {
      if (sorted[j]!.fraud) newTp++;
      else newFp++;
      j++;
    }
    if ((fp + newFp) / negatives > fpr) break;
    fp += newFp;
    tp += newTp;
    best = tp / positives;
    i = j;
  }
  return positives === 0 ? NaN : best;
}

export interface CalibrationBin {
  from: number;
  to: number;
  count: number;
  meanScore: number;
  fraudRate: number;
}

/** Ten equal-width score bins and the expected calibration error (count-weighted |mean score - fraud rate|). */
export function calibration(rows: readonly Scored[]): { bins: CalibrationBin[]; expectedCalibrationError: number } {
  const bins: CalibrationBin[] = Array.from({ length: 10 }, (_, i) => ({ from: i / 10, to: (i + 1) / 10, count: 0, meanScore: 0, fraudRate: 0 }));
  for (const r of rows) {
    const bin = bins[Math.min(9, Math.floor(r.score * 10))]!;
    bin.count++;
    bin.meanScore += r.score;
    bin.fraudRate += r.fraud ? 1 : 0;
  }
  let ece = 0;
  for (const bin of bins) {
    if (bin.count === 0) continue;
    bin.meanScore /= bin.count;
    bin.fraudRate /= bin.count;
    ece += (bin.count / rows.length) * Math.abs(bin.meanScore - bin.fraudRate);
  }
  return { bins, expectedCalibrationError: ece };
}
