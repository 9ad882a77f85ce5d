import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { parse } from 'csv-parse/sync';
import { after, before, describe, it } from 'mocha';
import { convert } from 'xmlbuilder2';
import { createLogger } from '../lib/logger.js';
import { startRisk, type RiskApp } from '../risk/app.js';
import { startSettlement, type SettlementApp } from '../settlement/app.js';
import * as store from '../settlement/store.js';
import { parseSchedule } from '../settlement/windows.js';
import { ADMIN_KEY, Api, expectError, startTestGateway, type TestGateway } from '../test/gateway-harness.js';
import { startTestLedger, type TestLedger } from '../test/ledger-harness.js';
import { TestNatsServer } from '../test/nats-server.js';
import { testConfig } from '../test/support.js';

/** Settlements through the REST API, with the settlement process as it runs (consumer, closer, relay, gRPC). */
describe('REST settlements (gateway, payments, relay, JetStream, settlement service)', function () {
  this.timeout(120_000);
  let risk: RiskApp;
  let ledger: TestLedger;
  let settlement: SettlementApp;
  let gateway: TestGateway;
  let api: Api;
  let nats: TestNatsServer;

  before(async () => {
    // A NATS server of its own: streams reserve their maximum size on the server, and the shared one is for everyone.
    nats = await TestNatsServer.start();
    const suffix = randomUUID().slice(0, 8);
    const env = { NATS_URL: nats.url, EVENTS_STREAM: `GWSTL_${suffix}`, EVENTS_SUBJECT_PREFIX: `gwstl-${suffix}` };
    const logger = createLogger('settlement-gw-test', 'error');
    risk = await startRisk(testConfig({ ...env, RISK_GRPC_LISTEN: '127.0.0.1:0' }), logger);
    ledger = await startTestLedger({ ...env, LEDGER_RELAY_ENABLED: 'true', RISK_GRPC_TARGET: risk.address, RISK_DEADLINE_MS: '2000' });
    // The closer runs on its schedule (daily): the test closes on demand.
    settlement = await startSettlement(
      testConfig({ ...env, SETTLEMENT_GRPC_LISTEN: '127.0.0.1:0', LEDGER_GRPC_TARGET: ledger.app.address, SETTLEMENT_CONSUMER: `gw-settlement-${suffix}`, SETTLEMENT_CLOSE_EVERY_MS: '3600000' }),
      logger,
    );
    gateway = await startTestGateway(ledger.app.address, { SETTLEMENT_GRPC_TARGET: settlement.address });
    api = await Api.connect(gateway.url);
  });
  after(async () => {
    await gateway?.close();
    await settlement?.close();
    await ledger?.close();
    await risk?.close();
    await nats?.stop();
  });

  const merchant = async (name: string) => {
    const r = await api.post('/v1/merchants', ADMIN_KEY, { name });
    assert.equal(r.status, 201, r.text);
    return { id: r.body.id as string, key: r.body.secret_key as string };
  };
  const pay = async (key: string, amount: number, currency = 'EUR') => {
    const card = { token: 'tok_test', fingerprint: `fp_${randomUUID()}`, country: 'FR' };
    const r = await api.post('/v1/payments', key, { amount, currency, source: { card }, capture_method: 'automatic' }, randomUUID());
    assert.equal(r.status, 201, r.text);
    return r.body;
  };
  const accountOf = async (key: string, body: object) => {
    const r = await api.post('/v1/accounts', key, body);
    assert.equal(r.status, 201, r.text);
    return r.body.id as string;
  };
  /**
   * A EUR wallet of the merchant holding `amount`, funded from a custom account without limits, which goes negative
   * for it: the merchant's own books, not money the platform holds.
   */
  const fundedWallet = async (key: string, amount: number) => {
    const funding = await accountOf(key, { currency: 'EUR' });
    const wallet = await accountOf(key, { currency: 'EUR', flags: ['debits_must_not_exceed_credits'] });
    const funded = await api.post('/v1/transfers', key, { debit_account_id: funding, credit_account_id: wallet, amount, currency: 'EUR' });
    assert.equal(funded.status, 201, funded.text);
    return wallet;
  };
  const consumed = async (paymentIds: string[]) => {
    const deadline = Date.now() + 30_000;
    for (;;) {
      const r = await settlement.pool.query('SELECT count(DISTINCT payment_id)::int AS n FROM settlement_events WHERE payment_id = ANY($1::uuid[])', [paymentIds]);
      if (r.rows[0].n === paymentIds.length) return;
      if (Date.now() > deadline) throw new Error('payments not consumed by settlement');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  };

  it('admin closes a window; the merchant reads its settlement and CSV report; others cannot; admin gets the bank file and a clean reconciliation', async () => {
    const a = await merchant('Settled A');
    const b = await merchant('Settled B');
    const p1 = await pay(a.key, 10_000);
    const p2 = await pay(a.key, 2_550);
    const refund = await api.post('/v1/refunds', a.key, { payment: p2.id, amount: 550 }, randomUUID());
    assert.equal(refund.status, 201, refund.text);
    await consumed([p1.id, p2.id]);
    const deadline = Date.now() + 30_000;
    while ((await settlement.pool.query(`SELECT 1 FROM settlement_events WHERE type = 'payment.refunded' AND payment_id = $1`, [p2.id])).rowCount === 0) {
      assert.ok(Date.now() < deadline, 'refund consumed');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    // Only the admin closes windows, and bad input is refused with the parameter.
    expectError(await api.post('/v1/settlements/close', a.key, { merchant: a.id, currency: 'EUR' }), 401, 'admin_key_required');
    expectError(await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: a.id, currency: 'eur' }), 400, 'parameter_invalid', 'currency');
    expectError(await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: randomUUID(), currency: 'EUR' }), 404, 'resource_missing', 'merchant');
    const closed = await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: a.id, currency: 'EUR' });
    assert.equal(closed.status, 200, closed.text);
    assert.equal(closed.body.data.length, 1);
    const s = closed.body.data[0];
    const fees = p1.fee + p2.fee;
    assert.deepEqual(
      [s.merchant, s.currency, s.gross_captured, s.refunds, s.fees, s.net, s.payout, s.carried_out, s.line_count, s.status],
      [a.id, 'EUR', 12_550, 550, fees, 12_000 - fees, 12_000 - fees, 0, fees > 0 ? 5 : 3, 'paid'],
    );
    // Closing again right away has nothing to settle.
    assert.deepEqual((await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: a.id, currency: 'EUR' })).body.data, []);

    // The merchant reads it; another merchant does not see it.
    const got = await api.get(`/v1/settlements/${s.id}`, a.key);
    assert.deepEqual(got.body, s);
    expectError(await api.get(`/v1/settlements/${s.id}`, b.key), 404, 'resource_missing', 'id');
    expectError(await api.get('/v1/settlements/not-an-id', a.key), 404, 'resource_missing', 'id');
    const list = await api.get('/v1/settlements?limit=1', a.key);
    assert.deepEqual(list.body.data.map((x: { id: string }) => x.id), [s.id]);
    assert.deepEqual((await api.get('/v1/settlements', b.key)).body.data, []);
    // Another merchant's settlement as a cursor is not found, and the error names the parameter given.
    expectError(await api.get(`/v1/settlements?starting_after=${s.id}`, b.key), 400, 'resource_missing', 'starting_after');
    expectError(await api.get(`/v1/settlements?ending_before=${s.id}`, b.key), 400, 'resource_missing', 'ending_before');
    expectError(await api.get(`/v1/settlements?starting_after=${s.id}&ending_before=${s.id}`, a.key), 400, 'invalid_argument', 'ending_before');
    // Nothing newer than the newest: the page before it is empty.
    const newer = await api.get(`/v1/settlements?ending_before=${s.id}`, a.key);
    assert.deepEqual([newer.status, newer.body.data, newer.body.has_more], [200, [], false]);

    const report = await api.get(`/v1/settlements/${s.id}/report.csv`, a.key);
    assert.equal(report.status, 200);
    assert.match(report.headers.get('content-type') ?? '', /^text\/csv/);
    const rows = parse(report.text, { columns: true }) as Record<string, string>[];
    const lines = rows.filter((r) => r['record'] === 'line');
    assert.equal(lines.length, s.line_count);
    assert.equal(lines.reduce((sum, r) => sum + BigInt(r['amount']!), 0n), BigInt(s.net));
    assert.deepEqual(new Set(lines.map((r) => r['payment_id'])), new Set([p1.id, p2.id]));
    const total = (kind: string) => rows.find((r) => r['record'] === 'total' && r['kind'] === kind)!;
    assert.equal(total('net')['amount'], String(s.net));
    assert.equal(total('payout')['amount_major'], `-${(s.payout / 100).toFixed(2)}`);
    expectError(await api.get(`/v1/settlements/${s.id}/report.csv`, b.key), 404, 'resource_missing', 'id');

    // The bank file needs the merchant's bank account on file.
    expectError(await api.get(`/v1/settlements/${s.id}/payout_file`, a.key), 401, 'admin_key_required');
    expectError(await api.get(`/v1/settlements/${s.id}/payout_file`, ADMIN_KEY), 422, 'no_bank_account');
    await store.saveProfile(settlement.pool, a.id, { schedule: parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '17:00' }), payout: { name: 'Settled A SARL', iban: 'FR1420041010050500013M02606', bic: 'PSSTFRPPXXX' } });
    const file = await api.get(`/v1/settlements/${s.id}/payout_file`, ADMIN_KEY);
    assert.equal(file.status, 200, file.text);
    const doc = convert(file.text, { format: 'object' }) as any; // eslint-disable-line @typescript-eslint/no-explicit-any
    const initiation = doc.Document.CstmrCdtTrfInitn;
    const tx = initiation.PmtInf.CdtTrfTxInf;
    assert.equal(doc.Document['@xmlns'], 'urn:iso:std:iso:20022:tech:xsd:pain.001.001.09');
    assert.equal(initiation.GrpHdr.MsgId, s.id.replaceAll('-', ''));
    assert.equal(initiation.GrpHdr.CtrlSum, (s.payout / 100).toFixed(2));
    assert.deepEqual([tx.Amt.InstdAmt['@Ccy'], tx.Amt.InstdAmt['#']], ['EUR', (s.payout / 100).toFixed(2)]);
    assert.equal(tx.CdtrAcct.Id.IBAN, 'FR1420041010050500013M02606');
    assert.equal(tx.PmtId.EndToEndId, s.payout_transfer.replaceAll('-', ''));

    const reconciliation = await api.get(`/v1/settlements/${s.id}/reconciliation`, ADMIN_KEY);
    assert.equal(reconciliation.status, 200, reconciliation.text);
    assert.deepEqual(reconciliation.body.discrepancies, []);
    assert.equal(reconciliation.body.lines_checked, s.line_count);
    assert.equal(reconciliation.body.events_checked, 3);
  });

  it("a merchant's own transfers out of and back into its settled account are no discrepancy of the settlement", async () => {
    const m = await merchant('Own transfers');
    const paid = await pay(m.key, 10_000);
    const other = await api.post('/v1/accounts', m.key, { currency: 'EUR' });
    assert.equal(other.status, 201, other.text);
    for (const [from, to] of [[paid.destination_account_id, other.body.id], [other.body.id, paid.destination_account_id]]) {
      const moved = await api.post('/v1/transfers', m.key, { debit_account_id: from, credit_account_id: to, amount: 100, currency: 'EUR' });
      assert.equal(moved.status, 201, moved.text);
    }
    await consumed([paid.id]);
    const closed = await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: m.id, currency: 'EUR' });
    assert.equal(closed.status, 200, closed.text);
    const s = closed.body.data[0];
    assert.equal(s.payout, 10_000 - paid.fee);
    const reconciliation = await api.get(`/v1/settlements/${s.id}/reconciliation`, ADMIN_KEY);
    assert.deepEqual(reconciliation.body.discrepancies, []);
  });

  it('pays out only money that came in by card: a wallet funded from an account that may go negative pays the merchant nothing, fees are still owed', async () => {
    const m = await merchant('Wallet minter');
    // 9,000 EUR: below the rules' amount limit (10,000.00 USD by worth) of the test stack's risk service.
    const wallet = await fundedWallet(m.key, 900_000);
    const byWallet = await api.post('/v1/payments', m.key, { amount: 900_000, currency: 'EUR', source: { account: wallet }, capture_method: 'automatic' }, randomUUID());
    assert.equal(byWallet.status, 201, byWallet.text);
    const walletRefund = await api.post('/v1/refunds', m.key, { payment: byWallet.body.id, amount: 1_000 }, randomUUID());
    assert.equal(walletRefund.status, 201, walletRefund.text);
    const byCard = await pay(m.key, 10_000);
    await consumed([byWallet.body.id, byCard.id]);
    const deadline = Date.now() + 30_000;
    while ((await settlement.pool.query(`SELECT 1 FROM settlement_events WHERE type = 'payment.refunded' AND payment_id = $1`, [byWallet.body.id])).rowCount === 0) {
      assert.ok(Date.now() < deadline, 'refund consumed');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }

    const closed = await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: m.id, currency: 'EUR' });
    assert.equal(closed.status, 200, closed.text);
    assert.equal(closed.body.data.length, 1, closed.text);
    const s = closed.body.data[0];
    const fees = byWallet.body.fee + byCard.fee;
    assert.ok(byWallet.body.fee > 0, 'the wallet payment took a fee');
    // The card's money, less every fee the platform took (more than the card brought: owed, carried): the wallet's
    // 9,000 EUR never reach the merchant's bank.
    const net = 10_000 - fees;
    const payout = Math.max(0, net);
    assert.deepEqual([s.gross_captured, s.refunds, s.fees, s.net, s.payout, s.carried_out], [10_000, 0, fees, net, payout, net - payout]);
    const reconciliation = await api.get(`/v1/settlements/${s.id}/reconciliation`, ADMIN_KEY);
    assert.equal(reconciliation.status, 200, reconciliation.text);
    assert.deepEqual(reconciliation.body.discrepancies, []);
  });

  it('the fees of wallet payments taken into an account of their own are collected from the card money of the merchant\'s other accounts', async () => {
    const m = await merchant('Fee dodger');
    // Wallet payments (money of the merchant's own books) into an account that never sees card money: their fees
    // are a debt of that account, which no card payment there ever covers.
    const wallet = await fundedWallet(m.key, 900_000);
    const walletTaken = await accountOf(m.key, { currency: 'EUR' });
    const byWallet = await api.post('/v1/payments', m.key, { amount: 900_000, currency: 'EUR', source: { account: wallet }, capture_method: 'automatic', destination_account_id: walletTaken }, randomUUID());
    assert.equal(byWallet.status, 201, byWallet.text);
    assert.ok(byWallet.body.fee > 0, 'the wallet payment took a fee');
    const byCard = await pay(m.key, 100_000);
    await consumed([byWallet.body.id, byCard.id]);
    const closed = await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: m.id, currency: 'EUR' });
    assert.equal(closed.status, 200, closed.text);
    const paid = (closed.body.data as { payout: number }[]).reduce((sum, s) => sum + s.payout, 0);
    assert.equal(paid, 100_000 - byCard.fee - byWallet.body.fee, `paid out ${paid}: the card's money less both fees`);
  });

  it('a debt left by a refund after its payout is recovered from the merchant\'s other accounts in the currency: a new destination account does not escape it', async () => {
    const m = await merchant('Debt escaper');
    const refunded = async (paymentId: string) => {
      const deadline = Date.now() + 30_000;
      while ((await settlement.pool.query(`SELECT 1 FROM settlement_events WHERE type = 'payment.refunded' AND payment_id = $1`, [paymentId])).rowCount === 0) {
        assert.ok(Date.now() < deadline, 'refund consumed');
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    };
    const close = async () => {
      const r = await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: m.id, currency: 'EUR' });
      assert.equal(r.status, 200, r.text);
      return r.body.data as { account: string; net: number; payout: number; carried_out: number; held_for_debt: number; shortfall: number; id: string }[];
    };
    const paidOut: number[] = [];
    // Paid by card into the balance account, and paid out to the merchant's bank.
    const first = await pay(m.key, 10_000);
    await consumed([first.id]);
    paidOut.push(...(await close()).map((s) => s.payout));
    // Then refunded in full: the card gets its 10,000 back from an account the merchant was paid out of.
    const refund = await api.post('/v1/refunds', m.key, { payment: first.id }, randomUUID());
    assert.equal(refund.status, 201, refund.text);
    // New card money goes to a new account of the merchant.
    const fresh = await api.post('/v1/accounts', m.key, { currency: 'EUR' });
    assert.equal(fresh.status, 201, fresh.text);
    const card = { token: 'tok_test', fingerprint: `fp_${randomUUID()}`, country: 'FR' };
    const second = await api.post('/v1/payments', m.key, { amount: 10_000, currency: 'EUR', source: { card }, capture_method: 'automatic', destination_account_id: fresh.body.id }, randomUUID());
    assert.equal(second.status, 201, second.text);
    await consumed([second.body.id]);
    await refunded(first.id);
    const afterRefund = await close();
    // The card brought 20,000, 10,000 went back to it, the platform took two fees: the merchant was owed 9,500 and
    // has been paid 9,750 already. The new account's money covers the first account's debt: nothing more is paid.
    assert.equal(20_000 - 10_000 - first.fee - second.body.fee < paidOut[0]!, true);
    assert.deepEqual(afterRefund.map((s) => s.payout), [0, 0], `paid out ${paidOut.join(' + ')} then ${afterRefund.map((s) => s.payout).join(' + ')}`);
    paidOut.push(...afterRefund.map((s) => s.payout));
    // The merchant is told why: the new account's money is held for the debt, not short of balance.
    const held = afterRefund.find((s) => s.account === fresh.body.id)!;
    assert.deepEqual([held.held_for_debt, held.shortfall, held.carried_out], [10_000 - second.body.fee, 0, 10_000 - second.body.fee]);
    const indebted = afterRefund.find((s) => s.account !== fresh.body.id)!;
    assert.deepEqual([indebted.held_for_debt, indebted.shortfall], [0, 0]);

    // Once new money covers the rest of the debt, what was held back on the new account is paid: nothing is lost.
    const third = await pay(m.key, 10_000);
    await consumed([third.id]);
    paidOut.push(...(await close()).map((s) => s.payout));
    const owed = 30_000 - 10_000 - first.fee - second.body.fee - third.fee;
    assert.equal(paidOut.reduce((a, b) => a + b, 0), owed, `paid out ${paidOut.join(' + ')}, owed ${owed}`);
    for (const { id } of (await api.get('/v1/settlements?limit=100', m.key)).body.data as { id: string }[]) {
      const reconciliation = await api.get(`/v1/settlements/${id}/reconciliation`, ADMIN_KEY);
      assert.deepEqual(reconciliation.body.discrepancies, [], `settlement ${id}`);
    }
  });
});
