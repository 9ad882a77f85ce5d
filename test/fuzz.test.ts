import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { status, type ServiceError } from '@grpc/grpc-js';
import fc from 'fast-check';
import { after, before, describe, it } from 'mocha';
import { callUnary } from '../lib/grpc.js';
import { newTransfer } from '../ledger/client.js';
import { ADMIN_KEY, businessTableCounts, startTestStack, type TestStack } from './gateway-harness.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 20261125);
const RUNS = Number(process.env['FUZZ_RUNS'] ?? 40);

/**
 * Bad input, generated (fast-check, seeded: FUZZ_SEED, FUZZ_RUNS): malformed JSON, wrong types, huge, negative
 * and fractional amounts, unicode and control characters, deep nesting, duplicate keys, invalid UTF-8, oversized
 * bodies and invalid ids, to every route of /openapi.json and to the ledger's gRPC API. Only 4xx (never 5xx),
 * only INVALID_ARGUMENT or per-event result codes on gRPC (never INTERNAL), nothing written, the services alive.
 */
describe('fuzzed bad input (REST routes from /openapi.json, ledger gRPC)', function () {
  this.timeout(300_000);
  let stack: TestStack;
  let key: string;
  let routes: { method: string; path: string }[];

  before(async () => {
    stack = await startTestStack();
    const r = await fetch(`${stack.gateway.url}/v1/merchants`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Fuzzed' }) });
    key = ((await r.json()) as { secret_key: string }).secret_key;
    const document = (await (await fetch(`${stack.gateway.url}/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    routes = Object.entries(document.paths)
      .filter(([path]) => path.startsWith('/v1/'))
      .flatMap(([path, methods]) => Object.keys(methods).map((method) => ({ method: method.toUpperCase(), path })));
    assert.ok(routes.length >= 20, `${routes.length} routes`);
  });
  after(async () => {
    await stack?.close();
  });

  // Idempotency keys are not counted (refusals after validation are kept for replay): the test checks that only
  // 4xx answers were kept.
  const counts = () => businessTableCounts(stack.pool);

  /** A path id: random text, a UUID nobody has, or something that is not an id at all. */
  const pathId = fc.oneof(fc.uuid(), fc.string({ maxLength: 40 }).filter((s) => s.length > 0 && !s.includes('/') && !s.includes('?') && !s.includes('#')), fc.constant('..'), fc.constant('%00'));
  const amount = fc.oneof(fc.constant(-1), fc.constant(0), fc.double({ noNaN: true }), fc.constant(2 ** 53), fc.constant(1e308), fc.bigInt().map(String), fc.constant('100'));
  const weird = fc.oneof(fc.string({ unit: 'grapheme', maxLength: 50 }), fc.string({ unit: 'binary', maxLength: 50 }), fc.constant('\u0000\u001f\u202e'), amount, fc.boolean(), fc.constant(null), fc.array(fc.integer(), { maxLength: 3 }));
  /** Bodies that look like requests, with wrong fields: known names, wrong values, extra keys. */
  const body = fc.oneof(
    fc.jsonValue({ maxDepth: 3 }),
    fc.record({ amount, currency: weird, source: fc.oneof(weird, fc.record({ card: fc.dictionary(fc.string({ maxLength: 10 }), weird) })), capture_method: weird }, { requiredKeys: [] }),
    fc.record({ debit_account_id: weird, credit_account_id: weird, amount, currency: weird, pending: weird, metadata: fc.oneof(weird, fc.dictionary(fc.string({ maxLength: 80 }), weird)) }, { requiredKeys: [] }),
    fc.record({ transfers: fc.oneof(weird, fc.array(fc.jsonValue({ maxDepth: 2 }), { maxLength: 3 })), merchant: weird, currency: weird, payment: weird, flags: fc.oneof(weird, fc.array(weird, { maxLength: 3 })) }, { requiredKeys: [] }),
  );
  /** Raw payloads that are not the JSON they claim to be. */
  const raw = fc.oneof(
    fc.constant('{"amount": 1, "amount": 2, "currency": "USD"}'),
    fc.constant('{"a":'.repeat(2_000) + '1' + '}'.repeat(2_000)),
    fc.constant('{"__proto__": {"admin": true}, "currency": "USD"}'),
    fc.constant('{"constructor": {"prototype": {"x": 1}}}'),
    fc.string({ maxLength: 200 }),
    fc.uint8Array({ minLength: 1, maxLength: 100 }).map((bytes) => Buffer.from([0x7b, 0x22, 0xff, 0xfe, ...bytes])),
  );

  it('every route answers 4xx to generated bad input, writes nothing and stays up', async () => {
    const before = await counts();
    const started = (await stack.pool.query('SELECT now() AS t')).rows[0].t as Date;
    const seen = new Map<number, number>();
    await fc.assert(
      fc.asyncProperty(fc.nat({ max: 1_000 }), pathId, fc.oneof(body.map((b) => ({ json: b })), raw.map((r) => ({ raw: r }))), async (routeIndex, id, payload) => {
        const route = routes[routeIndex % routes.length]!;
        const path = route.path.replace(/\{[^}]+\}/g, encodeURIComponent(id));
        const init: RequestInit = { method: route.method, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', 'idempotency-key': randomUUID() } };
        if (route.method === 'POST') init.body = 'json' in payload ? JSON.stringify(payload.json) : (payload.raw as NonNullable<RequestInit['body']>);
        // A list is made bad by its query (limit 0 is below every list's minimum), an object by its id.
        const list = route.method === 'GET' && !route.path.includes('{');
        const response = await fetch(`${stack.gateway.url}${path}${list ? `?limit=0&starting_after=${encodeURIComponent(id)}` : ''}`, init);
        const text = await response.text();
        seen.set(response.status, (seen.get(response.status) ?? 0) + 1);
        assert.ok(response.status >= 400 && response.status < 500, `${route.method} ${path}: ${response.status} ${text.slice(0, 300)}`);
        assert.ok(!text.includes(key), 'the key is never echoed');
      }),
      { seed: SEED, numRuns: RUNS * routes.length, endOnFailure: true },
    );
    // Oversized: beyond GATEWAY_BODY_LIMIT_BYTES.
    const big = await fetch(`${stack.gateway.url}/v1/payments`, { method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' }, body: JSON.stringify({ pad: 'x'.repeat(2 * 1024 * 1024) }) });
    assert.equal(big.status, 413);
    assert.deepEqual(await counts(), before, 'nothing was written');
    const kept = await stack.pool.query(`SELECT count(*) FILTER (WHERE status BETWEEN 400 AND 499)::int AS refused, count(*)::int AS all FROM idempotency_keys WHERE created_at >= $1`, [started]);
    assert.equal(kept.rows[0].refused, kept.rows[0].all, 'the only answers kept for replay are 4xx');
    assert.equal((await fetch(`${stack.gateway.url}/readyz`)).status, 200, 'the gateway and the ledger still answer');
    assert.ok(seen.size >= 3, `statuses seen: ${JSON.stringify([...seen])}`);
  });

  it('the ledger gRPC API answers INVALID_ARGUMENT or per-event codes to generated transfers, never INTERNAL', async () => {
    const client = stack.ledger.client;
    const before = await counts();
    const id = fc.oneof(fc.uuid(), fc.string({ maxLength: 40 }), fc.constant('00000000-0000-0000-0000-000000000000'));
    const transfer = fc.record({
      id,
      debitAccountId: id,
      creditAccountId: id,
      amount: fc.oneof(fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constant(0n)),
      pendingId: fc.oneof(fc.constant(''), id),
      ledger: fc.nat(),
      code: fc.nat(),
      timeout: fc.nat(),
      metadata: fc.dictionary(fc.string({ unit: 'binary', maxLength: 70 }), fc.string({ unit: 'binary', maxLength: 600 }), { maxKeys: 20 }),
      flags: fc.record({ linked: fc.boolean(), pending: fc.boolean(), postPendingTransfer: fc.boolean(), voidPendingTransfer: fc.boolean() }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(transfer, { minLength: 0, maxLength: 5 }), async (transfers) => {
        try {
          const results = await callUnary(client.raw, client.raw.createTransfers, { transfers: transfers.map((t) => newTransfer(t)) }, 10_000);
          // Accepted as well-formed: every event failed with a code (none of these accounts exist).
          assert.ok(results.results.every((r) => r.code !== 1), JSON.stringify(results.results, (_, v: unknown) => (typeof v === 'bigint' ? String(v) : v)));
        } catch (error) {
          assert.equal((error as ServiceError).code, status.INVALID_ARGUMENT, (error as Error).message);
        }
      }),
      { seed: SEED, numRuns: RUNS * 5, endOnFailure: true },
    );
    assert.deepEqual(await counts(), before, 'nothing was written');
  });
});
