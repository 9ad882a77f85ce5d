/**
 * Settlement from the command line (finance and operations); JSON on stdout unless a file format is asked for.
 *   npm run -s settlement -- set-profile --merchant ID (--daily HH:MM [--time-zone Europe/Paris] | --every MINUTES)
 *                                         [--payout-name NAME --iban IBAN [--bic BIC]]
 *   npm run -s settlement -- close --merchant ID --currency USD      close the open window now (also scheduled)
 *   npm run -s settlement -- reconcile (--batch ID | --merchant ID | --all)   exit 1 when a discrepancy is found
 *   npm run -s settlement -- report --batch ID                       the batch report, CSV
 *   npm run -s settlement -- payout-file --batch ID                  the bank file, pain.001 XML
 * Needs the database and the ledger (LEDGER_GRPC_TARGET); not the settlement service.
 */
import { parseArgs } from 'node:util';
import { electronicFormatIBAN, isValidBIC, isValidIBAN } from 'ibantools';
import { loadConfig } from '../lib/config.js';
import { createPool } from '../lib/db.js';
import { channelCredentials } from '../lib/grpc-tls.js';
import { AppError, ValidationError } from '../lib/errors.js';
import { createLogger } from '../lib/logger.js';
import { LedgerClient } from '../ledger/client.js';
import { hasControlCharacters, parseId } from '../ledger/validation.js';
import { settlementSettings } from './app.js';
import { payoutInitiationXml, sepaText } from './payout-file.js';
import { reconcileBatch } from './reconcile.js';
import { batchReportCsv } from './report.js';
import { batchToProto } from './service.js';
import { Settler } from './settler.js';
import * as store from './store.js';
import { describeSchedule, parseSchedule } from './windows.js';

const [command, ...rest] = process.argv.slice(2);
const { values } = parseArgs({
  args: rest,
  options: {
    merchant: { type: 'string' },
    currency: { type: 'string' },
    batch: { type: 'string' },
    all: { type: 'boolean' },
    daily: { type: 'string' },
    'time-zone': { type: 'string' },
    every: { type: 'string' },
    'payout-name': { type: 'string' },
    iban: { type: 'string' },
    bic: { type: 'string' },
  },
});
const config = loadConfig();
const logger = createLogger('settlement-cli', config.LOG_LEVEL === 'info' ? 'warn' : config.LOG_LEVEL);
const pool = createPool(config, { max: 2, applicationName: 'settlement-cli' });
const ledger = new LedgerClient(config.LEDGER_GRPC_TARGET, { autoBatch: false, credentials: channelCredentials(config) });
const json = (value: unknown) => JSON.stringify(value, (_, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2);

async function batchArg(): Promise<store.Batch> {
  const batch = await store.findBatch(pool, parseId(values.batch ?? '', 'batch'));
  if (!batch) throw new AppError('not_found', 'settlement_not_found', 'no such settlement batch', { field: 'batch' });
  return batch;
}

function payoutArg(): store.PayoutAccount | null {
  if (!values.iban && !values['payout-name']) return null;
  const iban = electronicFormatIBAN(values.iban ?? '') ?? '';
  if (!isValidIBAN(iban)) throw new ValidationError('iban', 'not a valid IBAN', 'invalid_iban');
  if (!values['payout-name']) throw new ValidationError('payout-name', 'the account holder is required with an IBAN');
  // The pain.001 file carries the name in SEPA's Latin character set (sepaText): a name with nothing of it (one in
  // another script) would leave the file without a creditor name, which the bank refuses.
  if (values['payout-name'].length > 140 || hasControlCharacters(values['payout-name'])) throw new ValidationError('payout-name', '1-140 printable characters');
  if (sepaText(values['payout-name']) === '') throw new ValidationError('payout-name', 'the account holder as the bank knows it, in Latin letters (SEPA files carry no other script)');
  if (values.bic && !isValidBIC(values.bic)) throw new ValidationError('bic', 'not a valid BIC', 'invalid_bic');
  return { name: values['payout-name'], iban, bic: values.bic ?? null };
}

try {
  if (command === 'set-profile') {
    const merchantId = parseId(values.merchant ?? '', 'merchant');
    // The profile is replaced as a whole: a schedule left out would silently become daily at 00:00 UTC.
    if (!values.every === !values.daily) throw new ValidationError('daily', 'give the schedule: --daily HH:MM or --every MINUTES, one of them');
    const schedule = values.every
      ? parseSchedule({ kind: 'interval', intervalMinutes: Number(values.every) })
      : parseSchedule({ kind: 'daily', cutoff: values.daily, timeZone: values['time-zone'] ?? 'UTC' });
    await store.saveProfile(pool, merchantId, { schedule, payout: payoutArg() });
    console.log(json({ merchant_id: merchantId, schedule: describeSchedule(schedule), payout_account: payoutArg() }));
  } else if (command === 'close') {
    const settler = new Settler(pool, ledger, settlementSettings(config), logger);
    const batches = await settler.closeNow(parseId(values.merchant ?? '', 'merchant'), values.currency ?? '');
    console.log(json(batches.map(batchToProto)));
  } else if (command === 'reconcile') {
    const batches = values.batch
      ? [await batchArg()]
      : values.merchant || values.all
        ? (await pool.query(`SELECT id FROM settlement_batches WHERE ($1::uuid IS NULL OR merchant_id = $1) ORDER BY window_end, id`, [values.merchant ? parseId(values.merchant, 'merchant') : null])).rows
        : null;
    if (!batches) throw new ValidationError('batch', 'give --batch ID, --merchant ID or --all');
    let discrepancies = 0;
    for (const { id } of batches) {
      const r = await reconcileBatch(pool, ledger, (await store.findBatch(pool, id))!);
      discrepancies += r.discrepancies.length;
      console.log(json({ batch_id: id, lines_checked: r.linesChecked, ledger_transfers_checked: r.ledgerTransfersChecked, events_checked: r.eventsChecked, discrepancies: r.discrepancies }));
    }
    if (discrepancies > 0) process.exitCode = 1;
  } else if (command === 'report') {
    const batch = await batchArg();
    process.stdout.write(batchReportCsv(batch, await store.batchEntries(pool, batch.id)));
  } else if (command === 'payout-file') {
    const batch = await batchArg();
    const debtor = { name: config.SETTLEMENT_DEBTOR_NAME, iban: config.SETTLEMENT_DEBTOR_IBAN, bic: config.SETTLEMENT_DEBTOR_BIC };
    process.stdout.write(payoutInitiationXml(batch, debtor, (await store.findProfile(pool, batch.merchantId))?.payout ?? null, new Date()));
  } else {
    console.error('usage: settlement set-profile | close | reconcile | report | payout-file (see settlement/cli.ts)');
    process.exitCode = 2;
  }
} catch (error) {
  console.error(JSON.stringify({ error: error instanceof AppError ? { code: error.code, message: error.message, field: error.details?.field } : String(error) }));
  process.exitCode = 1;
} finally {
  ledger.close();
  await pool.end();
}
