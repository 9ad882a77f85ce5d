/** A scenario's outcome: the figures it measured, and every promise it saw broken (none, when all is well). */
export interface ScenarioReport {
  counts: Record<string, number>;
  violations: string[];
}

/** Prints a scenario's figures as a two-column table, then its violations (or that there were none). */
export function printReport(scenario: string, report: ScenarioReport, out: (line: string) => void = console.log): void {
  const rows = Object.entries(report.counts).map(([name, value]) => [name, Number.isInteger(value) ? String(value) : value.toFixed(1)] as const);
  const width = Math.max(scenario.length, ...rows.map(([name]) => name.length));
  out(`${scenario.padEnd(width)}  ${'value'.padStart(10)}`);
  out(`${'-'.repeat(width)}  ${'-'.repeat(10)}`);
  for (const [name, value] of rows) out(`${name.padEnd(width)}  ${value.padStart(10)}`);
  out(`violations: ${report.violations.length}`);
  for (const v of report.violations.slice(0, 50)) out(`  ${v}`);
  if (report.violations.length > 50) out(`  ... and ${report.violations.length - 50} more`);
}
