/**
 * Traces without a collector: `make dev` writes spans to TRACES_FILE (JSON lines, TRACES_EXPORTER=file); this
 * prints the tree of the last payment's trace (or of the trace named), with each span's service and duration.
 *   npm run -s trace                  the last POST /v1/payments
 *   npm run -s trace -- <trace id>    that trace
 */
import { existsSync, readFileSync } from 'node:fs';
import { loadConfig } from '../lib/config.js';
import type { SpanRecord } from '../observability/tracing.js';

const file = loadConfig().TRACES_FILE;
if (!existsSync(file)) {
  console.error(`trace: no spans in ${file} yet (make dev writes them there; make a payment first)`);
  process.exit(1);
}
const spans = readFileSync(file, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => JSON.parse(line) as SpanRecord);
const wanted = process.argv[2];
const root = wanted
  ? spans.find((s) => s.traceId === wanted && !spans.some((p) => p.traceId === s.traceId && p.spanId === s.parentSpanId))
  : spans.filter((s) => s.name === 'POST /v1/payments').sort((a, b) => b.startUs - a.startUs)[0];
if (!root) {
  console.error(wanted ? `trace: no trace ${wanted} in ${file}` : `trace: no POST /v1/payments in ${file} yet`);
  process.exit(1);
}
const inTrace = spans.filter((s) => s.traceId === root.traceId).sort((a, b) => a.startUs - b.startUs);
const children = new Map<string, SpanRecord[]>();
for (const s of inTrace) if (s !== root && s.parentSpanId) children.set(s.parentSpanId, [...(children.get(s.parentSpanId) ?? []), s]);
console.log(`trace ${root.traceId}: ${inTrace.length} spans`);
const print = (s: SpanRecord, depth: number) => {
  const offset = ((s.startUs - root.startUs) / 1000).toFixed(1).padStart(8);
  const took = (s.durationUs / 1000).toFixed(1).padStart(7);
  const links = s.links.length > 0 ? ` (links ${s.links.length})` : '';
  console.log(`${offset} ms ${took} ms  ${'  '.repeat(depth)}${s.service}: ${s.name}${s.status === 2 ? ' [error]' : ''}${links}`);
  for (const c of children.get(s.spanId) ?? []) print(c, depth + 1);
};
print(root, 0);
