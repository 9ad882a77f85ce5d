/**
 * `npm run risk:train`: generates the synthetic data set (seeded), trains the logistic regression and the
 * gradient-boosted trees on the earlier weeks with the labels known at the cut-off, picks each model's
 * cost-optimal threshold on the training data, and writes the versioned artefacts to RISK_MODEL_DIR
 * (default .data/risk/models; not committed). Options: --seed N --weeks N --train-weeks N --customers N.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_SYNTH } from './synth.js';
import { buildDataset, timeSplit, trainModels } from './pipeline.js';

const { values } = parseArgs({ options: { seed: { type: 'string' }, weeks: { type: 'string' }, 'train-weeks': { type: 'string' }, customers: { type: 'string' } } });
const synth = { ...DEFAULT_SYNTH, seed: Number(values.seed ?? DEFAULT_SYNTH.seed), weeks: Number(values.weeks ?? DEFAULT_SYNTH.weeks), customers: Number(values.customers ?? DEFAULT_SYNTH.customers) };
const trainWeeks = Number(values['train-weeks'] ?? Math.floor((synth.weeks * 2) / 3));
const dir = process.env['RISK_MODEL_DIR'] ?? '.data/risk/models';

const started = performance.now();
const dataset = buildDataset(synth);
const split = timeSplit(dataset, trainWeeks);
const artefacts = await trainModels(dataset, split, synth);
await mkdir(dir, { recursive: true });
for (const a of artefacts) {
  const file = path.join(dir, `${a.version}.json`);
  await writeFile(file, JSON.stringify(a));
  console.log(JSON.stringify({ model: a.version, file, threshold: a.threshold, train: a.trainMetrics }));
}
console.log(JSON.stringify({ payments: dataset.payments.length, train: split.train.length, test: split.test.length, seconds: Math.round((performance.now() - started) / 100) / 10 }));
