import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { freePort } from '../test/ledger-process.js';

const run = promisify(execFile);

/** The ledger's command line, as an operator runs it (a process of its own). */
describe('ledger command line', function () {
  this.timeout(60_000);

  const cli = async (target: string, ...args: string[]) =>
    run(process.execPath, ['--import', 'tsx', 'ledger/cli.ts', ...args], { env: { ...process.env, LEDGER_GRPC_TARGET: target, LOG_LEVEL: 'silent' } }).then(
      (r) => ({ code: 0, stderr: r.stderr }),
      (e: { code?: number; stderr?: string }) => ({ code: e.code ?? -1, stderr: e.stderr ?? '' }),
    );

  // A call that fails (a deadline, the ledger unreachable mid-call) may have been applied: only the same id sent again
  // tells, without moving the money twice. The id the command made up was never shown, so a retry made another.
  it('a transfer or account whose call failed names its id, to be sent again with --id', async () => {
    const nobody = `127.0.0.1:${await freePort()}`;
    const debit = '0190f0d2-0000-7000-8000-000000000001';
    const credit = '0190f0d2-0000-7000-8000-000000000002';
    for (const args of [['transfer', '--debit', debit, '--credit', credit, '--amount', '5'], ['create-account']]) {
      const { code, stderr } = await cli(nobody, ...args);
      assert.equal(code, 1, stderr);
      assert.match(stderr, /--id [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b/, `${args[0]}: ${stderr}`);
    }
  });
});
