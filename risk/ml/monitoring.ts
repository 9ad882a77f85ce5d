/**
 * Monitoring of a served model: drift of its inputs and score against the training distribution (population
 * stability index) and fairness across segments (false-positive and decline rates per country, card type).
 */

export const PSI_WATCH = 0.1;
export const PSI_ALERT = 0.25;
/** A segment whose rate differs from the best segment's by more than this factor is flagged (four-fifths rule). */
export const PARITY_RATIO = 0.8;

export type DriftStatus = 'stable' | 'watch' | 'alert';

export interface Drift {
  name: string;
  psi: number;
  status: DriftStatus;
}

/**
 * PSI of `actual` against `expected`, over bins cut at the deciles of `expected` (tied cut points merge). Each cut
 * value is a bin of its own between the intervals around it: most model inputs are counts and flags, mostly 0,
 * whose deciles all tie at 0, and with intervals alone every value fell into one bin ([0, inf)), so a flag going
 * from 3% to 50% of payments, or a burst of card counts, read as no drift at all. Empty bins count as 0.5
 * observations, so a bin that empties never divides by zero; bins empty in both samples are left out.
 */
export function psi(expected: readonly number[], actual: readonly number[]): number {
  if (expected.length === 0 || actual.length === 0) return 0;
  const sorted = [...expected].sort((a, b) => a - b);
  const cuts = [...new Set(Array.from({ length: 9 }, (_, i) => sorted[Math.floor(((i + 1) * sorted.length) / 10)]!))];
  // Bins 0, 2, ..., 2m: the open intervals below, between and above the cuts; bin 2k+1: the value cuts[k] itself.
  const binOf = (v: number) => {
    let k = 0;
    while (k < cuts.length && v > cuts[k]!) k++;
    return k < cuts.length && v === cuts[k] ? 2 * k + 1 : 2 * k;
  };
  const histogram = (values: readonly number[]) => {
    const counts = new Array<number>(2 * cuts.length + 1).fill(0);
    for (const v of values) counts[binOf(v)]!++;
    return counts;
  };
  const e = histogram(expected);
  const a = histogram(actual);
  let sum = 0;
  for (let i = 0; i < e.length; i++) {
    if (e[i] === 0 && a[i] === 0) continue;
    const ei = Math.max(e[i]!, 0.5) / expected.length;
    const ai = Math.max(a[i]!, 0.5) / actual.length;
    sum += (ai - ei) * Math.log(ai / ei);
  }
  return sum;
}

export function driftStatus(value: number): DriftStatus {
  return value >= PSI_ALERT ? 'alert' : value >= PSI_WATCH ? 'watch' : 'stable';
}

/** Drift of each feature (columns of the vectors), current window against training. */
export function featureDrift(names: readonly string[], training: readonly (readonly number[])[], current: readonly (readonly number[])[]): Drift[] {
  const column = (rows: readonly (readonly number[])[], j: number) => rows.map((r) => r[j]!);
  return names.map((name, j) => {
    const value = psi(column(training, j), column(current, j));
    return { name, psi: value, status: driftStatus(value) };
  });
}

/** Drift of each feature and of the score, current window against training. */
export function driftReport(names: readonly string[], training: readonly number[][], current: readonly number[][], trainingScores: readonly number[], currentScores: readonly number[]): Drift[] {
  const score = psi(trainingScores, currentScores);
  return [...featureDrift(names, training, current), { name: 'score', psi: score, status: driftStatus(score) }];
}

/**
 * Live drift against a reference: observations gathered in windows of `size`; each full window is compared with
 * the reference sample (or, when none was given, becomes it: the first window seen).
 */
export class ReferenceWindows<T, R> {
  private readonly recent: T[] = [];
  private reference: readonly T[] | undefined;

  constructor(
    reference: readonly T[] | undefined,
    private readonly size: number,
    private readonly compare: (reference: readonly T[], window: readonly T[]) => R,
  ) {
    this.reference = reference && reference.length > 0 ? reference : undefined;
  }

  /** Adds one observation; the comparison when it completes a window against a reference, else undefined. */
  record(value: T): R | undefined {
    this.recent.push(value);
    if (this.recent.length < this.size) return undefined;
    const window = this.recent.splice(0);
    if (this.reference) return this.compare(this.reference, window);
    this.reference = window;
    return undefined;
  }
}

/**
 * Live feature drift, for the metrics: the PSI of each feature over the last `window` vectors served, against a
 * reference sample (the artefact's training vectors, or else the first window seen).
 */
export class FeatureDriftMonitor {
  private readonly windows: ReferenceWindows<readonly number[], Drift[]>;
  private latest: Drift[] = [];

  constructor(
    readonly names: readonly string[],
    reference?: readonly (readonly number[])[],
    window = 5_000,
  ) {
    this.windows = new ReferenceWindows(reference, window, (training, current) => featureDrift(names, training, current));
  }

  record(vector: readonly number[]): void {
    this.latest = this.windows.record(vector) ?? this.latest;
  }

  /** The PSI of each feature at the last full window (empty before one). */
  get drift(): readonly Drift[] {
    return this.latest;
  }
}

export interface SegmentRates {
  segment: string;
  payments: number;
  legitimate: number;
  falsePositiveRate: number;
  declineRate: number;
  /** Its legitimate payments are declined markedly and significantly more often than the other segments'. */
  flagged: boolean;
}

/**
 * Decline and false-positive rates per segment at a threshold. Parity is judged on false positives (declined
 * legitimate payments: fraud rates differ between segments, so raw decline rates may differ fairly): a segment
 * is flagged when the other segments' pooled rate is below PARITY_RATIO of its own and the difference is
 * significant (two-proportion z >= 1.96), so that small segments do not raise alarms by chance.
 */
export function fairnessReport(rows: readonly { segment: string; score: number; fraud: boolean }[], threshold: number): SegmentRates[] {
  const bySegment = new Map<string, { payments: number; legitimate: number; falsePositives: number; declines: number }>();
  for (const r of rows) {
    const s = bySegment.get(r.segment) ?? { payments: 0, legitimate: 0, falsePositives: 0, declines: 0 };
    const declined = r.score >= threshold;
    s.payments++;
    if (declined) s.declines++;
    if (!r.fraud) {
      s.legitimate++;
      if (declined) s.falsePositives++;
    }
    bySegment.set(r.segment, s);
  }
  const totalLegit = [...bySegment.values()].reduce((n, s) => n + s.legitimate, 0);
  const totalFp = [...bySegment.values()].reduce((n, s) => n + s.falsePositives, 0);
  return [...bySegment]
    .map(([segment, s]) => {
      const rate = s.legitimate === 0 ? 0 : s.falsePositives / s.legitimate;
      const otherLegit = totalLegit - s.legitimate;
      const otherRate = otherLegit === 0 ? rate : (totalFp - s.falsePositives) / otherLegit;
      const pooled = totalLegit === 0 ? 0 : totalFp / totalLegit;
      const se = Math.sqrt(pooled * (1 - pooled) * (1 / Math.max(1, s.legitimate) + 1 / Math.max(1, otherLegit)));
      const z = se === 0 ? 0 : (rate - otherRate) / se;
      return {
        segment,
        payments: s.payments,
        legitimate: s.legitimate,
        falsePositiveRate: rate,
        declineRate: s.declines / s.payments,
        flagged: rate > 0 && otherRate < PARITY_RATIO * rate && z >= 1.96,
      };
    })
    .sort((a, b) => b.payments - a.payments);
}
