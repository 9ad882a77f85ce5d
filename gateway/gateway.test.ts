import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import cc from 'currency-codes';
import { after, before, describe, it } from 'mocha';
import { ADMIN_KEY, Api, businessTableCounts, expectError, startTestGateway, startTestStack, type TestStack } from '../test/gateway-harness.js';
import { freePort } from '../test/ledger-process.js';
import { TcpProxy } from '../test/tcp-proxy.js';
import { testConfig } from '../test/support.js';
import { connect, createServer, type AddressInfo } from 'node:net';
import type { Pool } from '../lib/db.js';
import { AppError } from '../lib/errors.js';
import type { LedgerClient } from '../ledger/client.js';

describe('REST gateway (HTTP end to end: gateway, ledger with payments, risk, PostgreSQL)', function () {
  this.timeout(60_000);
  let stack: TestStack;
  let api: Api;
  let keyA: string;
  let keyB: string;

  const merchant = async (name: string): Promise<{ id: string; key: string }> => {
    const r = await api.post('/v1/merchants', ADMIN_KEY, { name });
    assert.equal(r.status, 201, r.text);
    return { id: r.body.id, key: r.body.secret_key };
  };
  const account = async (key: string, fields: Record<string, unknown> = {}): Promise<string> => {
    const r = await api.post('/v1/accounts', key, { currency: 'USD', ...fields });
    assert.equal(r.status, 201, r.text);
    return r.body.id;
  };
  /** A wallet (cannot be overdrawn) holding `funds`, paid in from a funding account of the same merchant. */
  const wallet = async (key: string, funds: number): Promise<{ wallet: string; funding: string }> => {
    const w = await account(key, { flags: ['debits_must_not_exceed_credits'] });
    const funding = await account(key);
    const r = await api.post('/v1/transfers', key, { debit_account_id: funding, credit_account_id: w, amount: funds, currency: 'USD' });
    assert.equal(r.status, 201, r.text);
    return { wallet: w, funding };
  };
  const balances = async (key: string, id: string) => (await api.get(`/v1/accounts/${id}`, key)).body.balances;
  const rowCounts = async () => {
    const r = await stack.pool.query(
      `SELECT (SELECT count(*) FROM payments)::int AS payments, (SELECT count(*) FROM merchant_accounts)::int AS accounts,
              (SELECT count(*) FROM idempotency_keys)::int AS keys, (SELECT count(*) FROM transfers)::int AS transfers, (SELECT count(*) FROM merchants)::int AS merchants`,
    );
    return r.rows[0];
  };

  before(async () => {
    stack = await startTestStack();
    api = await Api.connect(stack.gateway.url);
    keyA = (await merchant('Merchant A')).key;
    keyB = (await merchant('Merchant B')).key;
  });
  after(async () => {
    await stack?.close();
  });

  describe('authentication', () => {
    it('no key, a malformed header, an unknown key, a revoked key: 401; the admin key is not a merchant and a merchant is not the admin', async () => {
      expectError(await api.get('/v1/payments'), 401, 'invalid_api_key');
      expectError(await api.request('GET', '/v1/payments', { headers: { authorization: `Basic ${keyA}` } }), 401, 'invalid_api_key');
      expectError(await api.get('/v1/payments', `sk_${randomUUID()}`), 401, 'invalid_api_key');
      expectError(await api.get('/v1/payments', ADMIN_KEY), 401, 'merchant_key_required');
      expectError(await api.post('/v1/merchants', keyA, { name: 'x' }), 401, 'admin_key_required');
      const c = await merchant('Merchant C');
      assert.equal((await api.get('/v1/payments', c.key)).status, 200);
      await stack.pool.query(`UPDATE api_keys SET revoked_at = now() WHERE merchant_id = $1`, [c.id]);
      expectError(await api.get('/v1/payments', c.key), 401, 'invalid_api_key');
    });

    it('a /v1/ route reached by a percent-encoded path (/%761/payments) goes through the same key check (and rate limit) as /v1/payments', async () => {
      // The router decodes the path; a gate on the raw URL would let such a request past the key check to the handler.
      const get = async (path: string, key?: string) => {
        const r = await fetch(`${api.url}${path}`, { headers: key ? { authorization: `Bearer ${key}` } : {} });
        return { status: r.status, body: (await r.json()) as { error?: { code: string } } };
      };
      for (const path of ['/%761/payments', '/%76%31/settlements']) {
        const unauthenticated = await get(path);
        assert.deepEqual([unauthenticated.status, unauthenticated.body.error?.code], [401, 'invalid_api_key'], `${path}: ${JSON.stringify(unauthenticated.body)}`);
        const own = await get(path, keyA);
        assert.equal(own.status, 200, `${path}: ${JSON.stringify(own.body)}`);
      }
    });

    it('a checked key is remembered for GATEWAY_AUTH_CACHE_MS: a revocation takes effect when that runs out', async () => {
      const { Authenticator } = await import('./auth.js');
      const c = await merchant('Merchant D');
      const remembering = new Authenticator(stack.pool, undefined, 60_000);
      const strict = new Authenticator(stack.pool, undefined, 0);
      assert.equal((await remembering.authenticate(`Bearer ${c.key}`)).kind, 'merchant');
      await stack.pool.query(`UPDATE api_keys SET revoked_at = now() WHERE merchant_id = $1`, [c.id]);
      assert.equal((await remembering.authenticate(`Bearer ${c.key}`)).kind, 'merchant', 'still remembered');
      await assert.rejects(strict.authenticate(`Bearer ${c.key}`), /Invalid API key/);
    });

    it('the admin CLI creates a merchant whose key works, and revokes it', async () => {
      const { execFile } = await import('node:child_process');
      const { promisify } = await import('node:util');
      const run = async (...args: string[]) => JSON.parse((await promisify(execFile)(process.execPath, ['--import', 'tsx', 'gateway/admin.ts', ...args], { env: process.env })).stdout);
      const created = await run('create-merchant', '--name', 'From the CLI');
      assert.deepEqual([created.object, created.name], ['merchant', 'From the CLI']);
      assert.match(created.secret_key, /^sk_[A-Za-z0-9_-]{43}$/);
      assert.equal((await api.get('/v1/payments', created.secret_key)).status, 200);
      assert.deepEqual(await run('revoke-key', '--key', created.secret_key), { revoked: true });
      expectError(await api.get('/v1/payments', created.secret_key), 401, 'invalid_api_key');
    });

    it('the admin CLI rolls a key: a second key of the merchant works beside the first, which is then revoked', async () => {
      const { execFile } = await import('node:child_process');
      const { promisify } = await import('node:util');
      const run = async (...args: string[]) => JSON.parse((await promisify(execFile)(process.execPath, ['--import', 'tsx', 'gateway/admin.ts', ...args], { env: process.env })).stdout);
      const created = await run('create-merchant', '--name', 'Rolling its key');
      const account = await api.post('/v1/accounts', created.secret_key, { currency: 'EUR' });
      assert.equal(account.status, 201, account.text);
      const rolled = await run('create-key', '--merchant', created.id);
      assert.deepEqual([rolled.object, rolled.merchant, rolled.prefix], ['api_key', created.id, rolled.secret_key.slice(0, 7)]);
      assert.match(rolled.secret_key, /^sk_[A-Za-z0-9_-]{43}$/);
      assert.notEqual(rolled.secret_key, created.secret_key);
      // The same merchant: its objects, seen with either key.
      assert.equal((await api.get(`/v1/accounts/${account.body.id}`, rolled.secret_key)).status, 200);
      assert.equal((await api.get(`/v1/accounts/${account.body.id}`, created.secret_key)).status, 200);
      assert.deepEqual(await run('revoke-key', '--key', created.secret_key), { revoked: true });
      expectError(await api.get('/v1/payments', created.secret_key), 401, 'invalid_api_key');
      assert.equal((await api.get(`/v1/accounts/${account.body.id}`, rolled.secret_key)).status, 200, 'the new key outlives the old');
      // No key for a merchant that does not exist, or for no merchant id at all.
      for (const merchant of [randomUUID(), 'not-a-uuid']) {
        const refused = await promisify(execFile)(process.execPath, ['--import', 'tsx', 'gateway/admin.ts', 'create-key', '--merchant', merchant], { env: process.env }).then(
          () => assert.fail(`a key was made for ${merchant}`),
          (error: { code: number; stderr: string }) => error,
        );
        assert.equal(refused.code, 1);
        assert.match(JSON.parse(refused.stderr).error.code, /^(resource_missing|invalid_argument)$/);
      }
    });

    it('stores keys only hashed', async () => {
      const r = await stack.pool.query('SELECT count(*)::int AS n FROM api_keys WHERE key_hash = $1 OR prefix = $1', [keyA]);
      assert.equal(r.rows[0].n, 0);
    });
  });

  describe('accounts and transfers', () => {
    it('creates, reads, repeats; another merchant gets 404 for them', async () => {
      const id = randomUUID();
      const created = await api.post('/v1/accounts', keyA, { id, currency: 'EUR', code: 7, flags: ['history'], metadata: { owner: 'ops' } });
      assert.equal(created.status, 201, created.text);
      assert.deepEqual([created.body.currency, created.body.code, created.body.flags, created.body.metadata], ['EUR', 7, ['history'], { owner: 'ops' }]);
      const again = await api.post('/v1/accounts', keyA, { id, currency: 'EUR', code: 7, flags: ['history'], metadata: { owner: 'ops' } });
      assert.equal(again.status, 200);
      assert.equal(again.body.id, id);
      expectError(await api.post('/v1/accounts', keyA, { id, currency: 'EUR', code: 8 }), 422, 'exists_with_different_fields');
      assert.equal((await api.get(`/v1/accounts/${id}`, keyA)).status, 200);
      expectError(await api.get(`/v1/accounts/${id}`, keyB), 404, 'resource_missing');
      expectError(await api.get(`/v1/accounts/${id}/transfers`, keyB), 404, 'resource_missing');
      expectError(await api.post('/v1/accounts', keyB, { id, currency: 'EUR' }), 422, 'resource_already_exists');
      expectError(await api.get('/v1/accounts/not-a-uuid', keyA), 404, 'resource_missing');
    });

    it('two concurrent creations of one id with different fields: the account the ledger made stays the merchant\'s, whichever request claimed the id', async () => {
      // The first request claims the id, then waits in its ledger call while the second (the id is the merchant's
      // already) creates the account; the first is then refused exists_with_different_fields. Its claim is the
      // merchant's ownership of the account the second made: forgetting it left an account answered 201 that was
      // nobody's (404 to the merchant, and its id taken for good).
      const id = randomUUID();
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      let held!: () => void;
      const reached = new Promise<void>((resolve) => (held = resolve));
      const backends = stack.gateway.backends;
      const original = backends.ledgerCall;
      backends.ledgerCall = <T>(work: Parameters<typeof original<T>>[0], idempotent: boolean): Promise<T> =>
        original.call(
          backends,
          (ledger, options) =>
            work(
              new Proxy(ledger, {
                get(target, property) {
                  if (property === 'createAccounts') {
                    return async (accounts: Parameters<typeof target.createAccounts>[0], callOptions: Parameters<typeof target.createAccounts>[1]) => {
                      if (accounts[0]?.metadata['attempt'] === 'first') {
                        held();
                        await gate;
                      }
                      return target.createAccounts(accounts, callOptions);
                    };
                  }
                  const value = Reflect.get(target, property, target);
                  return typeof value === 'function' ? value.bind(target) : value;
                },
              }),
              options,
            ),
          idempotent,
        ) as Promise<T>;
      try {
        const first = api.post('/v1/accounts', keyA, { id, currency: 'USD', metadata: { attempt: 'first' } });
        await reached;
        const second = await api.post('/v1/accounts', keyA, { id, currency: 'USD', metadata: { attempt: 'second' } });
        assert.equal(second.status, 201, second.text);
        release();
        expectError(await first, 422, 'exists_with_different_fields', 'id');
      } finally {
        backends.ledgerCall = original;
      }
      const got = await api.get(`/v1/accounts/${id}`, keyA);
      assert.equal(got.status, 200, got.text);
      assert.deepEqual(got.body.metadata, { attempt: 'second' });
      const moved = await api.post('/v1/transfers', keyA, { debit_account_id: id, credit_account_id: await account(keyA), amount: 1, currency: 'USD' });
      assert.equal(moved.status, 201, moved.text);
    });

    it("an account the ledger holds that no merchant owns (an operator's, made with the ledger's CLI) cannot be claimed by naming its id", async () => {
      const { newAccount, newTransfer } = await import('../ledger/client.js');
      const { currencyOf } = await import('../lib/currency.js');
      const ledger = currencyOf('USD').ledger;
      // An operator's account, with the defaults of POST /v1/accounts, pays merchant A: A sees its id in the transfer.
      const operator = randomUUID();
      const [made] = await stack.ledger.client.createAccounts([newAccount({ id: operator, ledger, code: 1 })]);
      assert.equal(made?.code, 1, 'the operator account was made (CREATE_ACCOUNT_RESULT_CODE_OK)');
      const credited = await account(keyA);
      const paid = randomUUID();
      await stack.ledger.client.createTransfers([newTransfer({ id: paid, debitAccountId: operator, creditAccountId: credited, amount: 1_000n, ledger, code: 1 })]);
      const seen = await api.get(`/v1/transfers/${paid}`, keyA);
      assert.equal(seen.body.debit_account_id, operator, seen.text);
      const before = await rowCounts();
      expectError(await api.post('/v1/accounts', keyA, { id: operator, currency: 'USD' }), 422, 'resource_already_exists', 'id');
      assert.deepEqual(await rowCounts(), before, 'no ownership row');
      expectError(await api.get(`/v1/accounts/${operator}`, keyA), 404, 'resource_missing');
      expectError(await api.post('/v1/transfers', keyA, { debit_account_id: operator, credit_account_id: credited, amount: 1, currency: 'USD' }), 404, 'resource_missing', 'debit_account_id');
    });

    it('a transfer posts once: the same id again is 200 with the same transfer; a lack of funds is 402 with the ledger code', async () => {
      const { wallet: w, funding } = await wallet(keyA, 1_000);
      const id = randomUUID();
      const body = { id, debit_account_id: w, credit_account_id: funding, amount: 400, currency: 'USD', metadata: { order: '42' } };
      const first = await api.post('/v1/transfers', keyA, body);
      assert.equal(first.status, 201, first.text);
      assert.deepEqual([first.body.status, first.body.amount, first.body.pending_id], ['posted', 400, null]);
      const second = await api.post('/v1/transfers', keyA, body);
      assert.equal(second.status, 200);
      assert.deepEqual(second.body, first.body);
      assert.equal((await balances(keyA, w)).debits_posted, 400);
      expectError(await api.post('/v1/transfers', keyA, { ...body, amount: 401 }), 422, 'exists_with_different_fields', 'id');
      const short = { ...body, id: randomUUID(), amount: 601 };
      expectError(await api.post('/v1/transfers', keyA, short), 402, 'exceeds_credits');
      // The refused id is spent: sent again (even once it could post) it is refused, never applied later.
      const again = await api.post('/v1/transfers', keyA, { ...short, amount: 1 });
      expectError(again, 422, 'id_already_failed', 'id');
      assert.match(again.body.error.message, /new id/);
      expectError(await api.post('/v1/transfers', keyA, { ...body, id: randomUUID(), credit_account_id: w }), 422, 'accounts_must_be_different');
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 400, credits_pending: 0, credits_posted: 1_000 });
      assert.equal((await api.get(`/v1/transfers/${id}`, keyA)).body.id, id);
      expectError(await api.get(`/v1/transfers/${id}`, keyB), 404, 'resource_missing');
      const listed = await api.get(`/v1/accounts/${w}/transfers?limit=1`, keyA);
      assert.deepEqual([listed.body.data.map((t: { id: string }) => t.id), listed.body.has_more], [[id], true]);
      const next = await api.get(`/v1/accounts/${w}/transfers?limit=1&starting_after=${id}`, keyA);
      assert.equal(next.body.data[0].credit_account_id, w, 'the funding transfer, older');
    });

    it('balances beyond 2^53-1 are written as exact JSON integers', async () => {
      const [from, to] = [await account(keyA), await account(keyA)];
      for (let i = 0; i < 3; i++) {
        const r = await api.post('/v1/transfers', keyA, { debit_account_id: from, credit_account_id: to, amount: Number.MAX_SAFE_INTEGER, currency: 'USD' });
        assert.equal(r.status, 201, r.text);
      }
      const total = (3n * BigInt(Number.MAX_SAFE_INTEGER)).toString(); // 27021597764222973: no double holds it
      const read = await api.get(`/v1/accounts/${to}`, keyA);
      assert.equal(read.status, 200, read.text);
      assert.match(read.text, new RegExp(`"credits_posted":${total}[,}]`));
      const balance = await api.get(`/v1/accounts/${from}/balance`, keyA);
      assert.equal(balance.status, 200, balance.text);
      assert.match(balance.text, new RegExp(`"debits_posted":${total}[,}]`));
    });

    it('balance at a time: before the account nothing, at any later time (up to year 9999) what it holds now', async () => {
      const [from, to] = [await account(keyA), await account(keyA, { flags: ['history'] })];
      assert.equal((await api.post('/v1/transfers', keyA, { debit_account_id: from, credit_account_id: to, amount: 250, currency: 'USD' })).status, 201);
      const at = async (time: string) => api.get(`/v1/accounts/${to}/balance?at=${encodeURIComponent(time)}`, keyA);
      assert.equal((await at('2000-01-01T00:00:00Z')).body.credits_posted, 0);
      for (const time of ['2200-01-01T00:00:00Z', '9999-12-31T23:59:59Z']) {
        const later = await at(time);
        assert.equal(later.status, 200, later.text);
        assert.deepEqual([later.body.at, later.body.credits_posted], [new Date(time).toISOString(), 250]);
      }
    });

    it('balance at a time of an account without history is 422 history_not_enabled naming at', async () => {
      const id = await account(keyA);
      expectError(await api.get(`/v1/accounts/${id}/balance?at=2024-01-01T00:00:00Z`, keyA), 422, 'history_not_enabled', 'at');
    });

    it('pending, partial post, void: statuses and balances', async () => {
      const { wallet: w, funding } = await wallet(keyA, 1_000);
      const pending = await api.post('/v1/transfers', keyA, { debit_account_id: w, credit_account_id: funding, amount: 300, currency: 'USD', pending: true, timeout_seconds: 3600 });
      assert.equal(pending.body.status, 'pending');
      assert.deepEqual(await balances(keyA, w), { debits_pending: 300, debits_posted: 0, credits_pending: 0, credits_posted: 1_000 });
      const posted = await api.post(`/v1/transfers/${pending.body.id}/post`, keyA, { amount: 120 });
      assert.equal(posted.status, 201, posted.text);
      assert.equal(posted.body.pending_id, pending.body.id);
      assert.equal((await api.post(`/v1/transfers/${pending.body.id}/post`, keyA, { amount: 120 })).status, 200, 'repeating the post is the same post');
      assert.equal((await api.get(`/v1/transfers/${pending.body.id}`, keyA)).body.status, 'posted');
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 120, credits_pending: 0, credits_posted: 1_000 });
      const other = await api.post('/v1/transfers', keyA, { debit_account_id: w, credit_account_id: funding, amount: 50, currency: 'USD', pending: true });
      expectError(await api.post(`/v1/transfers/${other.body.id}/void`, keyB, {}), 404, 'resource_missing');
      assert.equal((await api.post(`/v1/transfers/${other.body.id}/void`, keyA, {})).status, 201);
      assert.equal((await api.get(`/v1/transfers/${other.body.id}`, keyA)).body.status, 'voided');
    });

    it('batch: per-item results; an item naming another merchant\'s account refuses the batch', async () => {
      const { wallet: w, funding } = await wallet(keyA, 100);
      const ok = { debit_account_id: funding, credit_account_id: w, amount: 10, currency: 'USD' };
      const r = await api.post('/v1/transfers/batch', keyA, { transfers: [ok, { ...ok, debit_account_id: w, credit_account_id: funding, amount: 1_000 }] });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.results.map((x: { status: string; code?: string }) => x.code ?? x.status), ['created', 'exceeds_credits']);
      const foreign = await account(keyB);
      expectError(await api.post('/v1/transfers/batch', keyA, { transfers: [ok, { ...ok, credit_account_id: foreign }] }), 404, 'resource_missing', 'transfers.1.credit_account_id');
    });

    it('batch: when every item is refused, still 200 with each item failed', async () => {
      const { wallet: w, funding } = await wallet(keyA, 100);
      const short = { debit_account_id: w, credit_account_id: funding, amount: 1_000, currency: 'USD' };
      const r = await api.post('/v1/transfers/batch', keyA, { transfers: [short, { ...short, amount: 2_000 }] });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.body.results.map((x: { status: string; code?: string }) => [x.status, x.code]), [['failed', 'exceeds_credits'], ['failed', 'exceeds_credits']]);
    });
  });

  describe('validation: 400 with the parameter, and nothing written', () => {
    it('unknown fields, wrong types, bad amounts, unknown currency, currency mismatch', async () => {
      const { wallet: w, funding } = await wallet(keyA, 100);
      const before = await rowCounts();
      const good = { debit_account_id: funding, credit_account_id: w, amount: 5, currency: 'USD' };
      expectError(await api.post('/v1/transfers', keyA, { ...good, colour: 'red' }), 400, 'parameter_unknown', 'colour');
      for (const amount of [0, -1, 1.5, '10', 2 ** 53, null]) {
        expectError(await api.post('/v1/transfers', keyA, { ...good, amount }, randomUUID()), 400, 'parameter_invalid', 'amount');
      }
      expectError(await api.post('/v1/transfers', keyA, { ...good, currency: 'XXY' }), 400, 'invalid_currency', 'currency');
      expectError(await api.post('/v1/transfers', keyA, { ...good, currency: 'EUR' }), 400, 'currency_mismatch', 'currency');
      expectError(await api.post('/v1/transfers', keyA, { ...good, debit_account_id: 'nope' }), 400, 'parameter_invalid', 'debit_account_id');
      expectError(await api.post('/v1/payments', keyA, { amount: 100, currency: 'USD', capture_method: 'sometimes', source: { account: w } }), 400, 'parameter_invalid');
      expectError(await api.post('/v1/accounts', keyA, { currency: 'USD', flags: ['debits_must_not_exceed_credits', 'credits_must_not_exceed_debits'] }), 400, 'flags_are_mutually_exclusive', 'flags');
      expectError(await api.request('POST', '/v1/transfers', { key: keyA, raw: '{"amount": 1,', headers: { 'content-type': 'application/json' } }), 400, 'body_invalid');
      expectError(await api.request('POST', '/v1/transfers', { key: keyA, raw: 'amount=1', headers: { 'content-type': 'text/plain' } }), 415, 'unsupported_media_type');
      expectError(await api.request('POST', '/v1/transfers', { key: keyA, raw: JSON.stringify({ ...good, metadata: { x: 'y'.repeat(2_000_000) } }), headers: { 'content-type': 'application/json' } }), 413, 'payload_too_large');
      assert.deepEqual(await rowCounts(), before);
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 0, credits_pending: 0, credits_posted: 100 });
    });

    it('a body nested deeper than any the API takes is 400 body_invalid, with or without an Idempotency-Key: not a 500 and an error logged', async () => {
      const before = await rowCounts();
      for (const depth of [100_000, 100]) {
        const raw = `{"currency":"USD","metadata":${'['.repeat(depth)}${']'.repeat(depth)}}`;
        for (const idempotencyKey of [undefined, randomUUID()]) {
          expectError(await api.request('POST', '/v1/accounts', { key: keyA, raw, idempotencyKey, headers: { 'content-type': 'application/json' } }), 400, 'body_invalid');
        }
      }
      // Brackets inside strings are text, not nesting.
      const r = await api.post('/v1/accounts', keyA, { currency: 'USD', metadata: { note: '[['.repeat(200) } });
      assert.equal(r.status, 201, r.text);
      assert.equal((await rowCounts()).accounts, before.accounts + 1);
    });

    it('an amount written with a fraction a JSON double rounds away (1.0000000000000001, 9007199254740990.6) is not an integer: 400', async () => {
      const [from, to] = [await account(keyA), await account(keyA)];
      const before = await businessTableCounts(stack.pool);
      for (const amount of ['1.0000000000000001', '9007199254740990.6', '4503599627370495.5']) {
        const raw = `{"debit_account_id":"${from}","credit_account_id":"${to}","amount":${amount},"currency":"USD","metadata":{"note":"1.5"}}`;
        expectError(await api.request('POST', '/v1/transfers', { key: keyA, raw, headers: { 'content-type': 'application/json' } }), 400, 'parameter_invalid', 'amount');
      }
      assert.deepEqual(await businessTableCounts(stack.pool), before);
      // Integers written otherwise are still integers.
      for (const amount of ['100.0', '1e2', '1.00E+2']) {
        const raw = `{"debit_account_id":"${from}","credit_account_id":"${to}","amount":${amount},"currency":"USD"}`;
        const r = await api.request('POST', '/v1/transfers', { key: keyA, raw, headers: { 'content-type': 'application/json' } });
        assert.deepEqual([r.status, r.body.amount], [201, 100], r.text);
      }
    });

    it('an account the ledger refuses as invalid (nil id, bad metadata) is 400 and leaves no ownership row behind', async () => {
      const before = await businessTableCounts(stack.pool);
      expectError(await api.post('/v1/accounts', keyA, { id: '00000000-0000-0000-0000-000000000000', currency: 'USD' }), 400, 'invalid_argument');
      expectError(await api.post('/v1/accounts', keyA, { currency: 'USD', metadata: { note: 'a\u0001' } }), 400, 'invalid_argument');
      assert.deepEqual(await businessTableCounts(stack.pool), before);
    });

    it('a field the ledger refuses is named as the REST API names it, not by its place in the ledger call', async () => {
      const [from, to] = [await account(keyA), await account(keyA)];
      const before = await businessTableCounts(stack.pool);
      expectError(await api.post('/v1/accounts', keyA, { id: '00000000-0000-0000-0000-000000000000', currency: 'USD' }), 400, 'invalid_argument', 'id');
      expectError(await api.post('/v1/accounts', keyA, { currency: 'USD', metadata: { note: 'a\u0001' } }), 400, 'invalid_argument', 'metadata.note');
      const transfer = { debit_account_id: from, credit_account_id: to, amount: 1, currency: 'USD' };
      expectError(await api.post('/v1/transfers', keyA, { ...transfer, id: '00000000-0000-0000-0000-000000000000' }), 400, 'invalid_argument', 'id');
      const refused = await api.post('/v1/transfers', keyA, { ...transfer, metadata: { note: 'a\u0001' } });
      expectError(refused, 400, 'invalid_argument', 'metadata.note');
      assert.match(refused.body.error.message, /^metadata\.note: /);
      // A batch item keeps its place in the batch: that is its name in the request too.
      expectError(await api.post('/v1/transfers/batch', keyA, { transfers: [transfer, { ...transfer, metadata: { note: 'a\u0001' } }] }), 400, 'invalid_argument', 'transfers.1.metadata.note');
      assert.deepEqual(await businessTableCounts(stack.pool), before);
    });

    it('an account transfers cursor the ledger refuses (nil UUID) is answered as one that names no transfer', async () => {
      const id = await account(keyA);
      for (const cursor of ['starting_after', 'ending_before']) {
        const nil = await api.get(`/v1/accounts/${id}/transfers?${cursor}=00000000-0000-0000-0000-000000000000`, keyA);
        const missing = await api.get(`/v1/accounts/${id}/transfers?${cursor}=${randomUUID()}`, keyA);
        expectError(nil, 400, missing.body.error.code, cursor);
        assert.deepEqual(nil.body, missing.body);
      }
    });

    it('the nil UUID in a path names nothing: 404 resource_missing, as an id that does not exist', async () => {
      const nil = '00000000-0000-0000-0000-000000000000';
      for (const path of [`/v1/payments/${nil}`, `/v1/refunds/${nil}`, `/v1/transfers/${nil}`, `/v1/accounts/${nil}`, `/v1/settlements/${nil}`, `/v1/settlements/${nil}/report.csv`]) {
        expectError(await api.get(path, keyA), 404, 'resource_missing', 'id');
      }
      for (const path of [`/v1/payments/${nil}/capture`, `/v1/payments/${nil}/cancel`, `/v1/transfers/${nil}/post`, `/v1/transfers/${nil}/void`]) {
        expectError(await api.post(path, keyA, {}), 404, 'resource_missing', 'id');
      }
    });

    it('every list answers a cursor that names nothing with 400 resource_missing and the cursor as param, never an empty page', async () => {
      const id = await account(keyA);
      const lists = [
        ['/v1/payments', ['starting_after', 'ending_before']],
        [`/v1/accounts/${id}/transfers`, ['starting_after', 'ending_before']],
        ['/v1/settlements', ['starting_after']],
      ] as const;
      for (const [path, cursors] of lists) {
        for (const cursor of cursors) expectError(await api.get(`${path}?${cursor}=${randomUUID()}`, keyA), 400, 'resource_missing', cursor);
      }
    });

    it('a settlements cursor the service refuses (nil UUID) is answered as one that names no settlement', async () => {
      const nil = await api.get('/v1/settlements?starting_after=00000000-0000-0000-0000-000000000000', keyA);
      const missing = await api.get(`/v1/settlements?starting_after=${randomUUID()}`, keyA);
      expectError(missing, 400, 'resource_missing', 'starting_after');
      assert.deepEqual([nil.status, nil.body], [missing.status, missing.body]);
    });

    it('a URL Fastify refuses before routing (bad percent-encoding, an id past 100 characters) is answered with the error object', async () => {
      expectError(await api.get('/v1/payments/%E0%A4%A', keyA), 404, 'resource_missing');
      // As an id of 65 to 100 characters is.
      expectError(await api.get(`/v1/payments/${'a'.repeat(70)}`, keyA), 400, 'parameter_invalid', 'id');
      expectError(await api.get(`/v1/payments/${'a'.repeat(101)}`, keyA), 400, 'parameter_invalid', 'id');
    });

    it('an id in URN form (urn:uuid:...) is 400 with its parameter, as any id that is not a plain UUID', async () => {
      const [from, to] = [await account(keyA), await account(keyA)];
      const before = await businessTableCounts(stack.pool);
      expectError(await api.post('/v1/accounts', keyA, { id: `urn:uuid:${randomUUID()}`, currency: 'USD' }), 400, 'parameter_invalid', 'id');
      expectError(await api.post('/v1/transfers', keyA, { debit_account_id: `urn:uuid:${from}`, credit_account_id: to, amount: 1, currency: 'USD' }), 400, 'parameter_invalid', 'debit_account_id');
      expectError(await api.get(`/v1/accounts/${from}/transfers?starting_after=urn:uuid:${randomUUID()}`, keyA), 400, 'parameter_invalid', 'starting_after');
      assert.deepEqual(await businessTableCounts(stack.pool), before);
    });
  });

  describe('payments and refunds', () => {
    it('authorize -> partial capture -> two partial refunds: every balance exact; over-refund refused; capture after cancel refused', async () => {
      const { wallet: w } = await wallet(keyA, 10_000);
      const p = await api.post('/v1/payments', keyA, { amount: 5_000, currency: 'USD', source: { account: w }, capture_method: 'manual' }, randomUUID());
      assert.equal(p.status, 201, p.text);
      assert.equal(p.body.status, 'requires_capture');
      const captured = await api.post(`/v1/payments/${p.body.id}/capture`, keyA, { amount: 4_000 });
      assert.deepEqual([captured.body.status, captured.body.amount_captured, captured.body.fee], ['succeeded', 4_000, 100]);
      const balance = captured.body.destination_account_id;
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 4_000, credits_pending: 0, credits_posted: 10_000 });
      assert.deepEqual(await balances(keyA, balance), { debits_pending: 0, debits_posted: 100, credits_pending: 0, credits_posted: 4_000 });
      const r1 = await api.post('/v1/refunds', keyA, { payment: p.body.id, amount: 1_500 }, randomUUID());
      const r2 = await api.post('/v1/refunds', keyA, { payment: p.body.id, amount: 1_000 }, randomUUID());
      assert.deepEqual([r1.status, r2.status, r1.body.status], [201, 201, 'succeeded']);
      expectError(await api.post('/v1/refunds', keyA, { payment: p.body.id, amount: 1_501 }), 422, 'refund_exceeds_captured', 'amount');
      const after = await api.get(`/v1/payments/${p.body.id}`, keyA);
      assert.deepEqual([after.body.status, after.body.amount_refunded], ['partially_refunded', 2_500]);
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 4_000, credits_pending: 0, credits_posted: 12_500 });
      assert.deepEqual(await balances(keyA, balance), { debits_pending: 0, debits_posted: 2_600, credits_pending: 0, credits_posted: 4_000 });
      assert.equal((await api.get(`/v1/refunds/${r1.body.id}`, keyA)).body.amount, 1_500);
      expectError(await api.get(`/v1/refunds/${r1.body.id}`, keyB), 404, 'resource_missing');
      expectError(await api.get(`/v1/payments/${p.body.id}`, keyB), 404, 'resource_missing');
      expectError(await api.post('/v1/refunds', keyB, { payment: p.body.id }), 404, 'resource_missing', 'payment');

      const q = await api.post('/v1/payments', keyA, { amount: 700, currency: 'USD', source: { account: w }, capture_method: 'manual' });
      // No body at all is "no parameters".
      assert.equal((await api.request('POST', `/v1/payments/${q.body.id}/cancel`, { key: keyA })).body.status, 'canceled');
      expectError(await api.post(`/v1/payments/${q.body.id}/capture`, keyA, {}), 422, 'payment_not_capturable');
      expectError(await api.post(`/v1/payments/${q.body.id}/capture`, keyB, {}), 404, 'resource_missing');
    });

    it('every captured amount pays the fee rate rounded up: small payments (1, 39 at 250 bps) are no fee-free path', async () => {
      const card = () => ({ token: 'tok_test', fingerprint: `fp_${randomUUID()}`, country: 'US' });
      // Each charge below 40 at 2.5% took no fee (rounded down to 0): a 10,000 order split into 257 charges of 39
      // and one of 1 paid nothing, where in one charge it pays 250.
      const fees: number[] = [];
      for (const amount of [1, 39, 40, 41, 10_000]) {
        const p = await api.post('/v1/payments', keyA, { amount, currency: 'USD', source: { card: card() }, capture_method: 'automatic' }, randomUUID());
        assert.equal(p.status, 201, p.text);
        fees.push(p.body.fee);
      }
      assert.deepEqual(fees, [1, 1, 1, 2, 250]);
      // A partial capture likewise.
      const manual = await api.post('/v1/payments', keyA, { amount: 10_000, currency: 'USD', source: { card: card() }, capture_method: 'manual' }, randomUUID());
      assert.equal(manual.status, 201, manual.text);
      const captured = await api.post(`/v1/payments/${manual.body.id}/capture`, keyA, { amount: 39 });
      assert.deepEqual([captured.status, captured.body.amount_captured, captured.body.fee], [200, 39, 1]);
    });

    it('a refund naming a payment id the payment service refuses names the body\'s payment parameter', async () => {
      const refused = await api.post('/v1/refunds', keyA, { payment: '00000000-0000-0000-0000-000000000000' });
      expectError(refused, 400, 'invalid_argument', 'payment');
    });

    it('concurrent identical captures, and cancels, of one payment all answer the one outcome (none 422 payment_step_in_progress, kept for its key)', async () => {
      for (let round = 0; round < 3; round++) {
        const card = { token: 'tok_1', fingerprint: `fp_${randomUUID()}`, country: 'FR' };
        const manual = { amount: 1_000, currency: 'USD', source: { card }, capture_method: 'manual' };
        const [toCapture, toCancel] = [await api.post('/v1/payments', keyA, manual), await api.post('/v1/payments', keyA, manual)];
        const captures = await Promise.all(Array.from({ length: 5 }, () => api.post(`/v1/payments/${toCapture.body.id}/capture`, keyA, {}, randomUUID())));
        assert.deepEqual(new Set(captures.map((r) => `${r.status} ${r.body.status ?? r.body.error.code}`)), new Set(['200 succeeded']));
        const cancels = await Promise.all(Array.from({ length: 5 }, () => api.post(`/v1/payments/${toCancel.body.id}/cancel`, keyA, {}, randomUUID())));
        assert.deepEqual(new Set(cancels.map((r) => `${r.status} ${r.body.status ?? r.body.error.code}`)), new Set(['200 canceled']));
      }
    });

    it('a destination refusing the credit (credits_must_not_exceed_debits) declines the payment; nothing stays processing', async () => {
      const dest = await account(keyA, { flags: ['credits_must_not_exceed_debits'] });
      for (const capture_method of ['automatic', 'manual']) {
        const body = { amount: 1_000, currency: 'USD', source: { card: { token: 'tok_1', fingerprint: `fp_${randomUUID()}`, country: 'FR' } }, destination_account_id: dest, capture_method };
        const r = await api.post('/v1/payments', keyA, body, randomUUID());
        expectError(r, 402, 'destination_account_refused');
        assert.equal(r.body.error.payment.status, 'declined');
        const steps = await stack.pool.query(`SELECT status, failure_code FROM payment_operations WHERE payment_id = $1`, [r.body.error.payment.id]);
        assert.deepEqual(steps.rows, [{ status: 'failed', failure_code: 'destination_account_refused' }]);
      }
      assert.deepEqual(await balances(keyA, dest), { debits_pending: 0, debits_posted: 0, credits_pending: 0, credits_posted: 0 });
    });

    it('a payment refused before authorization (404 destination, accounts_must_be_different) writes nothing, not even the accounts made on first use', async () => {
      // Currencies nobody has paid in yet in this database: the platform's accounts for them do not exist.
      const used = new Set((await stack.pool.query('SELECT DISTINCT currency FROM merchant_accounts')).rows.map((r) => r.currency as string));
      // Any national currency (not the X.. funds, metals and test codes): enough for many runs on one database.
      const [foreignCurrency, walletCurrency] = cc.codes().filter((c) => !c.startsWith('X') && !used.has(c));
      assert.ok(walletCurrency, 'every currency has been paid in on this database: run on a fresh one (make test migrates it --fresh)');
      const theirs = await account(keyB, { currency: foreignCurrency });
      const w = await account(keyA, { currency: walletCurrency, flags: ['debits_must_not_exceed_credits'] });
      const before = await businessTableCounts(stack.pool);
      const card = { token: 'tok_1', fingerprint: `fp_${randomUUID()}`, country: 'FR' };
      const toForeign = { amount: 1_000, currency: foreignCurrency, source: { card }, destination_account_id: theirs, capture_method: 'automatic' };
      expectError(await api.post('/v1/payments', keyA, toForeign, randomUUID()), 404, 'resource_missing', 'destination_account_id');
      const toItself = { amount: 1_000, currency: walletCurrency, source: { account: w }, destination_account_id: w, capture_method: 'automatic' };
      expectError(await api.post('/v1/payments', keyA, toItself, randomUUID()), 400, 'accounts_must_be_different', 'destination_account_id');
      assert.deepEqual(await businessTableCounts(stack.pool), before, 'a refused payment wrote ledger accounts');
    });

    it('a refund the ledger refuses (destination drained) is 402 exceeds_credits, recorded as failed, and a repeat answers the same', async () => {
      const dest = await account(keyA, { flags: ['debits_must_not_exceed_credits'] });
      const elsewhere = await account(keyA);
      const card = { token: 'tok_1', fingerprint: `fp_${randomUUID()}`, country: 'FR' };
      const p = await api.post('/v1/payments', keyA, { amount: 1_000, currency: 'USD', source: { card }, destination_account_id: dest, capture_method: 'automatic' }, randomUUID());
      assert.equal(p.status, 201, p.text);
      const drain = await api.post('/v1/transfers', keyA, { debit_account_id: dest, credit_account_id: elsewhere, amount: 1_000 - p.body.fee, currency: 'USD' });
      assert.equal(drain.status, 201, drain.text);
      const key = randomUUID();
      const refused = await api.post('/v1/refunds', keyA, { payment: p.body.id, amount: 500 }, key);
      expectError(refused, 402, 'exceeds_credits');
      // Recorded as failed, as a declined payment is (what the 4xx reports): nothing else is written.
      const before = await businessTableCounts(stack.pool);
      // Past the key's TTL the same refund (same key, same id) is answered from its record: the same answer.
      await stack.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1`, [key]);
      const repeated = await api.post('/v1/refunds', keyA, { payment: p.body.id, amount: 500 }, key);
      assert.equal(repeated.headers.get('idempotent-replayed'), null);
      assert.deepEqual([repeated.status, repeated.body.error.code], [refused.status, refused.body.error.code]);
      assert.deepEqual(await businessTableCounts(stack.pool), before);
      assert.equal((await api.get(`/v1/payments/${p.body.id}`, keyA)).body.amount_refunded, 0);
      // The refused refund holds no part of the refundable amount: once the money is back, it can all be refunded.
      assert.equal((await api.post('/v1/transfers', keyA, { debit_account_id: elsewhere, credit_account_id: dest, amount: 1_000, currency: 'USD' })).status, 201);
      assert.equal((await api.post('/v1/refunds', keyA, { payment: p.body.id }, randomUUID())).status, 201);
      assert.equal((await api.get(`/v1/payments/${p.body.id}`, keyA)).body.amount_refunded, 1_000);
    });

    it('a declined payment is 402 card_error with the payment; a card payment never shows its token', async () => {
      const { wallet: w } = await wallet(keyA, 10);
      const declined = await api.post('/v1/payments', keyA, { amount: 11, currency: 'USD', source: { account: w }, capture_method: 'automatic' });
      expectError(declined, 402, 'insufficient_funds');
      assert.equal(declined.body.error.type, 'card_error');
      assert.equal(declined.body.error.payment.status, 'declined');
      const card = await api.post('/v1/payments', keyA, { amount: 900, currency: 'USD', source: { card: { token: 'tok_secret_4242', fingerprint: 'fp_9', country: 'US' } }, capture_method: 'automatic', ip_country: 'US' });
      assert.equal(card.status, 201, card.text);
      assert.ok(!card.text.includes('tok_secret'), 'the token is not answered');
      assert.deepEqual(card.body.source, { type: 'card', card: { fingerprint: 'fp_9', country: 'US', type: null } });
      const list = await api.get('/v1/payments?limit=2', keyA);
      assert.deepEqual(list.body.data.map((x: { id: string }) => x.id)[0], card.body.id);
      assert.equal((await api.get('/v1/payments', keyB)).body.data.some((x: { id: string }) => x.id === card.body.id), false);
    });
  });

  describe('Idempotency-Key', () => {
    it('a retry that reaches the same route by a percent-encoded path (/%761/payments) is the same request: replayed, not 422', async () => {
      const { wallet: w } = await wallet(keyA, 1_000);
      const key = randomUUID();
      const body = { amount: 100, currency: 'USD', source: { account: w }, capture_method: 'automatic' };
      const first = await api.post('/v1/payments', keyA, body, key);
      assert.equal(first.status, 201, first.text);
      // Not through `api`: it checks each path against /openapi.json, where this spelling is not.
      const retry = await fetch(`${api.url}/%761/payments`, { method: 'POST', headers: { authorization: `Bearer ${keyA}`, 'content-type': 'application/json', 'idempotency-key': key }, body: JSON.stringify(body) });
      assert.equal(retry.status, 201);
      assert.equal(await retry.text(), first.text);
      assert.equal(retry.headers.get('idempotent-replayed'), 'true');
    });

    it('no answer may be kept by a cache or sniffed as another type: first answers, errors and replays alike', async () => {
      const { wallet: w } = await wallet(keyA, 1_000);
      const key = randomUUID();
      const body = { amount: 100, currency: 'USD', source: { account: w }, capture_method: 'automatic' };
      const answers = [
        await api.post('/v1/payments', keyA, body, key),
        await api.post('/v1/payments', keyA, body, key),
        await api.get(`/v1/accounts/${w}`, keyA),
        await api.get('/v1/payments', `sk_${randomUUID()}`),
        await api.get(`/v1/payments/${randomUUID()}`, keyA),
        await api.post('/v1/merchants', ADMIN_KEY, { name: 'Cache-Control check' }),
      ];
      for (const r of answers) {
        assert.equal(r.headers.get('cache-control'), 'no-store', `${r.status} ${r.text}`);
        assert.equal(r.headers.get('x-content-type-options'), 'nosniff', `${r.status} ${r.text}`);
      }
    });

    it('replays the first answer byte for byte, also an error, and also after a gateway restart; other parameters are 422', async () => {
      const { wallet: w } = await wallet(keyA, 1_000);
      const key = randomUUID();
      const body = { amount: 250, currency: 'USD', source: { account: w }, capture_method: 'automatic' };
      const first = await api.post('/v1/payments', keyA, body, key);
      assert.equal(first.status, 201);
      const replay = await api.post('/v1/payments', keyA, body, key);
      assert.equal(replay.status, 201);
      assert.equal(replay.text, first.text);
      assert.equal(replay.headers.get('idempotent-replayed'), 'true');
      assert.equal(first.headers.get('idempotent-replayed'), null);
      expectError(await api.post('/v1/payments', keyA, { ...body, amount: 251 }, key), 422, 'idempotency_key_reused');
      // Another merchant's key space is its own.
      expectError(await api.post('/v1/payments', keyB, body, key), 404, 'resource_missing', 'source.account');

      const restarted = await startTestGateway(stack.ledger.app.address);
      try {
        const again = await (await Api.connect(restarted.url)).post('/v1/payments', keyA, body, key);
        assert.equal(again.text, first.text);
        assert.equal(again.headers.get('idempotent-replayed'), 'true');
      } finally {
        await restarted.close();
      }
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 250, credits_pending: 0, credits_posted: 1_000 });

      const errorKey = randomUUID();
      const refused = await api.post('/v1/payments', keyA, { ...body, amount: 5_000 }, errorKey);
      assert.equal(refused.status, 402);
      assert.equal((await api.post('/v1/payments', keyA, { ...body, amount: 5_000 }, errorKey)).text, refused.text);
    });

    it('shutdown stores the answer of a request whose client went away before the pool closes (a retry replays it)', async () => {
      // The key's record and its answer are each held back 300 ms, so that the client is gone before the
      // answer exists and the answer is still being written when shutdown starts.
      const slowed = new Set(['gw-idem-insert-many', 'gw-idem-done-many']);
      let keyRecordStarted!: () => void;
      const recording = new Promise<void>((resolve) => (keyRecordStarted = resolve));
      const wrapPool = (pool: Pool): Pool =>
        new Proxy(pool, {
          get(target, property) {
            if (property !== 'query') return Reflect.get(target, property, target);
            return async (query: { name?: string }, ...rest: unknown[]) => {
              if (query?.name === 'gw-idem-insert-many') keyRecordStarted();
              if (slowed.has(query?.name ?? '')) await new Promise((resolve) => setTimeout(resolve, 300));
              return (target.query as (...args: unknown[]) => Promise<unknown>)(query, ...rest);
            };
          },
        });
      const gateway = await startTestGateway(stack.ledger.app.address, {}, { wrapPool });
      const key = randomUUID();
      const body = JSON.stringify({ currency: 'USD' });
      const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.write(
        `POST /v1/accounts HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ${keyA}\r\nIdempotency-Key: ${key}\r\n` +
          `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      await recording; // the request is in its handler's hooks, waiting for its key record
      socket.destroy();
      await gateway.close();
      const stored = await stack.pool.query('SELECT state, status FROM idempotency_keys WHERE key = $1', [key]);
      assert.deepEqual(stored.rows, [{ state: 'done', status: 201 }], 'the answer was stored before the pool closed');
      const replay = await api.post('/v1/accounts', keyA, { currency: 'USD' }, key);
      assert.equal(replay.status, 201);
      assert.equal(replay.headers.get('idempotent-replayed'), 'true');
    });

    it('a retry after a 504 whose creation committed creates nothing twice: transfers, batch items and accounts without an id', async () => {
      /** The ledger commits the next `method` call through the gateway, but its answer is lost (a deadline). */
      const loseNextAnswer = (method: 'createTransfers' | 'createAccounts') => {
        const clients = (stack.gateway.backends as unknown as { ledgers: LedgerClient[] }).ledgers;
        const originals = clients.map((client) => client[method]);
        const restore = () => clients.forEach((client, i) => Object.assign(client, { [method]: originals[i] }));
        clients.forEach((client, i) => {
          const original = originals[i]!.bind(client) as (events: never[]) => Promise<unknown>;
          Object.assign(client, {
            [method]: async (events: never[]) => {
              await original(events);
              restore();
              throw new AppError('deadline_exceeded', 'deadline_exceeded', 'the ledger did not answer before the deadline');
            },
          });
        });
      };
      const from = await account(keyA);
      const to = await account(keyA);
      const transfer = { debit_account_id: from, credit_account_id: to, amount: 700, currency: 'USD' };
      const key = randomUUID();
      loseNextAnswer('createTransfers');
      expectError(await api.post('/v1/transfers', keyA, transfer, key), 504, 'deadline_exceeded');
      const retry = await api.post('/v1/transfers', keyA, transfer, key);
      assert.equal(retry.status, 200, `the ledger has it already: ${retry.text}`);
      assert.equal((await balances(keyA, to)).credits_posted, 700, 'posted once');
      // The same key with the same parameters after the TTL is still that transfer, never a second posting.
      await stack.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1`, [key]);
      assert.equal((await api.post('/v1/transfers', keyA, transfer, key)).body.id, retry.body.id);
      // Without a key every request is a new transfer.
      assert.equal((await api.post('/v1/transfers', keyA, transfer)).status, 201);
      assert.equal((await balances(keyA, to)).credits_posted, 1_400);

      const batchKey = randomUUID();
      const batch = { transfers: [transfer, { ...transfer, amount: 5 }] };
      loseNextAnswer('createTransfers');
      expectError(await api.post('/v1/transfers/batch', keyA, batch, batchKey), 504, 'deadline_exceeded');
      const batchRetry = await api.post('/v1/transfers/batch', keyA, batch, batchKey);
      assert.deepEqual(batchRetry.body.results.map((r: { status: string }) => r.status), ['exists', 'exists'], batchRetry.text);
      assert.equal((await balances(keyA, to)).credits_posted, 2_105);

      const accountKey = randomUUID();
      loseNextAnswer('createAccounts');
      const accountBody = { currency: 'USD', metadata: { retried: accountKey } };
      expectError(await api.post('/v1/accounts', keyA, accountBody, accountKey), 504, 'deadline_exceeded');
      const accountRetry = await api.post('/v1/accounts', keyA, accountBody, accountKey);
      assert.equal(accountRetry.status, 200, accountRetry.text);
      const owned = await stack.pool.query(`SELECT count(*)::int AS n FROM merchant_accounts WHERE account_id = $1`, [accountRetry.body.id]);
      assert.equal(owned.rows[0].n, 1);
      const ledgerAccounts = await stack.pool.query(`SELECT count(*)::int AS n FROM accounts WHERE metadata->>'retried' = $1`, [accountKey]);
      assert.equal(ledgerAccounts.rows[0].n, 1, 'one account for one request');
    });

    it('a payment retried after a 504 whose creation committed, with the same key but another destination, is 422: not the first payment answered as this one', async () => {
      const backends = stack.gateway.backends as unknown as { createPayment: (...args: unknown[]) => Promise<unknown> };
      const original = backends.createPayment;
      backends.createPayment = async (...args: unknown[]) => {
        await original.apply(stack.gateway.backends, args);
        backends.createPayment = original;
        throw new AppError('deadline_exceeded', 'deadline_exceeded', 'the ledger did not answer before the deadline');
      };
      const [first, second] = [await account(keyA), await account(keyA)];
      const card = { token: 'tok_1', fingerprint: `fp_${randomUUID()}`, country: 'FR' };
      const body = { amount: 1_000, currency: 'USD', source: { card }, destination_account_id: first, capture_method: 'automatic' };
      const key = randomUUID();
      expectError(await api.post('/v1/payments', keyA, body, key), 504, 'deadline_exceeded');
      expectError(await api.post('/v1/payments', keyA, { ...body, destination_account_id: second }, key), 422, 'idempotency_key_reused', 'Idempotency-Key');
      assert.equal((await balances(keyA, first)).credits_posted, 1_000, 'the one payment, where it was asked to go first');
      assert.equal((await balances(keyA, second)).credits_posted, 0);
    });

    it('a keyed transfer refused for lack of funds stays refused: repeated after the funds arrived and after the TTL, 422 id_already_failed', async () => {
      const { wallet: w, funding } = await wallet(keyA, 100);
      const to = await account(keyA);
      const short = { debit_account_id: w, credit_account_id: to, amount: 150, currency: 'USD' };
      const key = randomUUID();
      expectError(await api.post('/v1/transfers', keyA, short, key), 402, 'exceeds_credits');
      assert.equal((await api.post('/v1/transfers', keyA, { debit_account_id: funding, credit_account_id: w, amount: 100, currency: 'USD' })).status, 201);
      const replay = await api.post('/v1/transfers', keyA, short, key);
      assert.deepEqual([replay.status, replay.headers.get('idempotent-replayed')], [402, 'true'], 'within the TTL the first answer is replayed');
      await stack.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1`, [key]);
      expectError(await api.post('/v1/transfers', keyA, short, key), 422, 'id_already_failed', 'id');
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 0, credits_pending: 0, credits_posted: 200 });
    });

    it('a 400 found by the handler (unknown currency, currency mismatch) records no key either: the corrected request runs with it', async () => {
      const [from, to] = [await account(keyA), await account(keyA)];
      const key = randomUUID();
      const keys = async () => (await stack.pool.query('SELECT count(*)::int AS n FROM idempotency_keys WHERE key = $1', [key])).rows[0].n;
      const good = { debit_account_id: from, credit_account_id: to, amount: 5, currency: 'USD' };
      expectError(await api.post('/v1/transfers', keyA, { ...good, currency: 'XXY' }, key), 400, 'invalid_currency', 'currency');
      expectError(await api.post('/v1/transfers', keyA, { ...good, currency: 'EUR' }, key), 400, 'currency_mismatch', 'currency');
      assert.equal(await keys(), 0, 'nothing is written on a 400');
      const fixed = await api.post('/v1/transfers', keyA, good, key);
      assert.equal(fixed.status, 201, fixed.text);
    });

    it('a request while the first with the same key is in flight is 409', async () => {
      const merchantId = (await stack.pool.query('SELECT merchant_id FROM api_keys WHERE key_hash = encode(sha256($1::bytea), $2)', [keyA, 'hex'])).rows[0].merchant_id;
      const key = randomUUID();
      const body = { name: 'n' };
      // The first request's gateway holds the key (its row is in flight, freshly locked).
      const { requestFingerprint } = await import('./idempotency.js');
      await stack.pool.query(`INSERT INTO idempotency_keys (merchant_id, key, fingerprint, state, locked_at) VALUES ($1, $2, $3, 'in_flight', now())`, [
        merchantId,
        key,
        requestFingerprint('POST', '/v1/accounts', { currency: 'USD', metadata: body }),
      ]);
      expectError(await api.post('/v1/accounts', keyA, { currency: 'USD', metadata: body }, key), 409, 'idempotency_key_in_use');
      // A lock older than the timeout belonged to a gateway that died: the retry takes the key over.
      await stack.pool.query(`UPDATE idempotency_keys SET locked_at = now() - interval '5 minutes' WHERE key = $1`, [key]);
      assert.equal((await api.post('/v1/accounts', keyA, { currency: 'USD', metadata: body }, key)).status, 201);
    });

    it('a request whose stale key was taken over neither releases nor completes the key its successor holds', async () => {
      const merchantId = (await stack.pool.query('SELECT merchant_id FROM api_keys WHERE key_hash = encode(sha256($1::bytea), $2)', [keyA, 'hex'])).rows[0].merchant_id;
      const { IdempotencyStore } = await import('./idempotency.js');
      const store = new IdempotencyStore(stack.pool, 24, 60_000);
      const [key, fingerprint] = [randomUUID(), 'f'.repeat(64)];
      const first = await store.begin(merchantId, key, fingerprint);
      assert.equal(first.kind, 'proceed');
      // The first request's gateway looked dead (its lock went stale): a retry takes the key over.
      await stack.pool.query(`UPDATE idempotency_keys SET locked_at = now() - interval '5 minutes' WHERE key = $1`, [key]);
      const second = await store.begin(merchantId, key, fingerprint);
      assert.equal(second.kind, 'proceed');
      if (first.kind !== 'proceed' || second.kind !== 'proceed') return;
      assert.notEqual(second.lockToken, first.lockToken);
      // The first was only slow: its late 5xx must not free the key while the second runs...
      await store.release({ scope: merchantId, key, lockToken: first.lockToken });
      await assert.rejects(store.begin(merchantId, key, fingerprint), (e: { code?: string }) => e.code === 'idempotency_key_in_use');
      // ...and its late answer is not the key's: the second's is.
      await store.complete({ scope: merchantId, key, lockToken: first.lockToken }, 201, '{"by":"first"}');
      await assert.rejects(store.begin(merchantId, key, fingerprint), (e: { code?: string }) => e.code === 'idempotency_key_in_use');
      await store.complete({ scope: merchantId, key, lockToken: second.lockToken }, 201, '{"by":"second"}');
      assert.deepEqual(await store.begin(merchantId, key, fingerprint), { kind: 'replay', status: 201, body: '{"by":"second"}' });
    });

    it('a key past its TTL starts afresh, and the cleanup deletes expired keys', async () => {
      const { IdempotencyStore } = await import('./idempotency.js');
      const store = new IdempotencyStore(stack.pool, 24);
      const key = randomUUID();
      const first = await api.post('/v1/accounts', keyA, { currency: 'USD' }, key);
      assert.equal(first.status, 201);
      await stack.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1`, [key]);
      const fresh = await api.post('/v1/accounts', keyA, { currency: 'EUR' }, key);
      assert.equal(fresh.status, 201, 'an expired key is a new request, even with other parameters');
      assert.notEqual(fresh.body.id, first.body.id);
      await stack.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1`, [key]);
      assert.ok((await store.deleteExpired()) >= 1);
      assert.equal((await stack.pool.query('SELECT count(*)::int AS n FROM idempotency_keys WHERE key = $1', [key])).rows[0].n, 0);

      // A backlog larger than one statement's rows is cleared in one run, not a statement's worth per run.
      const keys = [randomUUID(), randomUUID(), randomUUID()];
      for (const k of keys) assert.equal((await api.post('/v1/accounts', keyA, { currency: 'USD' }, k)).status, 201);
      await stack.pool.query(`UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = ANY($1)`, [keys]);
      assert.ok((await store.deleteExpired(2)) >= 3);
      assert.equal((await stack.pool.query('SELECT count(*)::int AS n FROM idempotency_keys WHERE key = ANY($1)', [keys])).rows[0].n, 0);
    });

    it('100 concurrent identical payments with one key make one payment', async () => {
      const { wallet: w } = await wallet(keyA, 100_000);
      const key = randomUUID();
      const body = { amount: 333, currency: 'USD', source: { account: w }, capture_method: 'automatic' };
      const answers = await Promise.all(Array.from({ length: 100 }, () => api.post('/v1/payments', keyA, body, key)));
      const statuses = new Set(answers.map((a) => a.status));
      assert.ok([...statuses].every((s) => s === 201 || s === 409), [...statuses].join(','));
      const ids = new Set(answers.filter((a) => a.status === 201).map((a) => a.body.id));
      assert.equal(ids.size, 1);
      assert.deepEqual(await balances(keyA, w), { debits_pending: 0, debits_posted: 333, credits_pending: 0, credits_posted: 100_000 });
      const r = await stack.pool.query('SELECT count(*)::int AS n FROM payments WHERE source_account_id = $1', [w]);
      assert.equal(r.rows[0].n, 1);
    });
  });

  describe('limits and unavailability', () => {
    it('429 with Retry-After past the burst', async () => {
      const tight = await startTestGateway(stack.ledger.app.address, { GATEWAY_RATE_LIMIT_PER_SECOND: '1', GATEWAY_RATE_LIMIT_BURST: '2' });
      try {
        const tightApi = await Api.connect(tight.url);
        const answers = [];
        for (let i = 0; i < 3; i++) answers.push(await tightApi.get('/v1/payments', keyA));
        assert.deepEqual(answers.map((a) => a.status), [200, 200, 429]);
        expectError(answers[2]!, 429, 'rate_limit');
        assert.ok(Number(answers[2]!.headers.get('retry-after')) >= 1);
      } finally {
        await tight.close();
      }
    });

    it('past GATEWAY_MAX_IN_FLIGHT requests are shed at once with 503 overloaded and Retry-After; health stays answered', async () => {
      // A ledger that accepts connections and never answers: every admitted request stays in flight until its deadline.
      const blackHole = createServer(() => undefined);
      await new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve));
      const stuck = await startTestGateway(`127.0.0.1:${(blackHole.address() as AddressInfo).port}`, { GATEWAY_MAX_IN_FLIGHT: '2', GATEWAY_GRPC_DEADLINE_MS: '1500' });
      try {
        const stuckApi = await Api.connect(stuck.url);
        const admitted = [stuckApi.get(`/v1/transfers/${randomUUID()}`, keyA), stuckApi.get(`/v1/transfers/${randomUUID()}`, keyA)];
        await new Promise((resolve) => setTimeout(resolve, 200));
        const shed = await Promise.all(Array.from({ length: 4 }, () => stuckApi.get(`/v1/transfers/${randomUUID()}`, keyA)));
        for (const r of shed) {
          expectError(r, 503, 'overloaded');
          assert.equal(r.headers.get('retry-after'), '1');
        }
        assert.equal((await stuckApi.get('/healthz')).status, 200);
        // The admitted ones ran to their deadline: not shed; after them the gateway admits again.
        for (const r of await Promise.all(admitted)) assert.notEqual(r.body?.error?.code, 'overloaded', r.text);
        const again = await stuckApi.get(`/v1/transfers/${randomUUID()}`, keyA);
        assert.notEqual(again.body?.error?.code, 'overloaded', again.text);
      } finally {
        await stuck.close();
        blackHole.close();
      }
    });

    it('503 with Retry-After when the database is down, for any request (its key is checked there)', async () => {
      const noDatabase = await startTestGateway(stack.ledger.app.address, { DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/nowhere` });
      try {
        const down = await Api.connect(noDatabase.url);
        for (const r of [await down.get('/v1/payments', keyA), await down.post('/v1/accounts', keyA, { currency: 'USD' })]) {
          expectError(r, 503, 'database_unavailable');
          assert.ok(Number(r.headers.get('retry-after')) >= 1);
        }
        const ready = await down.get('/readyz');
        assert.equal(ready.status, 503);
        // The driver's error (the database's address, user, name) is for the logs, not for whoever asks /readyz.
        assert.doesNotMatch(ready.text, /127\.0\.0\.1|ECONNREFUSED|connect|nowhere|postgres/i, ready.text);
      } finally {
        await noDatabase.close();
      }
    });

    it('a database that stops answering (connections gone silent): 503 with Retry-After after GATEWAY_DATABASE_TIMEOUT_MS, not after the 35 s of the ledger\'s timeout', async () => {
      const proxy = await TcpProxy.start(new URL(testConfig().DATABASE_URL));
      const silent = await startTestGateway(stack.ledger.app.address, { DATABASE_URL: proxy.via(testConfig().DATABASE_URL), GATEWAY_DATABASE_TIMEOUT_MS: '1000' });
      try {
        const api = await Api.connect(silent.url);
        assert.equal((await api.get('/v1/payments', keyA)).status, 200, 'answered while the database answers');
        proxy.freeze();
        // The client gives up at 15 s: with the 30 s statement timeout of the other services the answer came at 35 s.
        const started = Date.now();
        const r = await fetch(`${silent.url}/v1/payments`, { headers: { authorization: `Bearer ${keyA}` }, signal: AbortSignal.timeout(15_000) }).catch((error: unknown) => {
          assert.fail(`no answer within 15 s (${Date.now() - started} ms): ${String(error)}`);
        });
        assert.equal(r.status, 503, await r.clone().text());
        assert.equal(((await r.json()) as { error: { code: string } }).error.code, 'database_unavailable');
        assert.ok(Number(r.headers.get('retry-after')) >= 1);
      } finally {
        // The proxy first: a pool ending its frozen connections would wait for their goodbyes for good.
        await proxy.cut();
        await silent.close();
      }
    });

    it('a request arriving while the gateway shuts down is 503 with Retry-After and the error object', async () => {
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      let authStarted!: () => void;
      const started = new Promise<void>((resolve) => (authStarted = resolve));
      let first = true;
      const wrapPool = (pool: Pool): Pool =>
        new Proxy(pool, {
          get(target, property) {
            if (property !== 'query') return Reflect.get(target, property, target);
            return async (query: { name?: string }, ...rest: unknown[]) => {
              if (query?.name === 'gw-auth' && first) {
                first = false;
                authStarted();
                await held;
              }
              return (target.query as (...args: unknown[]) => Promise<unknown>)(query, ...rest);
            };
          },
        });
      const gateway = await startTestGateway(stack.ledger.app.address, {}, { wrapPool });
      const socket = connect(Number(new URL(gateway.url).port), '127.0.0.1');
      await new Promise((resolve) => socket.once('connect', resolve));
      let received = '';
      socket.on('data', (chunk) => (received += chunk.toString('utf8')));
      const ended = new Promise((resolve) => socket.once('close', resolve));
      const get = `GET /v1/payments HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer ${keyA}\r\n\r\n`;
      socket.write(get);
      await started; // the first request is in flight: closing waits for it
      const closed = gateway.close();
      socket.write(get); // a second request on the same connection, while closing
      await new Promise((resolve) => setImmediate(resolve));
      release();
      await closed;
      await ended;
      const second = received.slice(received.indexOf('HTTP/1.1', 1));
      assert.match(second, /^HTTP\/1.1 503 /, received);
      assert.match(second, /\r\nretry-after: \d+\r\n/i, received);
      const body = JSON.parse(second.slice(second.indexOf('\r\n\r\n') + 4));
      assert.deepEqual(Object.keys(body), ['error']);
      assert.equal(typeof body.error.code, 'string');
    });

    it('503 with Retry-After when the ledger is down; /readyz says so; /healthz stays up', async () => {
      const nowhere = await startTestGateway(`127.0.0.1:${await freePort()}`, { GATEWAY_GRPC_DEADLINE_MS: '1000' });
      try {
        const down = await Api.connect(nowhere.url);
        const r = await down.get(`/v1/payments`, keyA);
        assert.equal(r.status, 503, r.text);
        assert.ok(Number(r.headers.get('retry-after')) >= 1);
        const ready = await down.get('/readyz');
        assert.equal(ready.status, 503);
        // The transport's details (the ledger's address, the connection error) are for the logs, not the caller.
        for (const text of [r.text, ready.text]) assert.doesNotMatch(text, /127\.0\.0\.1|ECONNREFUSED|connect/i, text);
        assert.equal((await down.get('/healthz')).status, 200);
      } finally {
        await nowhere.close();
      }
      assert.equal((await api.get('/readyz')).status, 200);
    });
  });
});
