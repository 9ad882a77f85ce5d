/**
 * A small command line for the ledger's gRPC API, for trying it out and for operators.
 *   npm run ledger -- create-account [--ledger 978] [--code 1] [--history] [--debits-must-not-exceed-credits]
 *   npm run ledger -- transfer --debit ID --credit ID --amount 1000 [--ledger 978] [--pending --timeout 60]
 *   npm run ledger -- post --pending-id ID [--amount N]     npm run ledger -- void --pending-id ID
 *   npm run ledger -- lookup-accounts ID...                 npm run ledger -- lookup-transfers ID...
 *   npm run ledger -- account-transfers ID [--limit 20] [--reversed]
 * Target: LEDGER_GRPC_TARGET (default 127.0.0.1:50051), over mutual TLS when GRPC_TLS_* are set. Output: JSON, 64-bit numbers as strings.
 * Creations take --id ID (default: a new one); one whose call failed says its id, to repeat the command with.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import { loadConfig } from '../lib/config.js';
import { channelCredentials } from '../lib/grpc-tls.js';
import { LedgerClient, newAccount, newTransfer } from './client.js';
import { accountCodeName, transferCodeName } from './convert.js';

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: {
    ledger: { type: 'string', default: '978' },
    code: { type: 'string', default: '1' },
    history: { type: 'boolean', default: false },
    'debits-must-not-exceed-credits': { type: 'boolean', default: false },
    'credits-must-not-exceed-debits': { type: 'boolean', default: false },
    debit: { type: 'string', default: '' },
    credit: { type: 'string', default: '' },
    amount: { type: 'string', default: '0' },
    pending: { type: 'boolean', default: false },
    timeout: { type: 'string', default: '0' },
    'pending-id': { type: 'string', default: '' },
    id: { type: 'string' },
    limit: { type: 'string', default: '20' },
    reversed: { type: 'boolean', default: false },
  },
});

const [command, ...args] = positionals;
const config = loadConfig();
const client = new LedgerClient(config.LEDGER_GRPC_TARGET, { autoBatch: false, credentials: channelCredentials(config) });
const print = (value: unknown) => console.log(JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2));
/**
 * The id of the event being sent: a call that fails (its deadline, the connection lost) may still have been applied,
 * and only the same id sent again tells without applying it twice (the ledger then answers `exists`).
 */
let sending: { kind: string; id: string } | undefined;
const integer = (name: string, value: string) => {
  if (!/^\d+$/.test(value)) throw new Error(`--${name} must be a non-negative integer, got ${JSON.stringify(value)}`);
  return value;
};


async function createTransfer(kind: 'transfer' | 'post' | 'void'): Promise<void> {
  const id = values.id ?? randomUUID();
  const transfer = newTransfer({
    id,
    debitAccountId: values.debit,
    creditAccountId: values.credit,
    amount: BigInt(integer('amount', values.amount)),
    pendingId: values['pending-id'],
    ledger: kind === 'transfer' ? Number(integer('ledger', values.ledger)) : 0,
    code: kind === 'transfer' ? Number(integer('code', values.code)) : 0,
    flags: { pending: values.pending, postPendingTransfer: kind === 'post', voidPendingTransfer: kind === 'void' },
    timeout: Number(integer('timeout', values.timeout)),
  });
  sending = { kind, id };
  const [result] = await client.createTransfers([transfer]);
  print({ id, result: result ? transferCodeName(result.code) : 'none', timestamp: result?.timestamp });
}

try {
  switch (command) {
    case 'create-account': {
      const id = values.id ?? randomUUID();
      const account = newAccount({
        id,
        ledger: Number(integer('ledger', values.ledger)),
        code: Number(integer('code', values.code)),
        flags: {
          debitsMustNotExceedCredits: values['debits-must-not-exceed-credits'],
          creditsMustNotExceedDebits: values['credits-must-not-exceed-debits'],
          history: values.history,
        },
      });
      sending = { kind: 'account', id };
      const [result] = await client.createAccounts([account]);
      print({ id, result: result ? accountCodeName(result.code) : 'none', timestamp: result?.timestamp });
      break;
    }
    case 'transfer':
    case 'post':
    case 'void':
      await createTransfer(command);
      break;
    case 'lookup-accounts':
      print(await client.lookupAccounts(args));
      break;
    case 'lookup-transfers':
      print(await client.lookupTransfers(args));
      break;
    case 'account-transfers':
      print(await client.getAccountTransfers({ accountId: args[0] ?? '', limit: Number(integer('limit', values.limit)), reversed: values.reversed }));
      break;
    default:
      console.error('usage: npm run ledger -- create-account|transfer|post|void|lookup-accounts|lookup-transfers|account-transfers ... (see ledger/cli.ts)');
      process.exitCode = 2;
  }
} catch (error) {
  console.error(error instanceof Error ? error.message : error);
  if (sending) console.error(`the ${sending.kind} ${sending.id} may have been applied: repeat the command with --id ${sending.id} to find out`);
  process.exitCode = 1;
} finally {
  client.close();
}
