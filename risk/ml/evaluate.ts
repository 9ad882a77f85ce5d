/**
 * `npm run risk:evaluate`: loads the newest artefact of each kind from RISK_MODEL_DIR, rebuilds the data set
 * from the artefact's seed, and scores the hold-out (the weeks after the training cut-off, final labels) with
 * each model and with the rules-only scorer as the baseline, in the same run. Prints the table and writes
 * .data/risk/report.json.
 */
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { loadConfig } from '../../lib/config.js';
import { rulesSettings } from '../app.js';
import { readArtefact } from './artefact.js';
import type { FraudModel } from './models.js';
import { buildDataset, comparableArtefacts, evaluateScores, rulesScores, rulesThreshold, timeSplit, type ModelArtefact } from './pipeline.js';

const dir = process.env['RISK_MODEL_DIR'] ?? '.data/risk/models';
const files = (await readdir(dir)).filter((f) => f.endsWith('.json')).sort();
const newest = new Map<string, { artefact: ModelArtefact; model: FraudModel }>();
for (const f of files) {
  const read = await readArtefact(path.join(dir, f));
  newest.set(read.artefact.kind, read);
}
if (newest.size === 0) throw new Error(`no model in ${dir}: run npm run risk:train first`);
// One hold-out for all: the newest artefact's; a model that trained on part of it, or on other data, is left out.
const { reference: first, comparable, skipped } = comparableArtefacts([...newest.values()]);
for (const { candidate, why } of skipped) console.log(`not evaluated: ${candidate.artefact.version}, ${why}`);
const dataset = buildDataset(first.synth);
const split = timeSplit(dataset, first.trainingWindow.toMs / (7 * 86_400_000));
const holdout = split.test.map((i) => dataset.payments[i]!);
const settings = rulesSettings(loadConfig());
const allRules = rulesScores(dataset.payments, settings);
const rows = [evaluateScores('rules-v1 (baseline)', split.test.map((i) => allRules[i]!), holdout, rulesThreshold(settings))];
for (const { artefact, model } of comparable) {
  rows.push(evaluateScores(artefact.version, split.test.map((i) => model.score(dataset.vectors[i]!)), holdout, artefact.threshold));
}
const fmt = (v: number) => (Number.isInteger(v) ? v.toLocaleString('en-US') : v.toFixed(3));
console.log(`hold-out: ${holdout.length} payments, ${holdout.filter((p) => p.fraud).length} fraud (seed ${first.seed})`);
console.log(['model', 'PR-AUC', 'ROC-AUC', 'recall@1%FPR', 'threshold', 'precision', 'recall', 'decline rate', 'cost', 'ECE'].join(' | '));
for (const r of rows) console.log([r.model, r.prAuc, r.rocAuc, r.recallAt1PctFpr, r.threshold, r.precision, r.recall, r.declineRate, Math.round(r.cost), r.expectedCalibrationError].map((v) => (typeof v === 'number' ? fmt(v) : v)).join(' | '));
await mkdir('.data/risk', { recursive: true });
await writeFile('.data/risk/report.json', JSON.stringify({ createdAt: new Date().toISOString(), seed: first.seed, holdout: holdout.length, rows }, null, 2));
