import { randomUUID } from 'node:crypto';
import { channelCredentials } from '../lib/grpc-tls.js';
import { createLogger, type Logger } from '../lib/logger.js';
import { startLedger, type LedgerApp } from '../ledger/app.js';
import { LedgerClient, newAccount, newTransfer, type LedgerClientOptions } from '../ledger/client.js';
import type { Account, Transfer, TransferFlags, AccountFlags } from '../proto/gen/ledger/v1/ledger.js';
import { after, before } from 'mocha';
import type { Pool } from '../lib/db.js';
import { testConfig, testPool } from './support.js';

export interface TestLedger {
  app: LedgerApp;
  client: LedgerClient;
  close(): Promise<void>;
}

/** An in-process ledger on an ephemeral port against the test database, with its own client (secured as the ledger is: GRPC_TLS_* of `env`). */
export async function startTestLedger(env: Record<string, string> = {}, clientOptions: LedgerClientOptions = {}, logger?: Logger): Promise<TestLedger> {
  // The relay is off unless a test turns it on (with its own stream and subjects: see ledger/relay.test.ts).
  const config = testConfig({ LEDGER_GRPC_LISTEN: '127.0.0.1:0', LEDGER_SHARDS: '8', LEDGER_EXPIRY_SWEEP_MS: '100', LEDGER_WORKERS: '2', LEDGER_RELAY_ENABLED: 'false', ...env });
  // Internal errors are bugs: always shown (expected failures are AppErrors, which are not logged).
  const app = await startLedger(config, logger ?? createLogger('ledger-test', process.env['LEDGER_TEST_LOG'] ?? 'error'));
  const client = new LedgerClient(app.address, { credentials: channelCredentials(config), ...clientOptions });
  return {
    app,
    client,
    async close() {
      client.close();
      await app.close();
    },
  };
}

export const id = (): string => randomUUID();

/** An account event with a fresh id on ledger 978 (EUR), code 1. */
export function account(fields: Partial<Omit<Account, 'flags'>> & { flags?: Partial<AccountFlags> } = {}): Account {
  return newAccount({ id: id(), ledger: 978, code: 1, ...fields });
}

/** A transfer event with a fresh id on ledger 978, code 1. */
export function transfer(fields: Partial<Omit<Transfer, 'flags'>> & { flags?: Partial<TransferFlags> } = {}): Transfer {
  return newTransfer({ id: id(), ledger: 978, code: 1, ...fields });
}

/**
 * Creates `accounts` fresh accounts and commits `n` transfers among them, in concurrent requests of 100 (so
 * the shards' batches commit interleaved); every one must be ok.
 */
export async function commitTransfers(client: LedgerClient, n: number, accounts = 30): Promise<Transfer[]> {
  const created = Array.from({ length: accounts }, () => account());
  const accepted = await client.createAccounts(created);
  if (!accepted.every((r) => r.code === 1)) throw new Error('account creation failed');
  const transfers = Array.from({ length: n }, (_, i) =>
    transfer({ debitAccountId: created[i % accounts]!.id, creditAccountId: created[(i * 11 + 3) % accounts]!.id, amount: BigInt(1 + (i % 90)) }),
  );
  const results = await Promise.all(Array.from({ length: Math.ceil(n / 100) }, (_, k) => client.createTransfers(transfers.slice(k * 100, (k + 1) * 100))));
  if (!results.flat().every((r) => r.code === 1)) throw new Error('a transfer was refused');
  return transfers;
}

/**
 * A ledger and a pool on the test database for the tests of the calling `describe`: started before them and
 * closed after. Read `ledger` and `pool` inside the tests (they are set once the suite has started).
 */
export function ledgerForSuite(env: Record<string, string> = {}): { ledger: TestLedger; pool: Pool } {
  const suite = {} as { ledger: TestLedger; pool: Pool };
  before(async () => {
    suite.pool = testPool();
    suite.ledger = await startTestLedger(env);
  });
  after(async () => {
    await suite.ledger?.close();
    await suite.pool?.end();
  });
  return suite;
}
