/**
 * `npm run risk:retrain`: the retraining job. Trains a challenger of the champion's kind on the labelled
 * history up to a week before now (labels known at that cut-off), evaluates champion and challenger on the
 * same hold-out (the latest week), and promotes the challenger (writes it as RISK_CHAMPION_PATH, default
 * .data/risk/champion.json) only when its expected cost is lower, and significantly so: the lower bound of a paired
 * bootstrap of the saving (95%, one-sided: metrics.ts pairedSaving) is above zero. Run weekly (README), after the week's
 * chargebacks arrived; --weeks sets how much simulated history "now" has.
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseArtefact, readArtefact } from './artefact.js';
import type { FraudModel } from './models.js';
import { pairedSaving, rowCost } from './metrics.js';
import { buildDataset, timeSplit, trainModels, type ModelArtefact } from './pipeline.js';
import { DEFAULT_SYNTH } from './synth.js';

export interface RetrainOutcome {
  promoted: boolean;
  championCost: number;
  challengerCost: number;
  /** The saving's 95% one-sided lower bound (paired bootstrap over the hold-out payments): promoted only above 0. */
  savingLowerBound: number;
  challenger: ModelArtefact;
}

/** Trains and compares; promotes by writing `championPath` when the challenger is significantly cheaper on the hold-out. */
export async function retrain(championPath: string, weeks: number): Promise<RetrainOutcome> {
  const { artefact: champion, model: championModel } = await readArtefact(championPath);
  const synth = { ...champion.synth, weeks };
  const dataset = buildDataset(synth);
  // Payments at least a week old, labelled with every chargeback known now (the end of the history).
  const split = { ...timeSplit(dataset, weeks - 1), labelsAt: weeks * 7 * 86_400_000 };
  // A champion that trained on the hold-out week would be costed on its own training payments (in-sample, so
  // cheaper than it is) and a better challenger would not be promoted: no comparison then.
  if (champion.trainingWindow.toMs > split.cutoff) {
    throw new Error(`champion ${champion.version} was trained up to day ${champion.trainingWindow.toMs / 86_400_000}, into the hold-out week (from day ${split.cutoff / 86_400_000}): retrain with more weeks of history`);
  }
  const challenger = (await trainModels(dataset, split, synth)).find((a) => a.kind === champion.kind)!;
  const holdout = split.test.map((i) => dataset.payments[i]!);
  const costs = (a: ModelArtefact, model: FraudModel) => split.test.map((i, k) => rowCost({ score: model.score(dataset.vectors[i]!), fraud: holdout[k]!.fraud, amount: holdout[k]!.amount }, a.threshold));
  const championCosts = costs(champion, championModel);
  const challengerCosts = costs(challenger, (await parseArtefact(JSON.stringify(challenger), 'challenger')).model);
  const sum = (xs: readonly number[]) => xs.reduce((s, x) => s + x, 0);
  const { lowerBound } = pairedSaving(championCosts, challengerCosts);
  const promoted = lowerBound > 0;
  if (promoted) await writeFile(championPath, JSON.stringify(challenger));
  return { promoted, championCost: sum(championCosts), challengerCost: sum(challengerCosts), savingLowerBound: lowerBound, challenger };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({ options: { weeks: { type: 'string' } } });
  const championPath = process.env['RISK_CHAMPION_PATH'] ?? '.data/risk/champion.json';
  await mkdir(path.dirname(championPath), { recursive: true });
  try {
    await readFile(championPath);
  } catch {
    // No champion yet: the first training run becomes it.
    const dataset = buildDataset(DEFAULT_SYNTH);
    const [first] = await trainModels(dataset, timeSplit(dataset, DEFAULT_SYNTH.weeks - 2), DEFAULT_SYNTH);
    await writeFile(championPath, JSON.stringify(first));
  }
  const outcome = await retrain(championPath, Number(values.weeks ?? DEFAULT_SYNTH.weeks + 1));
  console.log(
    JSON.stringify({ promoted: outcome.promoted, championCost: Math.round(outcome.championCost), challengerCost: Math.round(outcome.challengerCost), savingLowerBound: Math.round(outcome.savingLowerBound), challenger: outcome.challenger.version }),
  );
}
