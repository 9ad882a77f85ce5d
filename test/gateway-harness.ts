import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { Ajv2020 } from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import type { Config } from '../lib/config.js';
import { createLogger, type Logger } from '../lib/logger.js';
import { InFlight, buildGateway, gatewayPool, type Gateway } from '../gateway/app.js';
import { Backends } from '../gateway/backends.js';
import { startRisk, type RiskApp } from '../risk/app.js';
import { startSettlement, type SettlementApp } from '../settlement/app.js';
import { deleteStream } from '../lib/streams.js';
import { startTestLedger, type TestLedger } from './ledger-harness.js';
import { testConfig, testPool } from './support.js';
import type { Pool } from '../lib/db.js';

export const ADMIN_KEY = 'admin_test_key_0123456789abcdefghijklmnop';

export interface ApiResponse {
  status: number;
  headers: Headers;
  text: string;
  // Parsed JSON: tests read fields freely.
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

export interface TestGateway {
  url: string;
  app: Gateway;
  backends: Backends;
  close(): Promise<void>;
}

export interface TestGatewayOptions {
  logger?: Logger;
  /** Wraps the gateway's database pool (a test slows some statements down with it). */
  wrapPool?: (pool: Pool) => Pool;
}

/** A gateway on an ephemeral port in this process, against `ledgerTarget`. */
export async function startTestGateway(ledgerTarget: string, env: Record<string, string> = {}, options: TestGatewayOptions = {}): Promise<TestGateway> {
  const config: Config = testConfig({ LEDGER_GRPC_TARGET: ledgerTarget, ADMIN_API_KEY: ADMIN_KEY, GATEWAY_GRPC_DEADLINE_MS: '5000', GATEWAY_AUTH_CACHE_MS: '0', ...env });
  const raw = gatewayPool(config, { max: 4 });
  const pool = options.wrapPool?.(raw) ?? raw;
  const backends = new Backends(config);
  const inFlight = new InFlight();
  const app = await buildGateway({ config, pool, backends, inFlight, logger: options.logger ?? createLogger('gateway-test', process.env['GATEWAY_TEST_LOG'] ?? 'error') });
  await app.listen({ port: 0, host: '127.0.0.1' });
  const { port } = app.server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    app,
    backends,
    // As gateway/main.ts closes: stop listening, let the handlers finish, then close what they use.
    async close() {
      await app.close();
      await inFlight.drained();
      backends.close();
      await raw.end();
    },
  };
}

/** Risk, ledger (with payments), settlement and a gateway, all on ephemeral ports. */
export interface TestStack {
  risk: RiskApp;
  ledger: TestLedger;
  settlement: SettlementApp;
  gateway: TestGateway;
  pool: Pool;
  close(): Promise<void>;
}

export interface TestStackOptions {
  /** Each service's logger, by service name; default: errors only, on stdout. */
  logger?: (service: string) => Logger;
  /**
   * The ledger's outbox relay on, publishing to the stack's stream: settlement then consumes the payments'
   * events (settlements can be closed). It publishes, and deletes, every outbox row of the database.
   */
  relay?: boolean;
}

export async function startTestStack(options: TestStackOptions = {}): Promise<TestStack> {
  const logger = options.logger ?? ((service: string) => createLogger(service, 'error'));
  // Settlement's consumer needs a stream: one of this stack's own, small (streams reserve their size on the server).
  const suffix = randomUUID().slice(0, 8);
  const events = { EVENTS_STREAM: `STACK_${suffix}`, EVENTS_SUBJECT_PREFIX: `stack-${suffix}`, EVENTS_MAX_BYTES: String(64 * 1024 * 1024) };
  const risk = await startRisk(testConfig({ RISK_GRPC_LISTEN: '127.0.0.1:0' }), logger('risk-test'));
  const relay = options.relay ? { ...events, LEDGER_RELAY_ENABLED: 'true' } : {};
  const ledger = await startTestLedger({ RISK_GRPC_TARGET: risk.address, RISK_DEADLINE_MS: '2000', ...relay }, {}, options.logger?.('ledger-test'));
  const settlementConfig = testConfig({ ...events, SETTLEMENT_GRPC_LISTEN: '127.0.0.1:0', LEDGER_GRPC_TARGET: ledger.app.address, SETTLEMENT_CONSUMER: `stack-${suffix}` });
  const settlement = await startSettlement(settlementConfig, logger('settlement-test'));
  const gatewayLogger = options.logger?.('gateway-test');
  const gateway = await startTestGateway(ledger.app.address, { SETTLEMENT_GRPC_TARGET: settlement.address }, gatewayLogger ? { logger: gatewayLogger } : {});
  const pool = testPool();
  return {
    risk,
    ledger,
    settlement,
    gateway,
    pool,
    async close() {
      await gateway.close();
      await settlement.close();
      await ledger.close();
      await risk.close();
      await pool.end();
      await deleteStream(settlementConfig, events.EVENTS_STREAM);
    },
  };
}

/**
 * Checks every response against the gateway's own /openapi.json: the schema of the route and status.
 * Path parameters are matched against the document's templates.
 */
export class OpenApiChecker {
  private readonly ajv = new Ajv2020({ strict: false, allErrors: true });
  private readonly routes: { method: string; pattern: RegExp; responses: Record<string, { content?: Record<string, { schema: object }> }> }[] = [];

  constructor(document: { paths: Record<string, Record<string, { responses: Record<string, { content?: Record<string, { schema: object }> }> }>> }) {
    addFormats.default(this.ajv);
    for (const [template, methods] of Object.entries(document.paths)) {
      const pattern = new RegExp(`^${template.replace(/\{[^}]+\}/g, '[^/]+')}$`);
      for (const [method, operation] of Object.entries(methods)) this.routes.push({ method: method.toUpperCase(), pattern, responses: operation.responses });
    }
  }

  check(method: string, path: string, status: number, body: unknown, mediaType = 'application/json'): void {
    const route = this.routes.find((r) => r.method === method && r.pattern.test(path.split('?')[0]!));
    if (!route) return assert.equal(status, 404, `${method} ${path}: no such route in /openapi.json but answered ${status}`);
    const schema = route.responses[String(status)]?.content?.[mediaType]?.schema;
    assert.ok(schema, `${method} ${path}: status ${status} as ${mediaType} is not documented in /openapi.json`);
    const validate = this.ajv.compile(schema);
    assert.ok(validate(body), `${method} ${path} ${status}: body does not match /openapi.json: ${JSON.stringify(validate.errors)}\n${JSON.stringify(body)}`);
  }
}

/** An HTTP client for tests: every answer is checked against /openapi.json, and shown to `observer` if any. */
export class Api {
  constructor(
    public url: string,
    private readonly checker: OpenApiChecker,
    private readonly observer?: (method: string, path: string, response: ApiResponse) => void,
  ) {}

  static async connect(url: string, observer?: (method: string, path: string, response: ApiResponse) => void): Promise<Api> {
    const document = (await (await fetch(`${url}/openapi.json`)).json()) as ConstructorParameters<typeof OpenApiChecker>[0];
    return new Api(url, new OpenApiChecker(document), observer);
  }

  async request(method: string, path: string, options: { key?: string; body?: unknown; raw?: string; headers?: Record<string, string>; idempotencyKey?: string } = {}): Promise<ApiResponse> {
    const headers: Record<string, string> = { ...options.headers };
    if (options.key) headers['authorization'] = `Bearer ${options.key}`;
    if (options.idempotencyKey) headers['idempotency-key'] = options.idempotencyKey;
    let body: string | undefined = options.raw;
    if (options.body !== undefined) {
      body = JSON.stringify(options.body);
      headers['content-type'] ??= 'application/json';
    }
    const response = await fetch(`${this.url}${path}`, { method, headers, body });
    const text = await response.text();
    const mediaType = (response.headers.get('content-type') ?? 'application/json').split(';')[0]!.trim();
    const parsed = mediaType !== 'application/json' ? text : text ? JSON.parse(text) : undefined;
    const answer = { status: response.status, headers: response.headers, text, body: parsed };
    this.observer?.(method, path, answer);
    this.checker.check(method, path, response.status, parsed, mediaType);
    return answer;
  }

  get(path: string, key?: string): Promise<ApiResponse> {
    return this.request('GET', path, { key });
  }

  post(path: string, key: string | undefined, body?: unknown, idempotencyKey?: string): Promise<ApiResponse> {
    return this.request('POST', path, { key, body: body ?? {}, idempotencyKey });
  }
}

/**
 * Every table a request could write: a refused request must change none of them. Not idempotency keys: a
 * request refused after validation (an unknown payment, a merchant key on an admin route) keeps its 4xx answer
 * for replay, as Stripe does (gateway/README.md). Nor failed_transfer_ids: a transfer the ledger refused for a
 * reason of the moment (402 exceeds_credits) spends its id, so that a retry cannot apply it later; like the key,
 * a record of the answer (ledger/README.md, "Spent ids"). Nor the outbox: the ledger's expiry sweeper may
 * meanwhile expire pending transfers other tests left in the database, and their events are outbox rows.
 */
const BUSINESS_TABLES = ['merchants', 'api_keys', 'merchant_accounts', 'accounts', 'transfers', 'payments', 'payment_operations', 'settlement_batches'];

/** The row count of each business table, to compare before and after requests that must write nothing. */
export async function businessTableCounts(pool: Pool): Promise<Record<string, number>> {
  const r = await pool.query(`SELECT ${BUSINESS_TABLES.map((t) => `(SELECT count(*) FROM ${t})::int AS ${t}`).join(', ')}`);
  return r.rows[0];
}

/** Asserts an error answer: status, error.code and (when given) error.param. */
export function expectError(response: ApiResponse, status: number, code: string, param?: string): void {
  assert.equal(response.status, status, response.text);
  assert.equal(response.body?.error?.code, code, response.text);
  if (param !== undefined) assert.equal(response.body.error.param, param, response.text);
}
