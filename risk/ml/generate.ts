/**
 * `npm run risk:generate -- --seed 7 --weeks 6 --customers 2000 --out .data/risk/payments.jsonl`: writes the
 * synthetic payments log as JSON lines (one payment each, in time order, with its fraud pattern and label
 * time). The same options give the same file; data sets stay out of git (.data/ is ignored).
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { DEFAULT_SYNTH, generatePayments } from './synth.js';

const { values } = parseArgs({ options: { seed: { type: 'string' }, weeks: { type: 'string' }, customers: { type: 'string' }, out: { type: 'string' } } });
const options = {
  ...DEFAULT_SYNTH,
  seed: Number(values.seed ?? DEFAULT_SYNTH.seed),
  weeks: Number(values.weeks ?? DEFAULT_SYNTH.weeks),
  customers: Number(values.customers ?? DEFAULT_SYNTH.customers),
};
const out = values.out ?? '.data/risk/payments.jsonl';
const payments = generatePayments(options);
await mkdir(path.dirname(out), { recursive: true });
await writeFile(out, payments.map((p) => JSON.stringify(p)).join('\n') + '\n');
const fraud = payments.filter((p) => p.fraud).length;
console.log(JSON.stringify({ out, options, payments: payments.length, fraud, fraudRate: fraud / payments.length }));
