import assert from 'node:assert/strict';
import { credentials, status, type ServiceError } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { ERROR_FIELD_KEY, callUnary } from '../lib/grpc.js';
import { createLogger } from '../lib/logger.js';
import { Decision, RiskServiceClient, type ScoreRequest } from '../proto/gen/risk/v1/risk.js';
import { testConfig } from '../test/support.js';
import { startRisk, type RiskApp } from './app.js';
import { freePort } from '../test/ledger-process.js';
import { RiskClient } from './client.js';

describe('risk.v1.RiskService (gRPC)', () => {
  let app: RiskApp;
  let client: RiskClient;
  const request = (fields: Partial<ScoreRequest>): ScoreRequest => ({
    paymentId: '',
    merchantId: '11111111-1111-4111-8111-111111111111',
    customerId: '',
    amount: 500n,
    currency: 'EUR',
    cardFingerprint: '',
    deviceId: '',
    cardCountry: '',
    ipCountry: '',
    cardType: '',
    merchantCategory: '',
    ...fields,
  });

  before(async () => {
    app = await startRisk(testConfig({ RISK_GRPC_LISTEN: '127.0.0.1:0', RISK_RULES_MAX_AMOUNT: '10000', RISK_RULES_VELOCITY_MAX: '2' }), createLogger('risk-test', 'silent'));
    client = new RiskClient(app.address);
  });
  after(async () => {
    client?.close();
    await app?.close();
  });

  it('approves, reviews and declines by the configured rules', async () => {
    assert.equal((await client.score(request({}), 2_000)).decision, Decision.DECISION_APPROVE);
    const declined = await client.score(request({ amount: 10_001n }), 2_000);
    assert.deepEqual([declined.decision, declined.reasons, declined.modelVersion], [Decision.DECISION_DECLINE, ['amount_above_limit'], 'rules-v1']);
    for (let i = 0; i < 2; i++) await client.score(request({ deviceId: 'device-7' }), 2_000);
    assert.equal((await client.score(request({ deviceId: 'device-7' }), 2_000)).decision, Decision.DECISION_REVIEW);
  });

  it('exports decisions by outcome, model version and segment, and the score distribution, for Prometheus', async () => {
    const port = await freePort();
    const monitored = await startRisk(testConfig({ RISK_GRPC_LISTEN: '127.0.0.1:0', METRICS_PORT: String(port), RISK_RULES_MAX_AMOUNT: '10000' }), createLogger('risk-test', 'silent'));
    const c = new RiskClient(monitored.address);
    try {
      for (let i = 0; i < 3; i++) await c.score(request({ cardCountry: 'FR', cardType: 'debit' }), 2_000);
      await c.score(request({ amount: 20_000n, cardCountry: 'FR', cardType: 'debit' }), 2_000);
      const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      const series = (name: string, labels: string) => new RegExp(`^${name}\\{${labels}[^}]*\\} (\\d+)$`, 'm').exec(text)?.[1];
      assert.equal(series('risk_decisions_total', 'decision="approve",model_version="rules-v1",card_country="FR",card_type="debit"'), '3', text);
      assert.equal(series('risk_decisions_total', 'decision="decline",model_version="rules-v1",card_country="FR",card_type="debit"'), '1');
      assert.equal(series('risk_score_count', 'model_version="rules-v1"'), '4');
      assert.equal(series('risk_score_psi', ''), '0');
    } finally {
      c.close();
      await monitored.close();
    }
  });

  it('concurrent calls are coalesced into ScoreBatch and each gets its own answer; a malformed one fails alone', async () => {
    const amounts = Array.from({ length: 40 }, (_, i) => BigInt(i % 2 === 0 ? 100 : 20_000));
    const answers = await Promise.all(amounts.map((amount) => client.score(request({ amount }), 2_000)));
    assert.deepEqual(
      answers.map((a) => a.decision),
      amounts.map((a) => (a > 10_000n ? Decision.DECISION_DECLINE : Decision.DECISION_APPROVE)),
    );
    const mixed = await Promise.allSettled([client.score(request({}), 2_000), client.score(request({ amount: 0n }), 2_000), client.score(request({}), 2_000)]);
    // card_type labels the decision metrics: an unknown kind is refused, not a new series.
    await assert.rejects(client.score(request({ cardType: 'gold-1234' }), 2_000), (error: ServiceError) => error.code === status.INVALID_ARGUMENT && String(error.metadata.get(ERROR_FIELD_KEY)[0]) === 'card_type');
    assert.deepEqual(mixed.map((m) => m.status), ['fulfilled', 'rejected', 'fulfilled']);
    assert.equal(((mixed[1] as PromiseRejectedResult).reason as ServiceError).code, status.INVALID_ARGUMENT);
    // The batch call itself names the request at fault.
    const raw = new RiskServiceClient(app.address, credentials.createInsecure());
    try {
      await assert.rejects(callUnary(raw, raw.scoreBatch, { requests: [request({}), request({ amount: 0n })] }, 2_000), (error: ServiceError) => {
        assert.equal(error.code, status.INVALID_ARGUMENT);
        assert.equal(String(error.metadata.get(ERROR_FIELD_KEY)[0]), 'requests.1.amount');
        return true;
      });
    } finally {
      raw.close();
    }
  });

  it('malformed input is INVALID_ARGUMENT naming the field', async () => {
    const cases: [Partial<ScoreRequest>, string][] = [
      [{ amount: 0n }, 'amount'],
      [{ currency: 'EURO' }, 'currency'],
      [{ merchantId: 'x' }, 'merchant_id'],
      [{ ipCountry: 'fra' }, 'ip_country'],
      [{ deviceId: 'd'.repeat(201) }, 'device_id'],
    ];
    for (const [fields, field] of cases) {
      await assert.rejects(client.score(request(fields), 2_000), (error: ServiceError) => {
        assert.equal(error.code, status.INVALID_ARGUMENT);
        assert.equal(String(error.metadata.get(ERROR_FIELD_KEY)[0]), field);
        return true;
      });
    }
  });
});
