/**
 * `make chaos`: the failure promises of DESIGN.md checked against the whole system under faults, for minutes
 * (the short version of the same scenarios runs in `make test`: test/chaos.test.ts).
 *
 *   CHAOS_BANK_SECONDS      bank test duration (default 300)
 *   CHAOS_FAULT_EVERY_MS    time between two faults (default 5000)
 *   CHAOS_CLIENTS           concurrent clients (default 16)
 *   CHAOS_OVERLOAD_SECONDS  overload duration (default 30)
 *   CHAOS_LOG_LEVEL         the services' log level (default silent)
 *
 * Prints a table per scenario and exits 1 on any violation.
 */
import { runBank } from '../test/chaos/bank.js';
import { runOverload } from '../test/chaos/overload.js';
import { printReport, type ScenarioReport } from '../test/chaos/report.js';
import { ChaosStack } from '../test/chaos/stack.js';

const setting = (name: string, fallback: number) => Number(process.env[name] ?? fallback);

const started = Date.now();
const stack = await ChaosStack.start();
const reports: [string, ScenarioReport][] = [];
try {
  reports.push([
    'bank test',
    await runBank(stack, { seconds: setting('CHAOS_BANK_SECONDS', 300), clients: setting('CHAOS_CLIENTS', 16), wallets: 16, faultEveryMs: setting('CHAOS_FAULT_EVERY_MS', 5_000) }),
  ]);
  reports.push(['overload', await runOverload(stack, { seconds: setting('CHAOS_OVERLOAD_SECONDS', 30), factor: 10 })]);
} finally {
  await stack.close();
}
for (const [scenario, report] of reports) {
  printReport(scenario, report);
  console.log();
}
const violations = reports.reduce((n, [, r]) => n + r.violations.length, 0);
console.log(`chaos: ${reports.length} scenarios in ${((Date.now() - started) / 1000).toFixed(0)} s, ${violations} violations`);
process.exit(violations === 0 ? 0 : 1);
