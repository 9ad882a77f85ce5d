import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, it } from 'mocha';
import { AppError } from '../lib/errors.js';
import { payoutInitiationXml, sepaText } from './payout-file.js';
import type { Batch } from './store.js';

const debtor = { name: 'Ledgerline Platform', iban: 'DE89370400440532013000', bic: 'COBADEFFXXX' };
const creditor = { name: 'Acme SARL', iban: 'FR1420041010050500013M02606', bic: 'PSSTFRPPXXX' };

function batch(status: Batch['status']): Batch {
  return {
    id: randomUUID(), merchantId: randomUUID(), accountId: randomUUID(), currency: 'EUR', windowStart: 1_764_000_000_000_000_000n, windowEnd: 1_764_086_400_000_000_000n,
    grossCaptured: 12_345n, refunds: 0n, fees: 0n, lineCount: 1, net: 12_345n, carriedIn: 0n, available: 12_345n, payout: 12_345n, carriedOut: 0n, heldForDebt: 0n, payoutShort: 0n,
    payoutTransferId: randomUUID(), status, failureCode: null,
  };
}

describe('settlement payout file (pain.001)', () => {
  it('is made only for a payout the ledger has taken: not while it is unconfirmed, since a refused one is carried and paid again', () => {
    assert.match(payoutInitiationXml(batch('paid'), debtor, creditor, new Date()), /<InstdAmt Ccy="EUR">123\.45<\/InstdAmt>/);
    // The payout's submission failed (a deadline, the ledger restarting): if the ledger then refuses it, its amount is
    // carried into the next batch and paid by that batch's file: a file for this one would pay the merchant twice.
    assert.throws(() => payoutInitiationXml(batch('payout_pending'), debtor, creditor, new Date()), (e: unknown) => e instanceof AppError && e.code === 'payout_not_confirmed');
    assert.throws(() => payoutInitiationXml(batch('payout_failed'), debtor, creditor, new Date()), (e: unknown) => e instanceof AppError && e.code === 'no_payout');
  });

  it('writes names in the SEPA character set, which banks refuse a whole file for leaving: accents dropped, & as +, at most 70 characters', () => {
    assert.equal(sepaText('Müller & Söhne GmbH — Zürich'), 'Muller + Sohne GmbH Zurich');
    assert.equal(sepaText('Łódź Straße Ærø «Café»'), 'Lodz Strasse AEro Cafe');
    assert.equal(sepaText("O'Brien (Dublin) Ltd., 1/2"), "O'Brien (Dublin) Ltd., 1/2", 'allowed characters kept');
    assert.equal(sepaText('株式会社'), '', 'nothing of another script');
    assert.equal(sepaText(`${'A'.repeat(69)} Z`), 'A'.repeat(69));
    const xml = payoutInitiationXml(batch('paid'), { ...debtor, name: 'Plateforme Éloïse & Cie' }, { ...creditor, name: 'Müller & Söhne' }, new Date());
    assert.match(xml, /<Cdtr>\s*<Nm>Muller \+ Sohne<\/Nm>/);
    assert.match(xml, /<Dbtr>\s*<Nm>Plateforme Eloise \+ Cie<\/Nm>/);
    assert.ok(!/[^\x20-\x7e\s]/.test(xml), 'nothing outside ASCII in the file');
    assert.throws(() => payoutInitiationXml(batch('paid'), debtor, { ...creditor, name: '株式会社' }, new Date()), (e: unknown) => e instanceof AppError && e.code === 'payout_name_not_latin');
  });
});
