import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import type { Account, Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { LedgerClient } from '../ledger/client.js';
import { accountCodeName, transferCodeName } from '../ledger/convert.js';
import type { Pool } from '../lib/db.js';
import { LedgerModel } from './ledger-model.js';
import { account, id, startTestLedger, transfer, type TestLedger } from './ledger-harness.js';
import { testPool } from './support.js';

/**
 * Differential tests: random requests go to the real ledger over gRPC and to the reference model
 * (test/ledger-model.ts); answers must agree event by event and balances must agree at the end.
 * Seeded: set LEDGER_MODEL_SEED to replay a failure (the seed is printed on failure by fast-check).
 */
const SEED = Number(process.env['LEDGER_MODEL_SEED'] ?? Date.now() % 2 ** 31);
const MAX = 2n ** 63n - 1n;

type EventSpec =
  | { kind: 'single'; debit: number; credit: number; amount: bigint; ledger: number; code: number; pending: boolean; timeout: number; linked: boolean; meta: boolean }
  | { kind: 'resolve'; ref: number; post: boolean; amount: bigint; giveAccounts: boolean; wrongDebit: boolean; linked: boolean }
  | { kind: 'repeat'; ref: number; changeAmount: boolean; linked: boolean };

const ACCOUNTS = 13; // index 12 is never created: unknown account

const amountArb = fc.oneof(
  { weight: 12, arbitrary: fc.bigInt(1n, 1000n) },
  { weight: 1, arbitrary: fc.constant(0n) },
  { weight: 1, arbitrary: fc.constantFrom(2n ** 62n, MAX, MAX + 1n) },
);

const eventArb: fc.Arbitrary<EventSpec> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('single' as const),
      debit: fc.nat({ max: ACCOUNTS - 1 }),
      credit: fc.nat({ max: ACCOUNTS - 1 }),
      amount: amountArb,
      ledger: fc.constantFrom(978, 978, 978, 978, 840, 0),
      code: fc.constantFrom(1, 1, 1, 1, 1, 0),
      pending: fc.boolean(),
      timeout: fc.constantFrom(0, 0, 3600),
      linked: fc.boolean().map((b) => b && Math.random() < 1), // kept as drawn; fast-check controls it
      meta: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('resolve' as const),
      ref: fc.nat(),
      post: fc.boolean(),
      amount: fc.oneof(fc.constant(0n), fc.bigInt(1n, 1200n)),
      giveAccounts: fc.boolean(),
      wrongDebit: fc.boolean().map((b) => b && false),
      linked: fc.boolean(),
    }),
  },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('repeat' as const), ref: fc.nat(), changeAmount: fc.boolean(), linked: fc.boolean() }) },
);

/** Linked flags are drawn rarely, so that most chains are short and most events stand alone. */
const requestArb = fc.array(
  eventArb.chain((e) => fc.nat({ max: 4 }).map((n) => ({ ...e, linked: e.linked && n === 0 }) as EventSpec)),
  { minLength: 1, maxLength: 30, size: 'max' },
);

function accountSet(): Account[] {
  return [
    account({ flags: { history: true } }),
    account({ flags: { history: true } }),
    account(),
    account(),
    account(),
    account(),
    account({ flags: { debitsMustNotExceedCredits: true } }),
    account({ flags: { debitsMustNotExceedCredits: true, history: true } }),
    account({ flags: { creditsMustNotExceedDebits: true } }),
    account({ flags: { closed: true } }),
    account({ ledger: 840 }),
    account({ ledger: 840 }),
  ];
}

class Scenario {
  readonly ids: string[];
  readonly sent: Transfer[] = [];
  readonly pendings: Transfer[] = [];

  constructor(readonly accounts: Account[]) {
    this.ids = [...accounts.map((a) => a.id), id()];
  }

  build(specs: readonly EventSpec[]): Transfer[] {
    return specs.map((s) => {
      let t: Transfer;
      if (s.kind === 'single') {
        t = transfer({
          debitAccountId: this.ids[s.debit]!,
          creditAccountId: this.ids[s.credit]!,
          amount: s.amount,
          ledger: s.ledger,
          code: s.code,
          timeout: s.pending ? s.timeout : s.timeout === 3600 && s.amount === 1n ? 5 : 0,
          flags: { pending: s.pending, linked: s.linked },
          metadata: s.meta ? { order: String(s.amount) } : {},
        });
        if (s.pending) this.pendings.push(t);
      } else if (s.kind === 'resolve') {
        const p = this.pendings[s.ref % Math.max(1, this.pendings.length)];
        t = transfer({
          pendingId: p?.id ?? id(),
          amount: s.amount,
          ledger: 0,
          code: 0,
          debitAccountId: s.giveAccounts && p ? p.debitAccountId : '',
          creditAccountId: s.giveAccounts && p ? p.creditAccountId : '',
          flags: { postPendingTransfer: s.post, voidPendingTransfer: !s.post, linked: s.linked },
        });
      } else {
        const earlier = this.sent[s.ref % Math.max(1, this.sent.length)];
        t = earlier ? { ...earlier, amount: s.changeAmount ? earlier.amount + 1n : earlier.amount, flags: { ...earlier.flags!, linked: s.linked } } : transfer({ amount: 1n });
      }
      this.sent.push(t);
      return t;
    });
  }
}

async function createBoth(client: LedgerClient, model: LedgerModel, accounts: Account[]): Promise<void> {
  const real = (await client.createAccounts(accounts)).map((r) => accountCodeName(r.code));
  assert.deepEqual(real, model.createAccounts(accounts));
}

async function compareBalances(client: LedgerClient, model: LedgerModel, ids: readonly string[]): Promise<void> {
  const found = await client.lookupAccounts([...ids]);
  for (const accountId of ids) {
    const expected = model.balances(accountId);
    const a = found.find((x) => x.id === accountId);
    assert.deepEqual(a && [a.debitsPending, a.debitsPosted, a.creditsPending, a.creditsPosted], expected, `balances of ${accountId}`);
  }
}

/** The books' invariants over a closed set of accounts (every transfer of the test stays inside it). */
async function assertInvariants(pool: Pool, accountIds: readonly string[], transferIds: readonly string[]): Promise<void> {
  const perLedger = await pool.query(
    `SELECT ledger, sum(debits_pending)::numeric AS dp, sum(credits_pending)::numeric AS cp, sum(debits_posted)::numeric AS dpo, sum(credits_posted)::numeric AS cpo
     FROM account_balances_current WHERE id = ANY($1::uuid[]) GROUP BY ledger`,
    [accountIds],
  );
  for (const r of perLedger.rows) {
    assert.equal(r.dp, r.cp, `ledger ${r.ledger}: pending debits != pending credits`);
    assert.equal(r.dpo, r.cpo, `ledger ${r.ledger}: posted debits != posted credits`);
  }
  const beyond = await pool.query(
    `SELECT id FROM account_balances_current WHERE id = ANY($1::uuid[]) AND (
       (flags & 2 <> 0 AND debits_pending + debits_posted > credits_posted) OR
       (flags & 4 <> 0 AND credits_pending + credits_posted > debits_posted) OR
       debits_pending < 0 OR credits_pending < 0)`,
    [accountIds],
  );
  assert.deepEqual(beyond.rows, [], 'an account is beyond its limit');
  const twice = await pool.query('SELECT id FROM transfers WHERE id = ANY($1::uuid[]) GROUP BY id HAVING count(*) > 1', [transferIds]);
  assert.deepEqual(twice.rows, []);
}

describe('ledger against the reference model (randomized, seeded)', function () {
  this.timeout(180_000);
  let pool: Pool;
  before(() => {
    pool = testPool();
  });
  after(async () => {
    await pool.end();
  });

  it(`sequential requests: same answers event by event, same balances (seed ${SEED})`, async () => {
    // One shard: a request's events are then evaluated in request order, exactly as the model does.
    const ledger: TestLedger = await startTestLedger({ LEDGER_SHARDS: '1' });
    const client = new LedgerClient(ledger.app.address, { autoBatch: false });
    let events = 0;
    try {
      await fc.assert(
        fc.asyncProperty(fc.array(requestArb, { minLength: 25, maxLength: 40, size: 'max' }), async (requests) => {
          const model = new LedgerModel();
          const scenario = new Scenario(accountSet());
          await createBoth(client, model, scenario.accounts);
          // Funding so that the limit-flagged accounts have something to spend.
          const funding = scenario.build([
            { kind: 'single', debit: 2, credit: 6, amount: 500n, ledger: 978, code: 1, pending: false, timeout: 0, linked: false, meta: false },
            { kind: 'single', debit: 2, credit: 7, amount: 500n, ledger: 978, code: 1, pending: false, timeout: 0, linked: false, meta: false },
            { kind: 'single', debit: 8, credit: 3, amount: 1n, ledger: 978, code: 1, pending: false, timeout: 0, linked: false, meta: false },
          ]);
          for (const request of [funding, ...requests.map((r) => scenario.build(r))]) {
            const expected = model.createTransfers(request);
            const real = (await client.createTransfers(request)).map((r) => transferCodeName(r.code));
            events += request.length;
            assert.deepEqual(real, expected, `request ${JSON.stringify(request, (_k, v) => (typeof v === 'bigint' ? v.toString() : v))}`);
          }
          await compareBalances(client, model, scenario.ids.slice(0, 12));
          await assertInvariants(pool, scenario.ids, scenario.sent.map((t) => t.id));
        }),
        { seed: SEED, numRuns: 4, endOnFailure: true },
      );
    } finally {
      client.close();
      await ledger.close();
    }
    assert.ok(events >= 1000, `only ${events} events were exercised`);
  });

  it(`concurrent clients on one hot account across shards: same balances as the model (seed ${SEED})`, async () => {
    const ledger: TestLedger = await startTestLedger();
    const model = new LedgerModel();
    const rng = fc.sample(fc.integer(), { seed: SEED, numRuns: 1 })[0]!;
    let state = rng >>> 0;
    const random = () => ((state = (Math.imul(state ^ (state >>> 15), 2246822507) + 0x6d2b79f5) >>> 0) / 2 ** 32);
    const hot = account();
    const funder = account();
    const clients = Array.from({ length: 8 }, () => ({ client: new LedgerClient(ledger.app.address), sources: [account({ flags: { debitsMustNotExceedCredits: true } }), account({ flags: { debitsMustNotExceedCredits: true } })], pendings: [] as Transfer[] }));
    try {
      await createBoth(ledger.client, model, [hot, funder, ...clients.flatMap((c) => c.sources)]);
      const funding = clients.flatMap((c) => c.sources.map((s) => transfer({ debitAccountId: funder.id, creditAccountId: s.id, amount: 2000n })));
      assert.deepEqual((await ledger.client.createTransfers(funding)).map((r) => transferCodeName(r.code)), model.createTransfers(funding));
      let events = 0;
      await Promise.all(
        clients.map(async (c) => {
          for (let round = 0; round < Number(process.env['LEDGER_MODEL_ROUNDS'] ?? 30); round++) {
            const request: Transfer[] = [];
            for (let k = 1 + Math.floor(random() * 8); k > 0; k--) {
              const source = c.sources[Math.floor(random() * 2)]!;
              const roll = random();
              if (roll < 0.5) request.push(transfer({ debitAccountId: source.id, creditAccountId: hot.id, amount: BigInt(1 + Math.floor(random() * 120)) }));
              else if (roll < 0.75) {
                const p = transfer({ debitAccountId: source.id, creditAccountId: hot.id, amount: BigInt(1 + Math.floor(random() * 120)), flags: { pending: true }, timeout: 3600 });
                c.pendings.push(p);
                request.push(p);
              } else if (c.pendings.length > 0) {
                const p = c.pendings[Math.floor(random() * c.pendings.length)]!;
                const post = random() < 0.6;
                request.push(transfer({ pendingId: p.id, ledger: 0, code: 0, amount: post ? BigInt(Math.floor(random() * 130)) : 0n, flags: { postPendingTransfer: post, voidPendingTransfer: !post } }));
              }
            }
            if (request.length === 0) continue;
            const real = (await c.client.createTransfers(request)).map((r) => transferCodeName(r.code));
            // Each client's outcome depends only on its own accounts (the hot account has no limits), so
            // applying the requests to the model in completion order gives the same answers.
            assert.deepEqual(real, model.createTransfers(request));
            events += request.length;
          }
        }),
      );
      assert.ok(events > 300, `only ${events} events`);
      const all = [hot.id, funder.id, ...clients.flatMap((c) => c.sources.map((s) => s.id))];
      await compareBalances(ledger.client, model, all);
      await assertInvariants(pool, all, []);
    } finally {
      clients.forEach((c) => c.client.close());
      await ledger.close();
    }
  });
});
