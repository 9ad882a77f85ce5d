import assert from 'node:assert/strict';
import { after, before, describe, it } from 'mocha';
import { runBank } from './chaos/bank.js';
import { runOverload } from './chaos/overload.js';
import { ChaosStack, SERVICES } from './chaos/stack.js';
import { printReport } from './chaos/report.js';

/**
 * The short version of `make chaos` (scripts/chaos.ts): the same scenarios against the same stack, for seconds
 * instead of minutes. Any violation fails the test with the list of what was broken.
 */
describe('chaos (short): the failure promises under faults and overload', function () {
  this.timeout(600_000);
  let stack: ChaosStack;
  before(async () => {
    stack = await ChaosStack.start();
  });
  after(async () => {
    await stack?.close();
  });

  it('bank test: services killed, database cut off, NATS restarted: nothing acknowledged lost, nothing applied twice, books balanced', async () => {
    const report = await runBank(stack, { seconds: Number(process.env['CHAOS_BANK_SECONDS'] ?? 30), clients: 8, wallets: 8, faultEveryMs: 3_000 });
    if (process.env['CHAOS_VERBOSE']) printReport('bank', report);
    assert.deepEqual(report.violations, []);
    assert.ok(report.counts['acknowledged']! > 0, 'no request was acknowledged');
    // Every fault happened at least once, or the run proved less than it says.
    for (const fault of [...SERVICES, 'postgres', 'nats'] as const) assert.ok((stack.kills.get(fault) ?? 0) > 0, `no ${fault} fault was injected`);
  });

  it('overload: 10x the sustainable rate is shed with 429/503 and Retry-After; admitted requests bounded; nothing acknowledged lost; recovers', async () => {
    const report = await runOverload(stack, { seconds: Number(process.env['CHAOS_OVERLOAD_SECONDS'] ?? 8), factor: 10 });
    if (process.env['CHAOS_VERBOSE']) printReport('overload', report);
    assert.deepEqual(report.violations, []);
  });
});
