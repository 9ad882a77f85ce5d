import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { credentials, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { LedgerClient } from '../ledger/client.js';
import { Decision, ScoreRequest } from '../proto/gen/risk/v1/risk.js';
import { startRisk, type RiskApp } from '../risk/app.js';
import { RiskClient } from '../risk/client.js';
import { makeTestCertificates, type TestCertificates } from '../test/certificates.js';
import { ADMIN_KEY, Api, startTestGateway } from '../test/gateway-harness.js';
import { account, startTestLedger, type TestLedger } from '../test/ledger-harness.js';
import { testConfig } from '../test/support.js';
import { ConfigError } from './errors.js';
import { channelCredentials, serverCredentials, type GrpcTlsConfig } from './grpc-tls.js';
import { createLogger } from './logger.js';

/** Rejects with a gRPC error of this status (the handshake failures all surface as UNAVAILABLE). */
async function rejectsWith(call: Promise<unknown>, code: status): Promise<void> {
  await assert.rejects(call, (error: ServiceError) => {
    assert.equal(error.code, code, `expected ${status[code]}, got ${status[error.code] ?? error.code}: ${error.message}`);
    return true;
  });
}

describe('gRPC mutual TLS (lib/grpc-tls.ts), with certificates made by openssl for the run', function () {
  this.timeout(60_000);
  let certs: TestCertificates;
  let ledger: TestLedger;
  const clients: { close(): void }[] = [];

  /** A ledger client of the TLS ledger, closed after the tests. */
  const ledgerClient = (channel?: ChannelCredentials): LedgerClient => {
    const client = new LedgerClient(ledger.app.address, { autoBatch: false, deadlineMs: 5_000, ...(channel ? { credentials: channel } : {}) });
    clients.push(client);
    return client;
  };
  /** Settings of a client as lib/config.ts would load them. */
  const tls = (settings: Partial<GrpcTlsConfig>): GrpcTlsConfig => ({ GRPC_TLS_CA: certs.ca, GRPC_TLS_CERT: certs.service.cert, GRPC_TLS_KEY: certs.service.key, ...settings });
  /** The account was not written: the TLS ledger, asked by a client it trusts, does not know it. */
  const assertNotWritten = async (id: string) => assert.deepEqual(await ledger.client.lookupAccounts([id]), []);

  before(async () => {
    certs = await makeTestCertificates();
    ledger = await startTestLedger(certs.env());
  });
  after(async () => {
    for (const client of clients) client.close();
    await ledger?.close();
    await certs?.remove();
  });

  describe('a TLS-configured ledger', () => {
    it('answers clients holding a certificate from the CA: another service, and an operator (client-only certificate)', async () => {
      const created = account();
      assert.deepEqual(
        (await ledger.client.createAccounts([created])).map((r) => r.code),
        [1],
      );
      const operator = ledgerClient(channelCredentials(tls({ GRPC_TLS_CERT: certs.operator.cert, GRPC_TLS_KEY: certs.operator.key })));
      assert.deepEqual(
        (await operator.lookupAccounts([created.id])).map((a) => a.id),
        [created.id],
      );
    });

    it('refuses a plaintext client (UNAVAILABLE) and nothing is written', async () => {
      const refused = account();
      await rejectsWith(ledgerClient().createAccounts([refused]), status.UNAVAILABLE);
      await assertNotWritten(refused.id);
    });

    it('refuses a TLS client without a client certificate: the TLS is mutual', async () => {
      const refused = account();
      const serverOnly = credentials.createSsl(readFileSync(certs.ca));
      await rejectsWith(ledgerClient(serverOnly).createAccounts([refused]), status.UNAVAILABLE);
      await assertNotWritten(refused.id);
    });

    it('refuses a client whose certificate was signed by another CA', async () => {
      const refused = account();
      await rejectsWith(ledgerClient(channelCredentials(tls({ GRPC_TLS_CERT: certs.foreign.cert, GRPC_TLS_KEY: certs.foreign.key }))).createAccounts([refused]), status.UNAVAILABLE);
      await assertNotWritten(refused.id);
    });

    it('is refused by a client that does not trust its CA (the client checks the server too)', async () => {
      const refused = account();
      await rejectsWith(ledgerClient(channelCredentials(tls({ GRPC_TLS_CA: certs.foreignCa }))).createAccounts([refused]), status.UNAVAILABLE);
      await assertNotWritten(refused.id);
    });

    it('is checked against GRPC_TLS_SERVER_NAME instead of the target host when set: a name not in its certificate is refused', async () => {
      const named = account();
      assert.deepEqual(
        (await ledgerClient(channelCredentials(tls({ GRPC_TLS_SERVER_NAME: 'localhost' }))).createAccounts([named])).map((r) => r.code),
        [1],
      );
      const refused = account();
      await rejectsWith(ledgerClient(channelCredentials(tls({ GRPC_TLS_SERVER_NAME: 'ledger.internal' }))).createAccounts([refused]), status.UNAVAILABLE);
      await assertNotWritten(refused.id);
    });
  });

  describe('a TLS ledger with GRPC_TLS_ALLOWED_CLIENTS', () => {
    it('answers only the listed clients (by certificate common name); another certificate of the CA gets PERMISSION_DENIED and writes nothing', async () => {
      const restricted = await startTestLedger({ ...certs.env(), GRPC_TLS_ALLOWED_CLIENTS: 'operator,gateway' });
      const operator = new LedgerClient(restricted.app.address, { autoBatch: false, deadlineMs: 5_000, credentials: channelCredentials(tls({ GRPC_TLS_CERT: certs.operator.cert, GRPC_TLS_KEY: certs.operator.key })) });
      try {
        // The harness's own client holds the "service" certificate: signed by the CA, but not listed.
        const refused = account();
        await rejectsWith(restricted.client.createAccounts([refused]), status.PERMISSION_DENIED);
        const allowed = account();
        assert.deepEqual((await operator.createAccounts([allowed])).map((r) => r.code), [1]);
        assert.deepEqual((await operator.lookupAccounts([refused.id, allowed.id])).map((a) => a.id), [allowed.id]);
      } finally {
        operator.close();
        await restricted.close();
      }
    });
  });

  describe('the gateway in front of the TLS ledger', () => {
    it('with TLS: accounts are created end to end and it is ready', async () => {
      const gateway = await startTestGateway(ledger.app.address, certs.env());
      try {
        const api = await Api.connect(gateway.url);
        const merchant = await api.post('/v1/merchants', ADMIN_KEY, { name: 'TLS merchant' });
        assert.equal(merchant.status, 201, merchant.text);
        const created = await api.post('/v1/accounts', merchant.body.secret_key, { currency: 'EUR' });
        assert.equal(created.status, 201, created.text);
        assert.deepEqual(
          (await ledger.client.lookupAccounts([created.body.id])).map((a) => a.id),
          [created.body.id],
        );
        assert.equal((await api.get('/readyz')).status, 200);
      } finally {
        await gateway.close();
      }
    });

    it('without TLS: no answer from the ledger, so 503 with Retry-After, /readyz not ready, and no ledger account', async () => {
      const gateway = await startTestGateway(ledger.app.address, { GATEWAY_GRPC_DEADLINE_MS: '2000' });
      try {
        const api = await Api.connect(gateway.url);
        // Merchants live in the gateway's database only: this gateway can create one.
        const merchant = await api.post('/v1/merchants', ADMIN_KEY, { name: 'Plaintext merchant' });
        assert.equal(merchant.status, 201, merchant.text);
        const refused = account();
        const r = await api.post('/v1/accounts', merchant.body.secret_key, { id: refused.id, currency: 'EUR' });
        assert.equal(r.status, 503, r.text);
        assert.ok(Number(r.headers.get('retry-after')) >= 1, `Retry-After: ${r.headers.get('retry-after')}`);
        const ready = await api.get('/readyz');
        assert.equal(ready.status, 503, ready.text);
        await assertNotWritten(refused.id);
      } finally {
        await gateway.close();
      }
    });
  });

  describe('a TLS-configured risk service', () => {
    let risk: RiskApp;
    const score = ScoreRequest.fromPartial({ merchantId: '11111111-1111-4111-8111-111111111111', amount: 500n, currency: 'EUR' });
    before(async () => {
      risk = await startRisk(testConfig({ RISK_GRPC_LISTEN: '127.0.0.1:0', ...certs.env() }), createLogger('risk-test', 'silent'));
    });
    after(async () => {
      await risk?.close();
    });

    it('scores for a client with a certificate from the CA and refuses a plaintext one', async () => {
      const trusted = new RiskClient(risk.address, channelCredentials(tls({})));
      const plaintext = new RiskClient(risk.address);
      clients.push(trusted, plaintext);
      assert.equal((await trusted.score(score, 5_000)).decision, Decision.DECISION_APPROVE);
      await rejectsWith(plaintext.score(score, 5_000), status.UNAVAILABLE);
    });
  });

  describe('start-up checks of the files', () => {
    it('a file that cannot be read, a file that is not PEM, a key of another certificate: a ConfigError naming the variable', async () => {
      const notPem = path.join(path.dirname(certs.ca), 'not-a-certificate.pem');
      await writeFile(notPem, 'not a certificate\n');
      const cases: [Partial<GrpcTlsConfig>, RegExp][] = [
        [{ GRPC_TLS_CERT: `${certs.service.cert}.missing` }, /GRPC_TLS_CERT=".*\.missing": cannot be read \(ENOENT\)/],
        [{ GRPC_TLS_CA: notPem }, /GRPC_TLS_CA=".*not-a-certificate\.pem": not a PEM certificate/],
        [{ GRPC_TLS_KEY: notPem }, /GRPC_TLS_KEY=".*not-a-certificate\.pem": not a PEM private key/],
        [{ GRPC_TLS_KEY: certs.operator.key }, /GRPC_TLS_KEY=".*operator\.key": not the private key of GRPC_TLS_CERT=".*service\.pem"/],
      ];
      for (const [settings, message] of cases) {
        // Each call its own object: the credentials of a configuration are made (and checked) once.
        assert.throws(() => serverCredentials(tls(settings)), (error: unknown) => error instanceof ConfigError && message.test(error.message));
        assert.throws(() => channelCredentials(tls(settings)), (error: unknown) => error instanceof ConfigError && message.test(error.message));
      }
    });
  });
});
