/**
 * `npm run risk:report`: monitoring of the newest model artefact of a kind (--kind gbt|logistic, default
 * logistic) on the hold-out weeks: drift of every feature and of the score against the training weeks (PSI,
 * 0.1 watch, 0.25 alert), and fairness (false-positive and decline rates per card country and card type,
 * flagged when a segment's legitimate payments are declined markedly and significantly more than the others'). Writes .data/risk/monitoring.json.
 */
import { mkdir, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { FEATURE_NAMES } from './features.js';
import { readArtefact } from './artefact.js';
import { driftReport, fairnessReport } from './monitoring.js';
import { buildDataset, timeSplit } from './pipeline.js';

const { values } = parseArgs({ options: { kind: { type: 'string' } } });
const kind = values.kind ?? 'logistic';
const dir = process.env['RISK_MODEL_DIR'] ?? '.data/risk/models';
const file = (await readdir(dir)).filter((f) => f.startsWith(`${kind}-`) && f.endsWith('.json')).sort().pop();
if (!file) throw new Error(`no ${kind} model in ${dir}: run npm run risk:train first`);
const { artefact, model } = await readArtefact(path.join(dir, file));
const dataset = buildDataset(artefact.synth);
const split = timeSplit(dataset, artefact.trainingWindow.toMs / (7 * 86_400_000));
const vectors = (idx: number[]) => idx.map((i) => dataset.vectors[i]!);
const trainScores = vectors(split.train).map((v) => model.score(v));
const testScores = vectors(split.test).map((v) => model.score(v));
const drift = driftReport(FEATURE_NAMES, vectors(split.train), vectors(split.test), trainScores, testScores);
const segment = (by: (i: number) => string) => fairnessReport(split.test.map((i, k) => ({ segment: by(i), score: testScores[k]!, fraud: dataset.payments[i]!.fraud })), artefact.threshold);
const fairness = { cardCountry: segment((i) => dataset.payments[i]!.cardCountry), cardType: segment((i) => dataset.payments[i]!.cardType) };

console.log(`model ${artefact.version}, threshold ${artefact.threshold.toFixed(4)}; drift of the hold-out weeks against training (PSI):`);
for (const d of drift) console.log(`  ${d.name.padEnd(28)} ${d.psi.toFixed(3)}  ${d.status}`);
for (const [name, rows] of Object.entries(fairness)) {
  console.log(`fairness by ${name} (false-positive parity; FLAGGED: markedly and significantly above the other segments):`);
  for (const r of rows) console.log(`  ${r.segment.padEnd(10)} payments ${String(r.payments).padStart(6)}  FPR ${(100 * r.falsePositiveRate).toFixed(2)}%  declines ${(100 * r.declineRate).toFixed(2)}%${r.flagged ? '  FLAGGED' : ''}`);
}
await mkdir('.data/risk', { recursive: true });
await writeFile('.data/risk/monitoring.json', JSON.stringify({ createdAt: new Date().toISOString(), model: artefact.version, drift, fairness }, null, 2));
