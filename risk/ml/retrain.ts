/**
 * `npm run risk:retrain`: the retraining job. Trains a challenger of the champion's kind on the labelled
 * history up to a week before now (labels known at that cut-off), evaluates champion and challenger on the
 * same hold-out (the latest week), and promotes the challenger (writes it as RISK_CHAMPION_PATH, default
 * .data/risk/champion.json) only when its expected cost is lower. Run weekly (README), after the week's
 * chargebacks arrived; --weeks sets how much simulated history "now" has.
 */
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { parseArtefact, readArtefact } from './artefact.js';
import type { FraudModel } from './models.js';
import { buildDataset, evaluateScores, timeSplit, trainModels, type ModelArtefact } from './pipeline.js';
import { DEFAULT_SYNTH } from './synth.js';

export interface RetrainOutcome {
  promoted: boolean;
  championCost: number;
  challengerCost: number;
  challenger: ModelArtefact;
}

/** Trains and compares; promotes by writing `championPath` when the challenger is cheaper on the hold-out. */
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
  const cost = (a: ModelArtefact, model: FraudModel) => evaluateScores(a.version, split.test.map((i) => model.score(dataset.vectors[i]!)), holdout, a.threshold).cost;
  const championCost = cost(champion, championModel);
  const challengerCost = cost(challenger, (await parseArtefact(JSON.stringify(challenger), 'challenger')).model);
  const promoted = challengerCost < championCost;
  if (promoted) await writeFile(championPath, JSON.stringify(challenger));
  return { promoted, championCost, challengerCost, challenger };
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
  console.log(JSON.stringify({ promoted: outcome.promoted, championCost: Math.round(outcome.championCost), challengerCost: Math.round(outcome.challengerCost), challenger: outcome.challenger.version }));
}
