import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'mocha';
import { createLogger } from '../lib/logger.js';
import { ADMIN_KEY, Api, businessTableCounts, startTestStack, type ApiResponse, type TestStack } from '../test/gateway-harness.js';
import { derivedId } from '../lib/derived-id.js';
import { merchantBalanceAccountId, platformAccountId } from '../ledger/payments/model.js';
import { hashKey, newSecretKey, revokeKey } from './auth.js';

/** A route of /openapi.json: its method, its path template, and what the document says about it. */
interface Route {
  method: string;
  template: string;
  /** The document says it needs a key (it does not override the global security with `security: []`). */
  authenticated: boolean;
  /** The document describes it as "Platform admin key only". */
  adminOnly: boolean;
}

/** The objects one merchant made through the API, by what they are. */
interface MerchantObjects {
  id: string;
  key: string;
  wallet: string;
  funding: string;
  postedTransfer: string;
  /** Pending without a timeout: it stays pending unless someone posts or voids it. */
  pendingTransfer: string;
  /** Authorized, not captured: capture and cancel would act on it. */
  authorizedPayment: string;
  capturedPayment: string;
  refund: string;
}

/** What a path segment after /v1/ names: the object a route's {id} is, e.g. /v1/payments/{id}/capture → payments. */
const resourceOf = (template: string): string => template.split('/')[2]!;
const fill = (template: string, id: string): string => template.replace(/\{[^}]+\}/g, id);

/**
 * The security sweep of issue 9, against the real stack (gateway, ledger with payments, risk, settlement,
 * PostgreSQL, JetStream). Routes come from /openapi.json, so a new route is swept without touching this file:
 * - every route that needs a key refuses a missing, malformed, unknown or revoked one (401, the error object,
 *   nothing written), and every admin-only route a merchant key;
 * - merchant B gets, for every id of merchant A's objects, the very answer of an id that does not exist, never
 *   sees A's objects in its lists, and cannot name A's accounts in a transfer, a batch or a payment;
 * - no secret key, admin key or card token appears in any log line or response of the whole test, and the
 *   database holds keys only as SHA-256 digests.
 * Comparing keys in constant time is not tested by timing (gateway/auth.ts compares the admin key's digest with
 * timingSafeEqual and looks merchant keys up by digest): the tests check what is observable of it, the digests.
 */
describe('security: authentication, isolation between merchants, secrets (every route of /openapi.json)', function () {
  this.timeout(120_000);
  /** Every log line of every service of the stack, at every level. */
  const logLines: string[] = [];
  /** Every answer of the test, with the request it answered. */
  const answers: { method: string; path: string; response: ApiResponse }[] = [];
  /** Card tokens sent in payments: never stored, logged or answered (payments.v1 Card). */
  const cardTokens: string[] = [];
  /** Secret keys whose creation answer was kept, sealed, for an idempotent replay. */
  const sealedKeys: string[] = [];
  let stack: TestStack;
  let api: Api;
  let routes: Route[];
  let a: MerchantObjects;
  let b: MerchantObjects;
  let settlementOfA: string;
  let revokedKey: string;
  const unknownKey = newSecretKey();

  before(async () => {
    const logs = new Writable({
      write(chunk: Buffer, _encoding, done) {
        logLines.push(...chunk.toString('utf8').split('\n').filter(Boolean));
        done();
      },
    });
    stack = await startTestStack({ logger: (service) => createLogger(service, 'trace', logs), relay: true });
    api = await Api.connect(stack.gateway.url, (method, path, response) => answers.push({ method, path, response }));
    routes = await documentedRoutes(stack.gateway.url);
    a = await merchantWithObjects('Merchant A');
    b = await merchantWithObjects('Merchant B');
    settlementOfA = await settle(a);
    // A key that worked, then revoked (the admin CLI's revoke-key does the same).
    const c = await createMerchant('Merchant C');
    assert.equal((await api.get('/v1/payments', c.key)).status, 200);
    assert.equal(await revokeKey(stack.pool, c.key), true);
    revokedKey = c.key;
  });
  after(async () => {
    await stack?.close();
  });

  async function createMerchant(name: string): Promise<{ id: string; key: string }> {
    const r = await api.post('/v1/merchants', ADMIN_KEY, { name });
    assert.equal(r.status, 201, r.text);
    return { id: r.body.id, key: r.body.secret_key };
  }

  async function created(response: Promise<ApiResponse>): Promise<string> {
    const r = await response;
    assert.equal(r.status, 201, r.text);
    return r.body.id;
  }

  function card() {
    const token = `tok_${randomUUID().replaceAll('-', '')}`;
    cardTokens.push(token);
    return { token, fingerprint: `fp_${randomUUID()}`, country: 'FR' };
  }

  /** A merchant with one object of every kind the API has (besides a settlement: see settle). */
  async function merchantWithObjects(name: string): Promise<MerchantObjects> {
    const { id, key } = await createMerchant(name);
    const wallet = await created(api.post('/v1/accounts', key, { currency: 'EUR', flags: ['debits_must_not_exceed_credits'] }));
    const funding = await created(api.post('/v1/accounts', key, { currency: 'EUR' }));
    const postedTransfer = await created(api.post('/v1/transfers', key, { debit_account_id: funding, credit_account_id: wallet, amount: 10_000, currency: 'EUR' }));
    const pendingTransfer = await created(api.post('/v1/transfers', key, { debit_account_id: funding, credit_account_id: wallet, amount: 500, currency: 'EUR', pending: true }));
    const authorizedPayment = await created(api.post('/v1/payments', key, { amount: 2_000, currency: 'EUR', source: { card: card() }, capture_method: 'manual' }, randomUUID()));
    const capturedPayment = await created(api.post('/v1/payments', key, { amount: 10_000, currency: 'EUR', source: { card: card() }, capture_method: 'automatic' }, randomUUID()));
    const refund = await created(api.post('/v1/refunds', key, { payment: capturedPayment, amount: 1_000 }, randomUUID()));
    return { id, key, wallet, funding, postedTransfer, pendingTransfer, authorizedPayment, capturedPayment, refund };
  }

  /** Closes the merchant's EUR window once settlement has consumed its captured payment; the settlement's id. */
  async function settle(merchant: MerchantObjects): Promise<string> {
    const deadline = Date.now() + 30_000;
    while ((await stack.settlement.pool.query('SELECT 1 FROM settlement_events WHERE payment_id = $1', [merchant.capturedPayment])).rowCount === 0) {
      assert.ok(Date.now() < deadline, 'the captured payment was not consumed by settlement');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const r = await api.post('/v1/settlements/close', ADMIN_KEY, { merchant: merchant.id, currency: 'EUR' });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.body.data.length, 1, r.text);
    return r.body.data[0].id;
  }

  /** The id of merchant A's object that a route's {id} names (a pending transfer and an uncaptured payment: the routes acting on them would act). */
  function idOfA(template: string): string {
    const ids: Record<string, string> = {
      accounts: a.wallet,
      transfers: a.pendingTransfer,
      payments: a.authorizedPayment,
      refunds: a.refund,
      settlements: settlementOfA,
    };
    const id = ids[resourceOf(template)];
    assert.ok(id, `${template}: no object of merchant A for this route's id; give the test one`);
    return id;
  }

  /**
   * A body the route would accept from merchant A (or the admin): refused, it must still write nothing. A new
   * POST route gets {} until it is given one here; the refusal is checked either way.
   */
  function wellFormedBody(route: Route): unknown {
    const transfer = { debit_account_id: a.funding, credit_account_id: a.wallet, amount: 1, currency: 'EUR' };
    const bodies: Record<string, unknown> = {
      'POST /v1/merchants': { name: 'Never created' },
      'POST /v1/accounts': { currency: 'EUR' },
      'POST /v1/transfers': transfer,
      'POST /v1/transfers/batch': { transfers: [transfer] },
      'POST /v1/payments': { amount: 100, currency: 'EUR', source: { account: a.wallet }, capture_method: 'automatic' },
      'POST /v1/refunds': { payment: a.capturedPayment, amount: 1 },
      'POST /v1/settlements/close': { merchant: a.id, currency: 'EUR' },
    };
    return route.method === 'POST' ? (bodies[`${route.method} ${route.template}`] ?? {}) : undefined;
  }

  async function call(route: Route, id: string, options: { key?: string; headers?: Record<string, string> }): Promise<ApiResponse> {
    return api.request(route.method, fill(route.template, id), { ...options, body: wellFormedBody(route) });
  }

  /** A's objects as A sees them, to show that refused requests changed none of them. */
  async function objectsOfA(): Promise<unknown[]> {
    const paths = [`/v1/accounts/${a.wallet}`, `/v1/accounts/${a.funding}`, `/v1/transfers/${a.pendingTransfer}`, `/v1/payments/${a.authorizedPayment}`, `/v1/payments/${a.capturedPayment}`, `/v1/settlements/${settlementOfA}`];
    return Promise.all(
      paths.map(async (path) => {
        const r = await api.get(path, a.key);
        assert.equal(r.status, 200, `${path}: ${r.text}`);
        return r.body;
      }),
    );
  }

  /** Runs `requests`, asserting that the business tables and A's objects are as they were. */
  async function writesNothing(requests: () => Promise<void>): Promise<void> {
    const [counts, objects] = [await businessTableCounts(stack.pool), await objectsOfA()];
    await requests();
    assert.deepEqual(await businessTableCounts(stack.pool), counts, 'nothing was written');
    assert.deepEqual(await objectsOfA(), objects, "merchant A's objects are unchanged");
  }

  describe('authentication', () => {
    it('every route that needs a key answers 401 invalid_api_key to a missing, malformed, unknown or revoked one, and writes nothing', async () => {
      const authenticated = routes.filter((r) => r.authenticated);
      assert.ok(authenticated.length >= 20, `${authenticated.length} routes need a key`);
      assert.deepEqual(
        routes.filter((r) => r.template.startsWith('/v1/') && !r.authenticated),
        [],
        'every /v1/ route needs a key',
      );
      // Malformed headers around a valid key: a lenient parser would let them in.
      const credentials: Record<string, { key?: string; headers?: Record<string, string> }> = {
        'no Authorization header': {},
        'another scheme': { headers: { authorization: `Basic ${a.key}` } },
        'no scheme': { headers: { authorization: a.key } },
        'text after the key': { headers: { authorization: `Bearer ${a.key} ${a.key}` } },
        'an empty key': { headers: { authorization: 'Bearer ' } },
        'an unknown key': { key: unknownKey },
        'a revoked key': { key: revokedKey },
      };
      await writesNothing(async () => {
        for (const route of authenticated) {
          for (const [what, credential] of Object.entries(credentials)) {
            const r = await call(route, route.template.includes('{') ? idOfA(route.template) : '', credential);
            assert.equal(r.status, 401, `${route.method} ${route.template} with ${what}: ${r.text}`);
            assert.deepEqual(Object.keys(r.body.error).sort(), ['code', 'message', 'type'], r.text);
            assert.deepEqual([r.body.error.type, r.body.error.code], ['authentication_error', 'invalid_api_key'], `${route.method} ${route.template} with ${what}`);
          }
        }
      });
    });

    it('every admin-only route refuses a merchant key (401 admin_key_required), even for its own objects, and writes nothing', async () => {
      const adminOnly = routes.filter((r) => r.adminOnly);
      assert.deepEqual(adminOnly.map((r) => `${r.method} ${r.template}`).sort(), [
        'GET /v1/settlements/{id}/payout_file',
        'GET /v1/settlements/{id}/reconciliation',
        'POST /v1/merchants',
        'POST /v1/settlements/close',
      ]);
      await writesNothing(async () => {
        for (const route of adminOnly) {
          const r = await call(route, route.template.includes('{') ? idOfA(route.template) : '', { key: a.key });
          assert.equal(r.status, 401, `${route.method} ${route.template}: ${r.text}`);
          assert.deepEqual([r.body.error.type, r.body.error.code], ['authentication_error', 'admin_key_required'], r.text);
        }
      });
    });
  });

  describe("merchant B and merchant A's objects", () => {
    it("every route taking an id answers B for A's object exactly as for an id that does not exist (404), and writes nothing", async () => {
      const withId = routes.filter((r) => r.authenticated && r.template.includes('{'));
      assert.ok(withId.length >= 12, `${withId.length} routes take an id`);
      // A's ids are real: A reads every one of them.
      for (const template of new Set(withId.map((r) => `/v1/${resourceOf(r.template)}/{id}`))) {
        const r = await api.get(fill(template, idOfA(template)), a.key);
        assert.equal(r.status, 200, `${template} for A: ${r.text}`);
      }
      await writesNothing(async () => {
        for (const route of withId) {
          const foreign = await call(route, idOfA(route.template), { key: b.key });
          const missing = await call(route, randomUUID(), { key: b.key });
          const what = `${route.method} ${route.template}`;
          // An admin-only route refuses B's key before looking at the id at all.
          assert.equal(foreign.status, route.adminOnly ? 401 : 404, `${what}: ${foreign.text}`);
          assert.equal(foreign.status, missing.status, what);
          assert.deepEqual(foreign.body, missing.body, `${what}: answers differ for A's object and for nothing`);
          assert.equal(foreign.headers.get('content-type'), missing.headers.get('content-type'), what);
        }
      });
    });

    it("B's lists never contain A's objects, and a cursor at A's object is answered as one at nothing", async () => {
      const lists = routes.filter((r) => r.authenticated && !r.adminOnly && r.method === 'GET' && !r.template.includes('{'));
      assert.ok(lists.length >= 2, `${lists.length} lists`);
      const idsOfA = Object.values(a).filter((v) => v !== a.key);
      idsOfA.push(settlementOfA);
      const assertNoneOfA = (r: ApiResponse, what: string) => {
        for (const id of idsOfA) assert.ok(!r.text.includes(id), `${what} shows ${id} of merchant A: ${r.text}`);
      };
      for (const route of lists) {
        const own = await api.get(route.template, b.key);
        assert.equal(own.status, 200, own.text);
        assertNoneOfA(own, route.template);
        const foreign = await api.get(`${route.template}?starting_after=${idOfA(`${route.template}/{id}`)}`, b.key);
        const missing = await api.get(`${route.template}?starting_after=${randomUUID()}`, b.key);
        assertNoneOfA(foreign, `${route.template} after A's object`);
        assert.deepEqual([foreign.status, foreign.body], [missing.status, missing.body], `${route.template}: a cursor at A's object and at nothing differ`);
      }
      const payments = await api.get('/v1/payments', b.key);
      assert.ok(
        payments.body.data.some((p: { id: string }) => p.id === b.capturedPayment),
        "B's own payments are listed: the list is not empty for want of data",
      );
      // B's account's transfers, with A's transfer as the cursor.
      const transfers = `/v1/accounts/${b.wallet}/transfers`;
      assertNoneOfA(await api.get(transfers, b.key), transfers);
      const foreign = await api.get(`${transfers}?starting_after=${a.postedTransfer}`, b.key);
      const missing = await api.get(`${transfers}?starting_after=${randomUUID()}`, b.key);
      assert.equal(foreign.status, 400, foreign.text);
      assert.deepEqual(foreign.body, missing.body);
    });

    it("a transfer, a batch, a payment or a refund naming A's account or payment is refused as if it did not exist, and writes nothing", async () => {
      /** B's request naming A's object, and the same naming nothing: the same refusal. */
      const refusedAsMissing = async (path: string, body: (id: string) => object, foreignId: string, status: number, param: string) => {
        const foreign = await api.post(path, b.key, body(foreignId));
        const missing = await api.post(path, b.key, body(randomUUID()));
        assert.equal(foreign.status, status, `${path} ${param}: ${foreign.text}`);
        assert.equal(foreign.body.error.param, param, foreign.text);
        assert.deepEqual(foreign.body, missing.body, `${path} ${param}: answers differ for A's object and for nothing`);
      };
      const ownTransfer = { debit_account_id: b.funding, credit_account_id: b.wallet, amount: 1, currency: 'EUR' };
      const unsubmitted = randomUUID();
      await writesNothing(async () => {
        await refusedAsMissing('/v1/transfers', (id) => ({ ...ownTransfer, credit_account_id: id }), a.wallet, 404, 'credit_account_id');
        await refusedAsMissing('/v1/transfers', (id) => ({ ...ownTransfer, debit_account_id: id }), a.funding, 404, 'debit_account_id');
        // The whole batch is refused: B's own transfer in it is not made either.
        await refusedAsMissing('/v1/transfers/batch', (id) => ({ transfers: [{ ...ownTransfer, id: unsubmitted }, { ...ownTransfer, credit_account_id: id }] }), a.wallet, 404, 'transfers.1.credit_account_id');
        await refusedAsMissing('/v1/payments', (id) => ({ amount: 100, currency: 'EUR', source: { account: id }, capture_method: 'automatic' }), a.wallet, 404, 'source.account');
        await refusedAsMissing('/v1/payments', (id) => ({ amount: 100, currency: 'EUR', source: { account: b.wallet }, destination_account_id: id, capture_method: 'automatic' }), a.wallet, 404, 'destination_account_id');
        await refusedAsMissing('/v1/refunds', (id) => ({ payment: id, amount: 1 }), a.capturedPayment, 404, 'payment');
      });
      assert.equal((await api.get(`/v1/transfers/${unsubmitted}`, b.key)).status, 404, "B's transfer of the refused batch was not made");
    });

    it("B creating an account or a transfer with the id of A's is refused without showing A's object", async () => {
      // Ids are client-chosen and global: that the id is taken has to be said (422), but nothing of A's object.
      const shown = [a.id, a.funding, a.wallet];
      await writesNothing(async () => {
        for (const [path, body] of [
          ['/v1/accounts', { id: a.wallet, currency: 'EUR' }],
          ['/v1/transfers', { id: a.postedTransfer, debit_account_id: b.funding, credit_account_id: b.wallet, amount: 1, currency: 'EUR' }],
        ] as const) {
          const r = await api.post(path, b.key, body);
          assert.equal(r.status, 422, `${path}: ${r.text}`);
          for (const value of shown) assert.ok(!r.text.includes(value), `${path} shows ${value} of merchant A: ${r.text}`);
        }
      });
      const owner = await stack.pool.query('SELECT merchant_id FROM merchant_accounts WHERE account_id = $1', [a.wallet]);
      assert.deepEqual(owner.rows, [{ merchant_id: a.id }], "A's account is still A's only");
    });

    it("B cannot take ids the platform derives (platform accounts, A's balance account, a payment's transfers), and A resolves its payments' pending transfers only through the payments", async () => {
      const { rows } = await stack.pool.query("SELECT account_id FROM merchant_accounts WHERE merchant_id = $1 AND purpose = 'balance'", [a.id]);
      const balanceOfA = rows[0]!.account_id as string;
      const authorization = (await api.get(`/v1/accounts/${balanceOfA}/transfers?limit=100`, a.key)).body.data.find((t: { status: string; amount: number }) => t.status === 'pending' && t.amount === 2_000);
      assert.ok(authorization, "A's uncaptured payment has a pending transfer into A's balance account");
      await writesNothing(async () => {
        // Derived ids anyone can compute: taken, they would hand B the platform's money or A's payments.
        for (const id of [platformAccountId('fee_revenue', 'EUR'), platformAccountId('card_clearing', 'EUR'), merchantBalanceAccountId(a.id, 'GBP'), balanceOfA]) {
          const r = await api.post('/v1/accounts', b.key, { id, currency: id === merchantBalanceAccountId(a.id, 'GBP') ? 'GBP' : 'EUR' });
          assert.equal(r.status, 400, r.text);
          assert.deepEqual([r.body.error.code, r.body.error.param], ['id_reserved', 'id'], r.text);
        }
        const transfer = await api.post('/v1/transfers', b.key, { id: derivedId('operation', `${randomUUID()}:capture`), debit_account_id: b.funding, credit_account_id: b.wallet, amount: 1, currency: 'EUR' });
        assert.deepEqual([transfer.status, transfer.body.error?.code, transfer.body.error?.param], [400, 'id_reserved', 'id'], transfer.text);
        // A sees its payment's authorization, but posting it here would skip the capture's fee, state and events.
        for (const action of ['post', 'void']) {
          const r = await api.post(`/v1/transfers/${authorization.id}/${action}`, a.key, {});
          assert.deepEqual([r.status, r.body.error?.code], [422, 'pending_transfer_managed_by_platform'], r.text);
        }
      });
      const payment = await api.get(`/v1/payments/${a.authorizedPayment}`, a.key);
      assert.equal(payment.body.status, 'requires_capture', payment.text);
    });
  });

  describe('secrets', () => {
    it('a merchant creation with an Idempotency-Key is replayed to the same admin key, but kept only sealed: the database never holds its secret key', async () => {
      const idempotencyKey = randomUUID();
      const first = await api.post('/v1/merchants', ADMIN_KEY, { name: 'Retried' }, idempotencyKey);
      assert.equal(first.status, 201, first.text);
      sealedKeys.push(first.body.secret_key);
      const again = await api.post('/v1/merchants', ADMIN_KEY, { name: 'Retried' }, idempotencyKey);
      assert.equal(again.status, 201, again.text);
      assert.equal(again.headers.get('idempotent-replayed'), 'true');
      assert.equal(again.text, first.text, 'replayed byte for byte');
      const kept = await stack.pool.query('SELECT body FROM idempotency_keys WHERE key = $1', [idempotencyKey]);
      assert.match(kept.rows[0].body, /^sealed:v1:/);
      assert.ok(!kept.rows[0].body.includes(first.body.id), 'the kept answer is not readable');
      // The table scan of the last test checks that the key is nowhere in plain text.
    });

    // Last: it reads the logs and answers of every test above.
    it('no log line and no answer of this whole test carries a secret key, the admin key or a card token; keys are stored as digests only', async () => {
      const keys = [a.key, b.key, revokedKey, unknownKey];
      const secrets = [...keys, ...sealedKeys, ADMIN_KEY, ...cardTokens];
      assert.equal(cardTokens.length, 4);
      // The logs were captured: every request has its access line (at info), and more was logged than that.
      const requestLines = logLines.filter((line) => JSON.parse(line).msg === 'request').length;
      assert.ok(requestLines >= answers.length, `${requestLines} access log lines for ${answers.length} requests`);
      assert.ok(logLines.length > requestLines, 'only access lines were captured');
      for (const secret of secrets) {
        const line = logLines.find((l) => l.includes(secret));
        assert.equal(line, undefined, `a log line carries a secret (${secret.slice(0, 7)}...): ${line}`);
      }

      // The one answer that shows a key is its merchant's creation (shown once): it shows that key and no other secret.
      for (const { method, path, response } of answers) {
        const headers = JSON.stringify([...response.headers]);
        const shownKey = method === 'POST' && path === '/v1/merchants' && response.status === 201 ? (response.body.secret_key as string) : undefined;
        for (const secret of secrets.filter((s) => s !== shownKey)) {
          assert.ok(!response.text.includes(secret) && !headers.includes(secret), `${method} ${path} ${response.status} answers a secret (${secret.slice(0, 7)}...)`);
        }
      }

      // Stored as SHA-256 digests (with a displayable prefix), nowhere in plain text: no table of the database has
      // them in its text columns (bytea, the events in the outbox, reads as hex here; events.v1 has no key or token).
      const stored = await stack.pool.query('SELECT key_hash, prefix FROM api_keys WHERE merchant_id = ANY($1::uuid[]) ORDER BY created_at', [[a.id, b.id]]);
      assert.deepEqual(
        stored.rows,
        [a.key, b.key].map((key) => ({ key_hash: hashKey(key), prefix: key.slice(0, 7) })),
      );
      const tables = await stack.pool.query(`SELECT tablename FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename`);
      assert.ok(tables.rows.length >= 10, `${tables.rows.length} tables`);
      for (const { tablename } of tables.rows) {
        const r = await stack.pool.query(`SELECT count(*)::int AS n FROM "${tablename}" t WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) s WHERE strpos(t::text, s) > 0)`, [secrets]);
        assert.equal(r.rows[0].n, 0, `table ${tablename} holds a secret in plain text`);
      }
    });
  });
});

/** The routes of the gateway's /openapi.json (the document serves itself and is not in it). */
async function documentedRoutes(url: string): Promise<Route[]> {
  type Operation = { description?: string; security?: unknown[] };
  const document = (await (await fetch(`${url}/openapi.json`)).json()) as { security?: unknown[]; paths: Record<string, Record<string, Operation>> };
  assert.ok(document.security?.length, 'the document requires a key by default');
  return Object.entries(document.paths).flatMap(([template, operations]) =>
    Object.entries(operations).map(([method, operation]) => ({
      method: method.toUpperCase(),
      template,
      authenticated: (operation.security ?? document.security!).length > 0,
      adminOnly: operation.description?.startsWith('Platform admin key only') ?? false,
    })),
  );
}
