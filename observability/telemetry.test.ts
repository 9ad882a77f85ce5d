import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { connect, type AddressInfo } from 'node:net';
import { Writable } from 'node:stream';
import { Server, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { after, before, describe, it } from 'mocha';
import { parse as parseYaml } from 'yaml';
import { buildGateway, type Gateway } from '../gateway/app.js';
import { Backends } from '../gateway/backends.js';
import { startLedger, type LedgerApp } from '../ledger/app.js';
import { executeBatch, type BatchProgress } from '../ledger/batch.js';
import { QueueBudget, ShardBatcher } from '../ledger/batcher.js';
import { LedgerClient, newTransfer } from '../ledger/client.js';
import type { Submission } from '../ledger/model.js';
import { Coalescer } from '../lib/coalesce.js';
import { createPool, withTransaction, type Pool } from '../lib/db.js';
import { createLogger } from '../lib/logger.js';
import { CreateTransferResultCode, LedgerServiceService, type CreateTransfersRequest, type CreateTransfersResponse } from '../proto/gen/ledger/v1/ledger.js';
import { CaptureMethod, CreatePaymentRequest, PaymentStatus } from '../proto/gen/payments/v1/payments.js';
import { Decision, RiskServiceService, ScoreRequest, type ScoreBatchRequest, type ScoreBatchResponse, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';
import { RiskClient } from '../risk/client.js';
import { ChampionChallenger } from '../risk/ml/rollout.js';
import { EventBatch } from '../proto/gen/events/v1/events.js';
import { startRisk, type RiskApp } from '../risk/app.js';
import { FeatureStore } from '../risk/ml/features.js';
import { PaymentFeatureFeed } from '../risk/ml/serving.js';
import { startSettlement, type SettlementApp } from '../settlement/app.js';
import { ADMIN_KEY } from '../test/gateway-harness.js';
import { freePort } from '../test/ledger-process.js';
import { TestNatsServer } from '../test/nats-server.js';
import { listenForTest, testConfig } from '../test/support.js';
import { startMetrics, type ServiceMetrics } from './metrics.js';
import { contextOf, startTracing, tracer, type Tracing } from './tracing.js';

/**
 * One payment, one trace: REST -> gRPC -> ledger batch (worker thread) -> SQL -> outbox -> relay -> NATS ->
 * the settlement and risk consumers -> their SQL. Every service runs in this process with one tracer provider
 * and an in-memory exporter; the span tree, the RED metrics and the logs of that payment are checked.
 */
describe('telemetry of one payment (traces, metrics, logs) across gateway, ledger, relay, NATS and consumers', function () {
  this.timeout(120_000);
  const spans = new InMemorySpanExporter();
  const logLines: string[] = [];
  const logs = new Writable({
    write(chunk: Buffer, _encoding, done) {
      logLines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
      done();
    },
  });
  const logger = (name: string) => createLogger(name, 'debug', logs);
  let tracing: Tracing;
  let nats: TestNatsServer;
  let risk: RiskApp;
  let ledger: LedgerApp;
  let settlement: SettlementApp;
  let feed: PaymentFeatureFeed;
  let gateway: Gateway;
  let gatewayMetrics: ServiceMetrics;
  let backends: Backends;
  let pool: Pool;
  let url: string;
  let ledgerMetricsPort: number;
  let metricsPorts: { risk: number; settlement: number };
  let env: Record<string, string>;

  before(async () => {
    tracing = startTracing({ service: 'telemetry-test', version: 'test', exporter: 'none', samplingRatio: 1 }, [new SimpleSpanProcessor(spans)]);
    nats = await TestNatsServer.start();
    const suffix = randomUUID().slice(0, 8);
    env = { NATS_URL: nats.url, EVENTS_STREAM: `TEL_${suffix}`, EVENTS_SUBJECT_PREFIX: `tel-${suffix}` };
    metricsPorts = { risk: await freePort(), settlement: await freePort() };
    risk = await startRisk(testConfig({ ...env, RISK_GRPC_LISTEN: '127.0.0.1:0', METRICS_PORT: String(metricsPorts.risk) }), logger('risk'));
    ledgerMetricsPort = await freePort();
    ledger = await startLedger(
      testConfig({ ...env, LEDGER_GRPC_LISTEN: '127.0.0.1:0', LEDGER_RELAY_ENABLED: 'true', RISK_GRPC_TARGET: risk.address, RISK_DEADLINE_MS: '5000', METRICS_PORT: String(ledgerMetricsPort) }),
      logger('ledger'),
    );
    settlement = await startSettlement(
      testConfig({ ...env, SETTLEMENT_GRPC_LISTEN: '127.0.0.1:0', LEDGER_GRPC_TARGET: ledger.address, SETTLEMENT_CONSUMER: `tel-${suffix}`, METRICS_PORT: String(metricsPorts.settlement), SETTLEMENT_CLOSE_EVERY_MS: '3600000' }),
      logger('settlement'),
    );
    feed = new PaymentFeatureFeed(new FeatureStore(), testConfig(env), logger('risk-features'));
    await feed.start();
    const config = testConfig({ ...env, LEDGER_GRPC_TARGET: ledger.address, SETTLEMENT_GRPC_TARGET: settlement.address, ADMIN_API_KEY: ADMIN_KEY, GATEWAY_AUTH_CACHE_MS: '0', GATEWAY_TRACE_INCOMING: 'continue' });
    pool = createPool(config, { max: 4, applicationName: 'telemetry-test' });
    backends = new Backends(config);
    gatewayMetrics = await startMetrics('gateway', await freePort());
    gateway = await buildGateway({ config, pool, backends, logger: logger('gateway'), meter: gatewayMetrics.meter });
    await gateway.listen({ port: 0, host: '127.0.0.1' });
    url = `http://127.0.0.1:${(gateway.server.address() as AddressInfo).port}`;
  });

  after(async () => {
    await gateway?.close();
    backends?.close();
    await gatewayMetrics?.shutdown();
    await feed?.stop();
    await settlement?.close();
    await ledger?.close();
    await risk?.close();
    await pool?.end();
    await nats?.stop();
    await tracing?.shutdown();
    // Later test files run untraced, as before this one.
    trace.disable();
    context.disable();
    propagation.disable();
  });

  const post = (path: string, key: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(`${url}${path}`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });

  async function until(what: string, check: () => Promise<boolean> | boolean, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  it('one POST /v1/payments is one trace: gateway, gRPC, ledger batch with its SQL, relay, both consumers and their SQL', async () => {
    const merchant = (await (await post('/v1/merchants', ADMIN_KEY, { name: 'Traced' })).json()) as { id: string; secret_key: string };
    const cardToken = `tok_${randomUUID()}`;
    // The caller's own trace: the gateway continues it.
    const callerTraceId = randomUUID().replaceAll('-', '');
    spans.reset();
    const response = await post(
      '/v1/payments',
      merchant.secret_key,
      { amount: 4_200, currency: 'EUR', source: { card: { token: cardToken, fingerprint: `fp_${randomUUID()}`, country: 'FR' } }, capture_method: 'automatic' },
      { 'idempotency-key': randomUUID(), traceparent: `00-${callerTraceId}-00f067aa0ba902b7-01` },
    );
    assert.equal(response.status, 201, await response.clone().text());
    const payment = (await response.json()) as { id: string };
    await until('settlement to consume the payment', async () => (await pool.query('SELECT 1 FROM settlement_events WHERE payment_id = $1', [payment.id])).rowCount === 1);
    await until('the risk feature feed to see it', () => feed.applied > 0);
    await until('the consumer spans to end', () => spans.getFinishedSpans().filter((s) => s.kind === SpanKind.CONSUMER && s.spanContext().traceId === callerTraceId).length >= 2);

    const all = spans.getFinishedSpans().filter((s) => s.spanContext().traceId === callerTraceId);
    const byId = new Map(all.map((s) => [s.spanContext().spanId, s]));
    const parentOf = (s: ReadableSpan) => (s.parentSpanContext ? byId.get(s.parentSpanContext.spanId) : undefined);
    const find = (scope: string, name: string | RegExp, kind?: SpanKind) =>
      all.filter((s) => s.instrumentationScope.name === scope && (typeof name === 'string' ? s.name === name : name.test(s.name)) && (kind === undefined || s.kind === kind));
    const one = (scope: string, name: string | RegExp, kind?: SpanKind) => {
      const found = find(scope, name, kind);
      assert.ok(found.length >= 1, `no ${scope} span ${String(name)} in the trace; spans: ${all.map((s) => `${s.instrumentationScope.name}:${s.name}`).join(', ')}`);
      return found[0]!;
    };

    // The tree: one root (the gateway's server span, child of the caller's remote span), no orphans.
    const root = one('gateway', 'POST /v1/payments', SpanKind.SERVER);
    assert.equal(root.parentSpanContext?.spanId, '00f067aa0ba902b7');
    for (const s of all) if (s !== root) assert.ok(parentOf(s), `${s.instrumentationScope.name}:${s.name} has no parent in the trace`);

    const client = one('grpc', 'payments.v1.PaymentService/CreatePayment', SpanKind.CLIENT);
    assert.equal(parentOf(client), root);
    const server = one('grpc', 'payments.v1.PaymentService/CreatePayment', SpanKind.SERVER);
    assert.equal(parentOf(server), client);
    const score = one('grpc', /^risk\.v1\.RiskService\/Score/, SpanKind.SERVER);
    assert.equal(parentOf(parentOf(score)!)?.name, server.name, 'the risk call is made by the payment service');

    // The ledger batch: a child of the payment's span, linked to it, with the worker's statements under it.
    const batch = one('ledger', 'ledger.batch');
    assert.ok(batch.links.some((l) => l.context.traceId === callerTraceId), 'the batch span links to its caller');
    // Its other children: the relay publishing the batch's own ledger events, when it has done so by now (a batch
    // that creates the platform's accounts, as a fresh database's first card payment does).
    const [batchSql, batchEvents] = [all.filter((s) => parentOf(s) === batch && s.kind !== SpanKind.PRODUCER), all.filter((s) => parentOf(s) === batch && s.kind === SpanKind.PRODUCER)];
    assert.ok(batchSql.length >= 3 && batchSql.every((s) => s.name.startsWith('pg ') && s.kind === SpanKind.CLIENT), batchSql.map((s) => s.name).join(', '));
    assert.ok(batchEvents.every((s) => s.instrumentationScope.name === 'outbox-relay' && /\.ledger\.\d+ publish$/.test(s.name)), batchEvents.map((s) => s.name).join(', '));
    // SQL of the main thread (authentication, the payment rows) in its own spans.
    assert.ok(find('pg', /^pg /, SpanKind.CLIENT).length >= 2);

    // Outbox -> relay -> NATS -> consumers.
    const publish = one('outbox-relay', /\.payments\.\d+ publish$/, SpanKind.PRODUCER);
    const settlementConsumer = one('consumer', /\.payments\.\d+ process$/, SpanKind.CONSUMER);
    const riskConsumer = one('risk-features', /\.payments\.\d+ process$/, SpanKind.CONSUMER);
    assert.equal(parentOf(settlementConsumer)?.instrumentationScope.name, 'outbox-relay');
    assert.equal(parentOf(riskConsumer)?.instrumentationScope.name, 'outbox-relay');
    assert.ok(find('outbox-relay', /publish$/).includes(parentOf(settlementConsumer)!));
    assert.ok(publish);
    // The settlement consumer's writes are its children.
    const consumerSql = all.filter((s) => s.instrumentationScope.name === 'pg' && ancestors(s, parentOf).includes(settlementConsumer));
    assert.ok(consumerSql.some((s) => s.name === 'pg stl-record-event'), consumerSql.map((s) => s.name).join(', '));

    // Logs: the request's line carries its trace id; no secret key and no card token anywhere.
    const requestLine = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'request' && l['route'] === '/v1/payments');
    assert.ok(requestLine, 'an access log line for the payment');
    assert.equal(requestLine['trace_id'], callerTraceId);
    assert.equal(requestLine['status'], 201);
    const text = logLines.join('\n');
    assert.ok(!text.includes(merchant.secret_key), 'the secret key is not logged');
    assert.ok(!text.includes(cardToken), 'the card token is not logged');
    assert.ok(!text.includes(ADMIN_KEY), 'the admin key is not logged');
  });

  it('a public gateway (GATEWAY_TRACE_INCOMING=link, the default) starts its own trace, linked to the caller\'s: a client cannot choose the trace or force sampling', async () => {
    const merchant = (await (await post('/v1/merchants', ADMIN_KEY, { name: 'Untrusted tracer' })).json()) as { secret_key: string };
    const config = testConfig({ ...env, LEDGER_GRPC_TARGET: ledger.address, SETTLEMENT_GRPC_TARGET: settlement.address, ADMIN_API_KEY: ADMIN_KEY });
    assert.equal(config.GATEWAY_TRACE_INCOMING, 'link');
    const publicBackends = new Backends(config);
    const publicGateway = await buildGateway({ config, pool, backends: publicBackends, logger: logger('gateway'), meter: gatewayMetrics.meter });
    try {
      await publicGateway.listen({ port: 0, host: '127.0.0.1' });
      const callerTraceId = randomUUID().replaceAll('-', '');
      const response = await fetch(`http://127.0.0.1:${(publicGateway.server.address() as AddressInfo).port}/v1/payments?limit=1`, {
        headers: { authorization: `Bearer ${merchant.secret_key}`, traceparent: `00-${callerTraceId}-00f067aa0ba902b7-01` },
      });
      assert.equal(response.status, 200, await response.text());
      await until('the request span to end', () => spans.getFinishedSpans().some((s) => s.name === 'GET /v1/payments' && s.links.some((l) => l.context.traceId === callerTraceId)));
      assert.equal(spans.getFinishedSpans().filter((s) => s.spanContext().traceId === callerTraceId).length, 0, 'nothing in the caller\'s trace');
      const root = spans.getFinishedSpans().find((s) => s.name === 'GET /v1/payments' && s.links.some((l) => l.context.traceId === callerTraceId))!;
      assert.equal(root.parentSpanContext, undefined, 'a root span');
      assert.equal(root.links[0]!.context.spanId, '00f067aa0ba902b7');
      assert.ok(spans.getFinishedSpans().some((s) => s !== root && s.spanContext().traceId === root.spanContext().traceId), 'the work below it is in its trace');
    } finally {
      await publicGateway.close();
      publicBackends.close();
    }
  });

  it('RED metrics after traffic: REST routes and gRPC methods, counts equal to the requests sent', async () => {
    const merchant = (await (await post('/v1/merchants', ADMIN_KEY, { name: 'Measured' })).json()) as { id: string; secret_key: string };
    const sent = 3;
    for (let i = 0; i < sent; i++) {
      const r = await post('/v1/payments', merchant.secret_key, { amount: 1_000 + i, currency: 'USD', source: { card: { token: 'tok', fingerprint: `fp_${randomUUID()}`, country: 'US' } }, capture_method: 'manual' });
      assert.equal(r.status, 201);
    }
    const invalid = await post('/v1/payments', merchant.secret_key, { amount: -1, currency: 'USD' });
    assert.equal(invalid.status, 400);

    const gatewayText = await (await fetch(`http://127.0.0.1:${gatewayMetrics.port}/metrics`)).text();
    // The first test made one more 201 on this route.
    assert.equal(sample(gatewayText, 'http_server_request_duration_seconds_count', { route: '/v1/payments', method: 'POST', status_code: '201' }), sent + 1);
    assert.equal(sample(gatewayText, 'http_server_request_duration_seconds_count', { route: '/v1/payments', method: 'POST', status_code: '400' }), 1);
    const ledgerText = await (await fetch(`http://127.0.0.1:${ledgerMetricsPort}/metrics`)).text();
    assert.equal(sample(ledgerText, 'rpc_server_duration_seconds_count', { method: 'CreatePayment', code: 'OK' }), sent + 1);
    for (const series of ['ledger_batch_events', 'ledger_batch_duration_ms', 'ledger_queue_events', 'ledger_outbox_lag_rows']) assert.ok(ledgerText.includes(series), `${series} exported`);
    assert.ok((sample(ledgerText, 'ledger_batch_events_count', {}) ?? 0) >= sent, 'batches recorded');
  });

  it('payments created together share one CreatePayments call, and each stays in its own trace with its own metric sample', async () => {
    const merchant = (await (await post('/v1/merchants', ADMIN_KEY, { name: 'Batched' })).json()) as { id: string };
    const metricsBefore = await (await fetch(`http://127.0.0.1:${ledgerMetricsPort}/metrics`)).text();
    const count = (text: string, method: string) => sample(text, 'rpc_server_duration_seconds_count', { method, code: 'OK' }) ?? 0;
    spans.reset();
    // Five callers in one event-loop turn, each in a trace of its own (as five HTTP requests would be).
    const callers = Array.from({ length: 5 }, () => ({ traceId: randomUUID().replaceAll('-', ''), spanId: randomUUID().replaceAll('-', '').slice(0, 16) }));
    const payments = await Promise.all(
      callers.map((c, i) =>
        context.with(contextOf(`00-${c.traceId}-${c.spanId}-01`), () =>
          backends.createPayment(
            CreatePaymentRequest.fromPartial({
              merchantId: merchant.id,
              amount: BigInt(100 + i),
              currency: 'USD',
              source: { kind: { $case: 'card', value: { token: 'tok', fingerprint: `fp_${randomUUID()}`, country: 'US' } } },
              captureMethod: CaptureMethod.CAPTURE_METHOD_MANUAL,
            }),
            false,
          ),
        ),
      ),
    );
    assert.deepEqual(payments.map((p) => p.amount), [100n, 101n, 102n, 103n, 104n]);
    assert.ok(payments.every((p) => p.status === PaymentStatus.PAYMENT_STATUS_REQUIRES_CAPTURE));

    const finished = spans.getFinishedSpans();
    const batchCalls = finished.filter((s) => s.name === 'payments.v1.PaymentService/CreatePayments' && s.kind === SpanKind.SERVER);
    assert.equal(batchCalls.length, 1, 'one call for the five');
    const batchCall = batchCalls[0]!.spanContext();
    for (const c of callers) {
      const mine = finished.filter((s) => s.spanContext().traceId === c.traceId);
      const item = mine.find((s) => s.name === 'payments.v1.PaymentService/CreatePayment' && s.kind === SpanKind.SERVER);
      assert.ok(item, `the payment of trace ${c.traceId} was served in it`);
      assert.equal(item.parentSpanContext?.spanId, c.spanId, "a child of its caller's span");
      assert.ok(item.links.some((l) => l.context.spanId === batchCall.spanId), 'linked to the call that carried it');
      // The ledger batch that posted it serves several callers: it lives in one trace and links to each.
      assert.ok(
        finished.some((s) => s.name === 'ledger.batch' && s.links.some((l) => l.context.traceId === c.traceId)),
        `a ledger batch links to trace ${c.traceId}`,
      );
    }
    const metricsAfter = await (await fetch(`http://127.0.0.1:${ledgerMetricsPort}/metrics`)).text();
    assert.equal(count(metricsAfter, 'CreatePayments') - count(metricsBefore, 'CreatePayments'), 1);
    assert.equal(count(metricsAfter, 'CreatePayment') - count(metricsBefore, 'CreatePayment'), 5, 'a sample per payment');
  });

  it('alerting rules pass promtool, and every series the rules and the dashboard use is exported by a service', async () => {
    const check = spawnSync('promtool', ['check', 'rules', 'observability/alerts.yml'], { encoding: 'utf8' });
    assert.equal(check.error, undefined, 'promtool is installed by scripts/ensure-tools.sh');
    assert.equal(check.status, 0, check.stdout + check.stderr);
    const rules = (parseYaml(readFileSync('observability/alerts.yml', 'utf8')) as { groups: { name: string; rules: Record<string, unknown>[] }[] }).groups.flatMap((g) => g.rules);
    assert.ok(rules.length >= 8);
    for (const rule of rules) {
      assert.ok(typeof rule['alert'] === 'string' && typeof rule['expr'] === 'string', JSON.stringify(rule));
      assert.ok(['page', 'ticket'].includes((rule['labels'] as Record<string, string>)['severity']!), `${String(rule['alert'])}: severity`);
      assert.ok((rule['annotations'] as Record<string, string>)['summary'], `${String(rule['alert'])}: summary`);
    }
    const dashboard = JSON.parse(readFileSync('observability/grafana/ledgerline-dashboard.json', 'utf8')) as { panels: { title: string; targets: { expr: string }[] }[] };
    const expressions = [...rules.map((r) => r['expr'] as string), ...dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr))];

    // Traffic that makes every series appear: a settlement closed on demand counts a batch.
    const merchant = (await (await post('/v1/merchants', ADMIN_KEY, { name: 'Alerted' })).json()) as { id: string; secret_key: string };
    const paid = await post('/v1/payments', merchant.secret_key, { amount: 700, currency: 'EUR', source: { card: { token: 'tok', fingerprint: `fp_${randomUUID()}`, country: 'FR' } }, capture_method: 'automatic' });
    const paymentId = ((await paid.json()) as { id: string }).id;
    await until('settlement to consume it', async () => (await pool.query('SELECT 1 FROM settlement_events WHERE payment_id = $1', [paymentId])).rowCount === 1);
    assert.equal((await post('/v1/settlements/close', ADMIN_KEY, { merchant: merchant.id, currency: 'EUR' })).status, 200);
    const exposition = (
      await Promise.all([gatewayMetrics.port, ledgerMetricsPort, metricsPorts.risk, metricsPorts.settlement].map(async (port) => (await fetch(`http://127.0.0.1:${port}/metrics`)).text()))
    ).join('\n');
    const exported = new Set([...exposition.matchAll(/^([a-z_][a-z0-9_]*)[{ ]/gm)].map((m) => m[1]!));
    for (const expr of expressions) {
      for (const name of seriesNames(expr)) assert.ok(exported.has(name), `${name} (in ${expr.trim().slice(0, 80)}...) is exported by no service`);
    }
  });

  it('a request whose client goes away before the answer still ends its span and has its metric sample and log line (status 499)', async () => {
    const merchant = (await (await post('/v1/merchants', ADMIN_KEY, { name: 'Gone' })).json()) as { id: string; secret_key: string };
    // The payment waits in the gateway until the client has gone (and the span has ended, or not).
    let entered!: () => void;
    const reached = new Promise<void>((resolve) => (entered = resolve));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const original = backends.createPayment;
    let created: Promise<unknown> | undefined;
    backends.createPayment = (...args) => {
      entered();
      created = gate.then(() => original.apply(backends, args));
      return created as ReturnType<Backends['createPayment']>;
    };
    const traceId = randomUUID().replaceAll('-', '');
    const body = JSON.stringify({ amount: 800, currency: 'EUR', source: { card: { token: 'tok', fingerprint: `fp_${randomUUID()}`, country: 'FR' } }, capture_method: 'automatic' });
    const before = await (await fetch(`http://127.0.0.1:${gatewayMetrics.port}/metrics`)).text();
    const gone = () => sample(before, 'http_server_request_duration_seconds_count', { route: '/v1/payments', method: 'POST', status_code: '499' }) ?? 0;
    const socket = connect(Number(new URL(url).port), '127.0.0.1');
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.write(
        `POST /v1/payments HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ${merchant.secret_key}\r\ntraceparent: 00-${traceId}-00f067aa0ba902b7-01\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      await reached;
      socket.destroy();
      await until('the request span to end', () => spans.getFinishedSpans().some((s) => s.spanContext().traceId === traceId && s.name === 'POST /v1/payments'));
    } finally {
      release();
      backends.createPayment = original;
      await created?.catch(() => undefined);
    }
    const after = await (await fetch(`http://127.0.0.1:${gatewayMetrics.port}/metrics`)).text();
    assert.equal(sample(after, 'http_server_request_duration_seconds_count', { route: '/v1/payments', method: 'POST', status_code: '499' }), gone() + 1);
    const line = logLines.map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l['msg'] === 'request' && l['trace_id'] === traceId);
    assert.equal(line?.['status'], 499, 'an access log line for the request');
  });

  /**
   * Spans of the shared layers on their own: ended on failure paths (with the error), and each in its caller's trace
   * when work of several callers is coalesced (group commits, merged gRPC requests).
   */
  describe("spans of the shared layers: ended on failure paths, in their callers' traces", () => {
    it('a transaction that cannot begin (no connection to be had) ends its db.transaction span as an error', async () => {
      // Nothing listens there: the connection is refused, as in a database outage.
      const unreachable = createPool(testConfig({ DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/none` }), { max: 1 });
      spans.reset();
      const caller = tracer('test').startSpan('caller', {}, ROOT_CONTEXT);
      try {
        await assert.rejects(
          context.with(trace.setSpan(ROOT_CONTEXT, caller), () => withTransaction(unreachable, (client) => client.query('SELECT 1'))),
          (error: Error) => error.message === 'database unavailable',
        );
      } finally {
        caller.end();
        await unreachable.end();
      }
      const transaction = spans.getFinishedSpans().filter((s) => s.name === 'db.transaction' && s.spanContext().traceId === caller.spanContext().traceId);
      assert.equal(transaction.length, 1, `spans ended: ${spans.getFinishedSpans().map((s) => s.name).join(', ')}`);
      assert.equal(transaction[0]!.parentSpanContext?.spanId, caller.spanContext().spanId);
      assert.equal(transaction[0]!.status.code, SpanStatusCode.ERROR);
    });

    it("the auto-batching ledger client's calls stay in their callers' traces: a merged request is a root linked to each caller, a lone one its caller's child", async () => {
      // A stand-in ledger that holds its first request until told, so that a third call queues behind it.
      let received!: () => void;
      const firstReceived = new Promise<void>((resolve) => (received = resolve));
      let answerFirst: (() => void) | undefined;
      const server = new Server();
      server.addService(LedgerServiceService, {
        createTransfers: (call: ServerUnaryCall<CreateTransfersRequest, CreateTransfersResponse>, done: sendUnaryData<CreateTransfersResponse>) => {
          const answer = () => done(null, { results: call.request.transfers.map((_, index) => ({ index, code: CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_OK, timestamp: 1n })) });
          if (answerFirst !== undefined || call.request.transfers.length === 1) return answer();
          answerFirst = answer;
          received();
        },
      });
      const client = new LedgerClient(await listenForTest(server), { maxInFlight: 1 });
      const transfer = () => newTransfer({ id: randomUUID(), debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n, ledger: 978, code: 1 });
      const callers = ['a', 'b', 'c'].map((name) => tracer('test').startSpan(`caller ${name}`, {}, ROOT_CONTEXT));
      const inTraceOf = (caller: Span) => context.with(trace.setSpan(ROOT_CONTEXT, caller), () => client.createTransfers([transfer()]));
      spans.reset();
      try {
        // a and b in one turn: one merged request. c while it is in flight: sent alone after it.
        const merged = [inTraceOf(callers[0]!), inTraceOf(callers[1]!)];
        await firstReceived;
        const alone = inTraceOf(callers[2]!);
        answerFirst!();
        await Promise.all([...merged, alone]);
      } finally {
        client.close();
        server.forceShutdown();
        for (const c of callers) c.end();
      }
      const [mergedSpan, aloneSpan] = spans
        .getFinishedSpans()
        .filter((s) => s.kind === SpanKind.CLIENT && s.name === 'ledger.v1.LedgerService/CreateTransfers')
        .sort((x, y) => x.startTime[0] - y.startTime[0] || x.startTime[1] - y.startTime[1]);
      const id = (s: Span) => s.spanContext().spanId;
      assert.ok(mergedSpan && aloneSpan, 'two requests sent');
      assert.equal(mergedSpan.parentSpanContext, undefined, `the merged request is in the trace of caller ${mergedSpan.parentSpanContext?.spanId === id(callers[0]!) ? 'a' : '?'} only`);
      assert.deepEqual(mergedSpan.links.map((l) => l.context.spanId), [id(callers[0]!), id(callers[1]!)]);
      assert.equal(aloneSpan.parentSpanContext?.spanId, id(callers[2]!), "c's request is in c's trace");
    });

    it("a group commit (Coalescer) runs in the trace of its batch's first caller, not in that of whichever batch came before it", async () => {
      // One batch at a time (as the payment steps' completions): b is added while a's batch is being flushed.
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      const seenBy: string[][] = [];
      const coalescer = new Coalescer(
        async (items: string[]) => {
          seenBy.push([...items, trace.getSpan(context.active())?.spanContext().spanId ?? 'none']);
          if (items.includes('a')) await held;
          return items;
        },
        1_000,
        1,
      );
      const [a, b] = ['a', 'b'].map((name) => tracer('test').startSpan(`caller ${name}`, {}, ROOT_CONTEXT)) as [Span, Span];
      try {
        const first = context.with(trace.setSpan(ROOT_CONTEXT, a), () => coalescer.add('a'));
        while (seenBy.length === 0) await new Promise((resolve) => setImmediate(resolve));
        const second = context.with(trace.setSpan(ROOT_CONTEXT, b), () => coalescer.add('b'));
        release();
        await Promise.all([first, second]);
      } finally {
        a.end();
        b.end();
      }
      assert.deepEqual(seenBy, [
        ['a', a.spanContext().spanId],
        ['b', b.spanContext().spanId],
      ]);
    });

    it("the risk client's Score calls coalesced into one ScoreBatch: a root span linked to each caller, so every payment's trace finds its score", async () => {
      const answer = (): ScoreResponse => ({ scorePpm: 1, decision: Decision.DECISION_APPROVE, reasons: [], modelVersion: 'test' });
      const server = new Server();
      server.addService(RiskServiceService, {
        score: (_call: ServerUnaryCall<ScoreRequest, ScoreResponse>, done: sendUnaryData<ScoreResponse>) => done(null, answer()),
        scoreBatch: (call: ServerUnaryCall<ScoreBatchRequest, ScoreBatchResponse>, done: sendUnaryData<ScoreBatchResponse>) => done(null, { responses: call.request.requests.map(answer) }),
      });
      const client = new RiskClient(await listenForTest(server));
      const callers = ['a', 'b'].map((name) => tracer('test').startSpan(`caller ${name}`, {}, ROOT_CONTEXT)) as [Span, Span];
      spans.reset();
      try {
        // Two payments scored in one turn: one ScoreBatch call.
        await Promise.all(callers.map((caller) => context.with(trace.setSpan(ROOT_CONTEXT, caller), () => client.score(ScoreRequest.fromPartial({ amount: 1n, currency: 'EUR' }), 5_000))));
      } finally {
        client.close();
        server.forceShutdown();
        for (const c of callers) c.end();
      }
      const batch = spans.getFinishedSpans().filter((s) => s.kind === SpanKind.CLIENT && s.name === 'risk.v1.RiskService/ScoreBatch');
      assert.equal(batch.length, 1);
      assert.equal(batch[0]!.parentSpanContext, undefined, 'in the trace of the first caller only');
      assert.deepEqual(batch[0]!.links.map((l) => l.context.spanId), callers.map((c) => c.spanContext().spanId));
    });

    it('a risk.decision event carries the trace of the Score call that made it (envelope and message header)', async () => {
      const fixed = (scorePpm: number, modelVersion: string) => ({ score: (): ScoreResponse => ({ scorePpm, decision: Decision.DECISION_APPROVE, reasons: [], modelVersion }) });
      const published: { payload: Uint8Array; traceparent: string }[] = [];
      const rollout = new ChampionChallenger(fixed(1, 'champ'), fixed(2, 'chall'), 'shadow', 0, (_subject, payload, _msgId, traceparent) => published.push({ payload, traceparent }), 'x.risk.decisions', logger('risk'));
      const caller = tracer('test').startSpan('Score', {}, ROOT_CONTEXT);
      context.with(trace.setSpan(ROOT_CONTEXT, caller), () => rollout.score(ScoreRequest.fromPartial({ paymentId: randomUUID(), amount: 1n, currency: 'EUR' })));
      caller.end();
      const expected = `00-${caller.spanContext().traceId}-${caller.spanContext().spanId}-01`;
      assert.equal(published.length, 1);
      assert.equal(EventBatch.decode(published[0]!.payload).events[0]?.traceparent, expected, 'the envelope');
      assert.equal(published[0]!.traceparent, expected, 'the message header');
    });

    it("a gRPC call refused before it is sent (its client closed, at shutdown) ends its CLIENT span as an error", async () => {
      const closed = new LedgerClient('127.0.0.1:1', { autoBatch: false });
      closed.close();
      const caller = tracer('test').startSpan('caller', {}, ROOT_CONTEXT);
      spans.reset();
      await assert.rejects(context.with(trace.setSpan(ROOT_CONTEXT, caller), () => closed.lookupAccounts([randomUUID()])));
      caller.end();
      const call = spans.getFinishedSpans().filter((s) => s.kind === SpanKind.CLIENT && s.parentSpanContext?.spanId === caller.spanContext().spanId);
      assert.deepEqual(call.map((s) => [s.name, s.status.code]), [['ledger.v1.LedgerService/LookupAccounts', SpanStatusCode.ERROR]]);
    });

    it('a ledger batch that fails keeps its SQL spans and its attempts (retries counted), as a committed one does', async () => {
      // The worker side: a batch on a shard without its row fails at its first statement.
      const progress: BatchProgress = { attempts: 0 };
      const submissions: Submission[] = [{ kind: 'accounts', events: [] }];
      await assert.rejects(executeBatch(pool, { shard: 1_000_000, submissions, timeStatements: true }, progress), /no ledger_shards row/);
      assert.equal(progress.attempts, 1);
      assert.deepEqual(progress.statements?.map((t) => [t.name || t.operation, t.failed]), [['lock-shard', false], ['ROLLBACK', false]]);

      // The batcher side: a failure answered after three attempts, with the statements the worker timed.
      const now = performance.timeOrigin + performance.now();
      const statement = (attempt: number, failed: boolean) => ({ name: 'lock-shard', operation: 'SELECT', start: now, end: now + 1, attempt, failed });
      const seen: { attempts: number; failed: boolean }[] = [];
      const batcher = new ShardBatcher(
        7,
        async () => ({ ok: false, kind: 'unavailable', code: 'serialization_failure', message: 'could not serialize access', attempts: 3, statements: [statement(1, true), statement(2, true), statement(3, true)] }),
        { maxEvents: 10, windowMs: 0 },
        new QueueBudget(100),
        { onBatch: (_shard, _events, _submissions, _ms, attempts, failed) => seen.push({ attempts, failed }) },
      );
      const caller = tracer('test').startSpan('caller', {}, ROOT_CONTEXT);
      spans.reset();
      await assert.rejects(context.with(trace.setSpan(ROOT_CONTEXT, caller), () => batcher.submit({ kind: 'accounts', events: [] })));
      caller.end();
      assert.deepEqual(seen, [{ attempts: 3, failed: true }]);
      const batch = spans.getFinishedSpans().find((s) => s.name === 'ledger.batch' && s.parentSpanContext?.spanId === caller.spanContext().spanId);
      assert.ok(batch, 'the batch span');
      assert.equal(batch.attributes['ledger.batch.attempts'], 3);
      const sql = spans.getFinishedSpans().filter((s) => s.parentSpanContext?.spanId === batch.spanContext().spanId);
      assert.deepEqual(sql.map((s) => [s.name, s.status.code]), [1, 2, 3].map(() => ['pg lock-shard', SpanStatusCode.ERROR]));
    });
  });
});

function ancestors(span: ReadableSpan, parentOf: (s: ReadableSpan) => ReadableSpan | undefined): ReadableSpan[] {
  const chain: ReadableSpan[] = [];
  for (let p = parentOf(span); p; p = parentOf(p)) chain.push(p);
  return chain;
}

/** The value of a Prometheus sample whose labels include `labels`; summed over the other labels. */
function sample(text: string, name: string, labels: Record<string, string>): number | undefined {
  let total: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const labelText = /\{(.*)\}/.exec(line)?.[1] ?? '';
    if (!Object.entries(labels).every(([k, v]) => labelText.includes(`${k}="${v}"`))) continue;
    total = (total ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return total;
}

/** The series an expression reads: names not followed by "(" once label matchers, ranges and groupings are removed. */
function seriesNames(expr: string): string[] {
  const bare = expr.replace(/\{[^}]*\}/g, '').replace(/\[[^\]]*\]/g, '').replace(/\b(by|without|on|ignoring)\s*\([^)]*\)/g, '');
  const keywords = new Set(['by', 'and', 'or', 'unless', 'without', 'bool', 'on', 'ignoring', 'le']);
  return [...bare.matchAll(/\b([a-z_][a-z0-9_]*)\b(?!\s*\()/g)].map((m) => m[1]!).filter((n) => n.includes('_') && !keywords.has(n));
}
