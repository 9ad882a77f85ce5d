import { create } from 'xmlbuilder2';
import { isValidBIC, isValidIBAN } from 'ibantools';
import { currencyOf, formatMajor } from '../lib/currency.js';
import { AppError, invariant } from '../lib/errors.js';
import { movedPayout, type Batch, type PayoutAccount } from './store.js';
import { rfc3339Nanos } from './report.js';

export interface Debtor {
  name: string;
  iban: string;
  bic: string;
}

/** ISO 20022 identifiers are at most 35 characters: a UUID without its dashes (32) fits. */
const isoId = (uuid: string) => uuid.replaceAll('-', '');

/** Letters that do not decompose into a Latin letter and a mark, as the EPC's conversion table writes them. */
const LATIN_EQUIVALENTS: Record<string, string> = { ß: 'ss', æ: 'ae', Æ: 'AE', œ: 'oe', Œ: 'OE', ø: 'o', Ø: 'O', ł: 'l', Ł: 'L', đ: 'd', Đ: 'D', ð: 'd', Ð: 'D', þ: 'th', Þ: 'TH', '&': '+' };
/** Names in SEPA files are at most 70 characters (EPC implementation guidelines; ISO 20022 allows 140). */
const SEPA_NAME_LENGTH = 70;

/**
 * `text` in the character set SEPA messages are restricted to (EPC: a-z A-Z 0-9 / - ? : ( ) . , ' + and space):
 * accents dropped (é -> e), a few letters spelt out (ß -> ss), & as +, anything else a space; at most `max`
 * characters. Banks refuse a whole file for one character outside it: a payout to "Müller & Söhne" would fail
 * at the bank, after the ledger had paid it.
 */
export function sepaText(text: string, max = SEPA_NAME_LENGTH): string {
  const latin = [...text.normalize('NFD').replace(/\p{M}/gu, '')].map((c) => LATIN_EQUIVALENTS[c] ?? c).join('');
  return latin.replace(/[^A-Za-z0-9/\-?:().,'+ ]/g, ' ').replace(/ +/g, ' ').trim().slice(0, max).trim();
}

/**
 * The payout of a batch as an ISO 20022 customer credit transfer initiation (pain.001.001.09): one payment
 * information block from the platform's account (the debtor) with one credit transfer to the merchant's bank
 * account (the creditor), once the ledger holds the payout (status paid). MsgId is the batch id and EndToEndId
 * the payout transfer id (dashes removed), so the bank's statement lines lead back to the ledger. Amounts are
 * decimal strings built from minor units.
 */
export function payoutInitiationXml(batch: Batch, debtor: Debtor, creditor: PayoutAccount | null, createdAt: Date): string {
  if (batch.payout === 0n || batch.status === 'payout_failed') throw new AppError('conflict', 'no_payout', `batch ${batch.id} pays nothing out (status ${batch.status})`);
  // Until the ledger holds the payout, the bank must not be told to pay it: a payout the ledger then refuses is
  // carried into the next batch, whose file would pay the same money a second time.
  if (batch.status !== 'paid') throw new AppError('conflict', 'payout_not_confirmed', `the payout of batch ${batch.id} is not in the ledger yet (status ${batch.status}); try again once it is`);
  if (!creditor) throw new AppError('conflict', 'no_bank_account', `merchant ${batch.merchantId} has no payout bank account on file`);
  // Profiles stored before names were checked for it (set-profile refuses such a name now).
  if (sepaText(creditor.name) === '') throw new AppError('conflict', 'payout_name_not_latin', `merchant ${batch.merchantId}'s payout account holder has no name in Latin letters; set it again with set-profile`);
  invariant(isValidIBAN(creditor.iban) && isValidIBAN(debtor.iban), 'payout IBANs are validated when stored');
  const currency = currencyOf(batch.currency);
  const amount = formatMajor(movedPayout(batch), currency);
  const agent = (bic: string | null) => (bic && isValidBIC(bic) ? { FinInstnId: { BICFI: bic } } : { FinInstnId: { Othr: { Id: 'NOTPROVIDED' } } });
  const doc = create({ version: '1.0', encoding: 'UTF-8' }).ele({
    Document: {
      '@xmlns': 'urn:iso:std:iso:20022:tech:xsd:pain.001.001.09',
      CstmrCdtTrfInitn: {
        GrpHdr: {
          MsgId: isoId(batch.id),
          CreDtTm: createdAt.toISOString().slice(0, 19),
          NbOfTxs: '1',
          CtrlSum: amount,
          InitgPty: { Nm: sepaText(debtor.name) },
        },
        PmtInf: {
          PmtInfId: isoId(batch.id),
          PmtMtd: 'TRF',
          NbOfTxs: '1',
          CtrlSum: amount,
          ReqdExctnDt: { Dt: createdAt.toISOString().slice(0, 10) },
          Dbtr: { Nm: sepaText(debtor.name) },
          DbtrAcct: { Id: { IBAN: debtor.iban } },
          DbtrAgt: agent(debtor.bic),
          CdtTrfTxInf: {
            PmtId: { EndToEndId: isoId(batch.payoutTransferId) },
            Amt: { InstdAmt: { '@Ccy': currency.code, '#': amount } },
            CdtrAgt: agent(creditor.bic),
            Cdtr: { Nm: sepaText(creditor.name) },
            CdtrAcct: { Id: { IBAN: creditor.iban } },
            RmtInf: { Ustrd: `Settlement ${rfc3339Nanos(batch.windowStart).slice(0, 19)}Z to ${rfc3339Nanos(batch.windowEnd).slice(0, 19)}Z` },
          },
        },
      },
    },
  });
  return doc.end({ prettyPrint: true });
}
