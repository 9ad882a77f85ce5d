import { strict as assert } from 'node:assert';
import { status, type ServiceError } from '@grpc/grpc-js';
import { account, id, startTestLedger, transfer, type TestLedger } from '../test/ledger-harness.js';
import { testPool } from '../test/support.js';
import type { Pool } from '../lib/db.js';
import { ERROR_FIELD_KEY } from '../lib/grpc.js';
import { LedgerClient } from './client.js';
import { transferCodeName } from './convert.js';
import { shardOf } from './router.js';

describe('ledger service (gRPC, PostgreSQL)', function () {
  this.timeout(60_000);
  let ledger: TestLedger;
  let pool: Pool;
  const SHARDS = 8; // startTestLedger's LEDGER_SHARDS

  before(async () => {
    ledger = await startTestLedger();
    pool = testPool();
  });
  after(async () => {
    await ledger.close();
    await pool.end();
  });

  async function accounts(n: number, flags: Parameters<typeof account>[0] = {}): Promise<string[]> {
    const list = Array.from({ length: n }, () => account(flags));
    const results = await ledger.client.createAccounts(list);
    assert.ok(results.every((r) => r.code === 1));
    return list.map((a) => a.id);
  }

  async function expectInvalid(call: Promise<unknown>, field: RegExp): Promise<void> {
    await assert.rejects(call, (error: ServiceError) => {
      assert.equal(error.code, status.INVALID_ARGUMENT, error.message);
      assert.match(String(error.metadata.get(ERROR_FIELD_KEY)[0]), field);
      return true;
    });
  }

  describe('malformed requests: INVALID_ARGUMENT naming the field, nothing written', () => {
    it('empty and oversized batches', async () => {
      await expectInvalid(ledger.client.createTransfers([]), /^transfers$/);
      await expectInvalid(ledger.client.createAccounts([]), /^accounts$/);
      const [a, b] = await accounts(2);
      const tooMany = Array.from({ length: 8191 }, () => transfer({ debitAccountId: a!, creditAccountId: b!, amount: 1n }));
      await expectInvalid(new LedgerClient(ledger.app.address, { autoBatch: false }).createTransfers(tooMany), /^transfers$/);
      assert.deepEqual(await ledger.client.lookupAccounts([a!]).then((x) => x[0]?.debitsPosted), 0n);
    });

    it('ids that are not UUIDs, the nil UUID, bad metadata, a forged cursor', async () => {
      const [a, b] = await accounts(2);
      const good = transfer({ debitAccountId: a!, creditAccountId: b!, amount: 1n });
      await expectInvalid(ledger.client.createTransfers([good, { ...good, id: 'not-a-uuid' }]), /^transfers\.1\.id$/);
      await expectInvalid(ledger.client.createTransfers([{ ...good, debitAccountId: '00000000-0000-0000-0000-000000000000' }]), /^transfers\.0\.debit_account_id$/);
      await expectInvalid(ledger.client.createTransfers([{ ...good, metadata: { note: 'a\u0000b' } }]), /^transfers\.0\.metadata\.note$/);
      await expectInvalid(ledger.client.createAccounts([account({ id: 'x' })]), /^accounts\.0\.id$/);
      await expectInvalid(ledger.client.getAccountTransfers({ accountId: a!, cursor: 'Zm9vOmJhcg' }), /^filter\.cursor$/);
      await expectInvalid(ledger.client.lookupAccounts(['nope']), /^ids\.0$/);
      assert.deepEqual(await ledger.client.lookupTransfers([good.id]), []);
    });

    it('a transfer other than a post/void without its accounts; the id stays usable', async () => {
      const [a, b] = await accounts(2);
      const good = transfer({ debitAccountId: a!, creditAccountId: b!, amount: 1n });
      await expectInvalid(ledger.client.createTransfers([{ ...good, debitAccountId: '' }]), /^transfers\.0\.debit_account_id$/);
      await expectInvalid(ledger.client.createTransfers([{ ...good, creditAccountId: '', flags: { ...good.flags!, pending: true } }]), /^transfers\.0\.credit_account_id$/);
      // Refused before evaluation: not debit_account_not_found, which would have spent the id (id_already_failed now).
      assert.equal(transferCodeName((await ledger.client.createTransfers([good]))[0]!.code), 'ok');
    });

    it('accepts upper-case UUIDs as the same ids', async () => {
      const [a, b] = await accounts(2);
      const t = transfer({ debitAccountId: a!.toUpperCase(), creditAccountId: b!, amount: 3n });
      const [first] = await ledger.client.createTransfers([t]);
      const [again] = await ledger.client.createTransfers([{ ...t, id: t.id.toUpperCase(), debitAccountId: a! }]);
      assert.equal(transferCodeName(first!.code), 'ok');
      assert.equal(transferCodeName(again!.code), 'exists');
    });
  });

  describe('queries', () => {
    it('pages through an account\'s transfers by cursor, both ways, with side and time filters', async () => {
      const [a, b, c] = await accounts(3);
      const sent = [];
      for (let i = 0; i < 10; i++) {
        const t = i % 3 === 0 ? transfer({ debitAccountId: b!, creditAccountId: a!, amount: BigInt(i + 1) }) : transfer({ debitAccountId: a!, creditAccountId: i % 2 ? b! : c!, amount: BigInt(i + 1) });
        // One at a time, so timestamps follow the sending order.
        const [r] = await ledger.client.createTransfers([t]);
        assert.equal(transferCodeName(r!.code), 'ok');
        sent.push({ ...t, timestamp: r!.timestamp });
      }
      const collect = async (filter: Record<string, unknown>) => {
        const ids: string[] = [];
        let cursor = '';
        do {
          const page = await ledger.client.getAccountTransfers({ accountId: a!, limit: 3, cursor, ...filter });
          assert.ok(page.transfers.length <= 3);
          ids.push(...page.transfers.map((t) => t.id));
          cursor = page.nextCursor;
        } while (cursor !== '');
        return ids;
      };
      assert.deepEqual(await collect({}), sent.map((t) => t.id));
      assert.deepEqual(await collect({ reversed: true }), sent.map((t) => t.id).reverse());
      assert.deepEqual(await collect({ debits: true }), sent.filter((t) => t.debitAccountId === a).map((t) => t.id));
      assert.deepEqual(await collect({ credits: true }), sent.filter((t) => t.creditAccountId === a).map((t) => t.id));
      const from = sent[2]!.timestamp;
      const to = sent[6]!.timestamp;
      assert.deepEqual(await collect({ timestampMin: from, timestampMax: to }), sent.slice(2, 7).map((t) => t.id));
      const [looked] = await ledger.client.lookupTransfers([sent[4]!.id]);
      assert.equal(looked?.amount, 5n);
      assert.equal(looked?.timestamp, sent[4]!.timestamp);
    });

    it('keeps the balance after every transfer for history accounts, and the balance at a time', async () => {
      const [h] = await accounts(1, { flags: { history: true } });
      const [other] = await accounts(1);
      const stamps: bigint[] = [];
      for (const [amount, pending] of [[10n, false], [5n, true], [7n, false]] as const) {
        const [r] = await ledger.client.createTransfers([transfer({ debitAccountId: other!, creditAccountId: h!, amount, flags: { pending }, timeout: pending ? 3600 : 0 })]);
        stamps.push(r!.timestamp);
      }
      const { balances } = await ledger.client.getAccountBalances({ accountId: h! });
      assert.deepEqual(
        balances.map((b) => [b.timestamp, b.creditsPending, b.creditsPosted]),
        [[stamps[0], 0n, 10n], [stamps[1], 5n, 10n], [stamps[2], 5n, 17n]],
      );
      // The account only receives here: a debits-only page is empty, a credits-only page is every row.
      assert.deepEqual((await ledger.client.getAccountBalances({ accountId: h!, debits: true })).balances, []);
      assert.equal((await ledger.client.getAccountBalances({ accountId: h!, credits: true })).balances.length, 3);
      const [sent] = await ledger.client.createTransfers([transfer({ debitAccountId: h!, creditAccountId: other!, amount: 1n })]);
      assert.deepEqual((await ledger.client.getAccountBalances({ accountId: h!, debits: true })).balances.map((b) => b.timestamp), [sent!.timestamp]);
      assert.equal((await ledger.client.getAccountBalanceAt(h!, stamps[0]! - 1n))?.creditsPosted, 0n);
      assert.equal((await ledger.client.getAccountBalanceAt(h!, stamps[1]!))?.creditsPending, 5n);
      assert.equal((await ledger.client.getAccountBalanceAt(h!, stamps[2]!))?.creditsPosted, 17n);
      assert.equal((await ledger.client.getAccountBalanceAt(h!, sent!.timestamp + 1_000_000_000n))?.debitsPosted, 1n);
      await assert.rejects(ledger.client.getAccountBalances({ accountId: other! }), (e: ServiceError) => e.code === status.FAILED_PRECONDITION);
      await assert.rejects(ledger.client.getAccountBalanceAt(id(), 1n), (e: ServiceError) => e.code === status.NOT_FOUND);
    });
  });

  describe('ownership and back-pressure', () => {
    it('refuses events of a shard this instance does not own, naming the shard, and writes nothing', async () => {
      const partial = await startTestLedger({ LEDGER_OWNED_SHARDS: '0-3', LEDGER_SHARD_OWNERS: '4-7=ledger-b.internal:50051' });
      try {
        let foreign = id();
        while (shardOf(foreign, SHARDS) < 4) foreign = id();
        await assert.rejects(partial.client.createAccounts([account({ id: foreign })]), (e: ServiceError) => {
          assert.equal(e.code, status.UNAVAILABLE);
          assert.equal(e.metadata.get('x-error-code')[0], 'shard_not_owned');
          assert.equal(e.metadata.get('x-shard-owner')[0], 'ledger-b.internal:50051');
          return true;
        });
        let owned = id();
        while (shardOf(owned, SHARDS) >= 4) owned = id();
        const [created] = await partial.client.createAccounts([account({ id: owned })]);
        assert.equal(created?.code, 1);
        assert.deepEqual(await ledger.client.lookupAccounts([foreign]), []);
      } finally {
        await partial.close();
      }
    });

    it('refuses a request that would overfill the queues with RESOURCE_EXHAUSTED, whole', async () => {
      const small = await startTestLedger({ LEDGER_MAX_QUEUED_EVENTS: '100', LEDGER_BATCH_MAX: '100' }, { autoBatch: false });
      try {
        const [a, b] = await accounts(2);
        const request = Array.from({ length: 101 }, () => transfer({ debitAccountId: a!, creditAccountId: b!, amount: 1n }));
        await assert.rejects(small.client.createTransfers(request), (e: ServiceError) => {
          assert.equal(e.code, status.RESOURCE_EXHAUSTED);
          assert.equal(e.metadata.get('retry-after')[0], '1');
          return true;
        });
        assert.deepEqual(await ledger.client.lookupTransfers(request.map((t) => t.id)), []);
        const results = await small.client.createTransfers(request.slice(0, 100));
        assert.ok(results.every((r) => transferCodeName(r.code) === 'ok'));
      } finally {
        await small.close();
      }
    });
  });

  describe('shards', () => {
    it('a linked chain over accounts of different shards applies whole or not at all', async () => {
      const list = await accounts(24);
      const a = list[0]!;
      const b = list.find((x) => shardOf(x, SHARDS) !== shardOf(a, SHARDS))!;
      const c = list.find((x) => ![a, b].map((y) => shardOf(y, SHARDS)).includes(shardOf(x, SHARDS)))!;
      const failing = [
        transfer({ debitAccountId: a, creditAccountId: b, amount: 10n, flags: { linked: true } }),
        transfer({ debitAccountId: b, creditAccountId: c, amount: 10n, flags: { linked: true } }),
        transfer({ debitAccountId: c, creditAccountId: a, amount: 0n }),
      ];
      assert.deepEqual((await ledger.client.createTransfers(failing)).map((r) => transferCodeName(r.code)), ['linked_event_failed', 'linked_event_failed', 'amount_must_be_positive']);
      const after = await ledger.client.lookupAccounts([a, b, c]);
      assert.ok(after.every((x) => x.debitsPosted === 0n && x.creditsPosted === 0n), 'a failed chain moved money');
      const passing = failing.map((t, i) => ({ ...t, id: id(), amount: BigInt(10 + i) }));
      assert.deepEqual((await ledger.client.createTransfers(passing)).map((r) => transferCodeName(r.code)), ['ok', 'ok', 'ok']);
      const moved = await ledger.client.lookupAccounts([a, b, c]);
      assert.deepEqual(moved.map((x) => [x.debitsPosted, x.creditsPosted]), [[10n, 12n], [11n, 10n], [12n, 11n]]);
    });
  });

  describe('concurrency', () => {
    it('the same transfer from 50 concurrent callers posts exactly once', async () => {
      const [a, b] = await accounts(2);
      const t = transfer({ debitAccountId: a!, creditAccountId: b!, amount: 9n });
      const separate = Array.from({ length: 5 }, () => new LedgerClient(ledger.app.address));
      try {
        const calls = Array.from({ length: 50 }, (_, i) => (i % 2 ? ledger.client : separate[i % 5]!).createTransfers([t]));
        const codes = (await Promise.all(calls)).map(([r]) => transferCodeName(r!.code));
        assert.equal(codes.filter((c) => c === 'ok').length, 1, codes.join(','));
        assert.equal(codes.filter((c) => c === 'exists').length, 49);
      } finally {
        separate.forEach((c) => c.close());
      }
      const [acc] = await ledger.client.lookupAccounts([a!]);
      assert.equal(acc?.debitsPosted, 9n);
      const rows = await pool.query('SELECT count(*)::int AS n FROM transfers WHERE id = $1', [t.id]);
      assert.equal(rows.rows[0].n, 1);
    });

    it('the same transfer id on two shards at once: one ok, the other exists_with_different_fields, no error', async () => {
      const pool2 = await accounts(16);
      for (let attempt = 0; attempt < 20; attempt++) {
        const [x, y] = [pool2[attempt % 16]!, pool2[(attempt + 1) % 16]!];
        const z = pool2.find((p) => shardOf(p, SHARDS) !== shardOf(x, SHARDS) && p !== y)!;
        const tid = id();
        const [one, two] = [new LedgerClient(ledger.app.address, { autoBatch: false }), new LedgerClient(ledger.app.address, { autoBatch: false })];
        const codes = (
          await Promise.all([
            one.createTransfers([transfer({ id: tid, debitAccountId: x, creditAccountId: y, amount: 1n })]),
            two.createTransfers([transfer({ id: tid, debitAccountId: z, creditAccountId: y, amount: 1n })]),
          ]).finally(() => [one, two].forEach((c) => c.close()))
        ).map(([r]) => transferCodeName(r!.code));
        assert.deepEqual(codes.sort(), ['exists_with_different_fields', 'ok']);
      }
    });

    it('a hot account credited from every shard at once gets every transfer exactly once', async () => {
      const sources = await accounts(200);
      const [hot] = await accounts(1);
      assert.equal(new Set(sources.map((s) => shardOf(s, SHARDS))).size, SHARDS);
      const transfers = Array.from({ length: 2000 }, (_, i) => transfer({ debitAccountId: sources[i % 200]!, creditAccountId: hot!, amount: BigInt(1 + (i % 7)) }));
      const clients = Array.from({ length: 4 }, () => new LedgerClient(ledger.app.address));
      try {
        const results = await Promise.all(transfers.map((t, i) => clients[i % 4]!.createTransfers([t])));
        assert.ok(results.every(([r]) => transferCodeName(r!.code) === 'ok'));
      } finally {
        clients.forEach((c) => c.close());
      }
      const expected = transfers.reduce((sum, t) => sum + t.amount, 0n);
      const [h] = await ledger.client.lookupAccounts([hot!]);
      assert.equal(h?.creditsPosted, expected);
      const sums = await pool.query('SELECT sum(debits_posted)::int8 AS d FROM account_balances_current WHERE id = ANY($1::uuid[])', [sources]);
      assert.equal(sums.rows[0].d, expected);
    });
  });
});
