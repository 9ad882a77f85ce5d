import { strict as assert } from 'node:assert';
import fc from 'fast-check';
import type { Account, AccountBalance, Transfer } from '../proto/gen/ledger/v1/ledger.js';
import { LedgerClient } from '../ledger/client.js';
import { accountCodeName, transferCodeName } from '../ledger/convert.js';
import { PendingState, TransferFlag } from '../ledger/model.js';
import type { Pool } from '../lib/db.js';
import { LedgerModel, MODEL_MAX, accountFlagBits, transferFlagBits, type PendingStateName } from './ledger-model.js';
import { account, id, startTestLedger, transfer, type TestLedger } from './ledger-harness.js';
import { snapshotQuery, testPool } from './support.js';

/**
 * Differential tests: random requests go to the real ledger over gRPC and to the reference model
 * (test/ledger-model.ts, written from the README's "Semantics"); answers must agree event by event, and
 * balances, recorded transfers, pending states and balance histories must agree at the end. The books'
 * invariants are checked on the database after every run.
 *
 * Seeded: LEDGER_MODEL_SEED=<n> replays a run (the seed is in the test names and in fast-check's failure
 * report). LEDGER_MODEL_RUNS scales the sequential part, LEDGER_MODEL_ROUNDS the concurrent part,
 * LEDGER_MODEL_SHRINK=1 lets fast-check shrink a failure (slow: every try replays against the service),
 * LEDGER_MODEL_VERBOSE=1 prints how often each result code came up.
 */
const SEED = Number(process.env['LEDGER_MODEL_SEED'] ?? Date.now() % 2 ** 31);
const RUNS = Number(process.env['LEDGER_MODEL_RUNS'] ?? 6);
const ROUNDS = Number(process.env['LEDGER_MODEL_ROUNDS'] ?? 25);
const SHRINK = process.env['LEDGER_MODEL_SHRINK'] === '1';
const VERBOSE = process.env['LEDGER_MODEL_VERBOSE'] === '1';
const MAX = MODEL_MAX;
/** The largest amount the wire (uint64) carries. */
const U64 = 2n ** 64n - 1n;

// ---- helpers -------------------------------------------------------------------------------------------

const json = (v: unknown) => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : x));

/** A small deterministic PRNG (mulberry32) for the parts that are not fast-check properties: rnd(n) in 0..n-1. */
function prng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n: number) => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 2 ** 32) * n);
  };
}

/** Same codes event by event, or a failure listing every differing event and the events before the first. */
function assertSameCodes(what: string, events: readonly { id: string }[], real: readonly string[], expected: readonly string[]): void {
  assert.equal(real.length, expected.length, `${what}: ${real.length} results for ${expected.length} events`);
  const differing = expected.flatMap((e, i) => (real[i] === e ? [] : [i]));
  if (differing.length === 0) return;
  const line = (i: number) => `  #${i} model ${expected[i]}${real[i] === expected[i] ? '' : `, SERVICE ${real[i]}`}: ${json(events[i])}`;
  const first = differing[0]!;
  const context = events.slice(Math.max(0, first - 25), first + 3).map((_, k) => line(Math.max(0, first - 25) + k));
  assert.fail(
    `${what}: ${differing.length} of ${events.length} result(s) differ from the model\n${differing.slice(0, 10).map(line).join('\n')}\n` +
      `events up to the first difference (earlier requests not shown):\n${context.join('\n')}`,
  );
}

/**
 * fc.assert, with a short report: fast-check's own would print every generated request (hundreds of KB).
 * The seed and path replay the run (LEDGER_MODEL_SEED); the error says which events differ.
 */
async function checkProperty<T>(property: fc.IAsyncProperty<T>, params: fc.Parameters<T>): Promise<void> {
  const details = await fc.check(property, params);
  if (!details.failed) return;
  const cause = details.errorInstance instanceof Error ? details.errorInstance.message : String(details.errorInstance);
  assert.fail(`property failed (seed ${details.seed}, path ${json(details.counterexamplePath)}, replay with LEDGER_MODEL_SEED=${details.seed}) after ${details.numRuns} run(s):\n${cause}`);
}

async function sendTransfers(client: LedgerClient, model: LedgerModel, request: Transfer[], what: string): Promise<string[]> {
  const real = (await client.createTransfers(request)).map((r) => transferCodeName(r.code));
  assertSameCodes(what, request, real, model.createTransfers(request));
  return real;
}

async function sendAccounts(client: LedgerClient, model: LedgerModel, request: Account[], what: string): Promise<void> {
  const real = (await client.createAccounts(request)).map((r) => accountCodeName(r.code));
  assertSameCodes(what, request, real, model.createAccounts(request));
}

const chunks = <T>(xs: readonly T[], n: number): T[][] => Array.from({ length: Math.ceil(xs.length / n) }, (_, k) => xs.slice(k * n, (k + 1) * n));

async function compareBalances(client: LedgerClient, model: LedgerModel, ids: readonly string[]): Promise<void> {
  const found = new Map((await client.lookupAccounts([...ids])).map((a) => [a.id, a]));
  for (const accountId of ids) {
    const a = found.get(accountId);
    const real = a && { debitsPending: a.debitsPending, debitsPosted: a.debitsPosted, creditsPending: a.creditsPending, creditsPosted: a.creditsPosted };
    assert.deepEqual(real, model.balances(accountId), `balances of account ${accountId}`);
  }
}

/** What LookupTransfers returns for every id the test sent equals the model's record (or neither has one). */
async function compareTransfers(client: LedgerClient, model: LedgerModel, transferIds: readonly string[]): Promise<void> {
  const ids = [...new Set(transferIds)];
  const found = new Map<string, Transfer>();
  for (const part of chunks(ids, 8000)) for (const t of await client.lookupTransfers(part)) found.set(t.id, t);
  for (const transferId of ids) {
    const expected = model.transfer(transferId);
    const t = found.get(transferId);
    const real = t && {
      id: t.id,
      debitAccountId: t.debitAccountId,
      creditAccountId: t.creditAccountId,
      amount: t.amount,
      pendingId: t.pendingId,
      ledger: t.ledger,
      code: t.code,
      flags: transferFlagBits(t.flags) & ~TransferFlag.linked,
      timeout: t.timeout,
      metadata: t.metadata,
    };
    assert.deepEqual(real, expected && { ...expected }, `recorded transfer ${transferId}`);
  }
}

const STATE_NAMES = new Map<number, PendingStateName>(Object.entries(PendingState).map(([name, value]) => [value, name as PendingStateName]));

/** The state of every pending transfer (pending/posted/voided/expired) as the database holds it. */
async function comparePendingStates(pool: Pool, model: LedgerModel, pendingIds: readonly string[]): Promise<void> {
  const ids = [...new Set(pendingIds)];
  const r = await snapshotQuery<{ id: string; state: number }>(pool, 'SELECT id::text AS id, state FROM pending_transfers WHERE id = ANY($1::uuid[])', [ids]);
  const real = new Map(r.rows.map((row) => [row.id, STATE_NAMES.get(Number(row.state))]));
  for (const pendingId of ids) assert.equal(real.get(pendingId), model.pendingState(pendingId), `state of pending transfer ${pendingId}`);
}

type Row = { transferId: string; debitsPending: bigint; debitsPosted: bigint; creditsPending: bigint; creditsPosted: bigint };

async function historyRows(client: LedgerClient, accountId: string): Promise<(Row & { timestamp: bigint })[]> {
  const rows: AccountBalance[] = [];
  let cursor = '';
  do {
    const page = await client.getAccountBalances({ accountId, limit: 8190, cursor });
    rows.push(...page.balances);
    cursor = page.nextCursor;
  } while (cursor !== '');
  return rows.map((b) => ({ timestamp: b.timestamp, transferId: b.transferId, debitsPending: b.debitsPending, debitsPosted: b.debitsPosted, creditsPending: b.creditsPending, creditsPosted: b.creditsPosted }));
}

/**
 * Every balance row of a history account: transfer id and the four balances after it.
 * - 'exact': the rows in the model's order (one shard, requests one at a time: the order is the request order).
 * - 'any order': the service may order the rows differently (events of one request on several shards, the
 *   sweeper's releases): the same transfer ids, and read in the service's (timestamp) order every row must be
 *   the previous one plus that transfer's change (as the model has it) — a consistent running balance.
 */
async function compareHistory(client: LedgerClient, model: LedgerModel, accountId: string, order: 'exact' | 'any order' = 'exact'): Promise<void> {
  const withTimestamps = await historyRows(client, accountId);
  const real: Row[] = withTimestamps.map(({ timestamp: _, ...row }) => row);
  const expected = model.history(accountId) ?? [];
  if (order === 'any order') {
    const ids = (xs: readonly Row[]) => xs.map((x) => x.transferId).sort();
    assert.deepEqual(ids(real), ids(expected), `balance history of ${accountId}: transfer ids`);
    // An expired pending transfer has two rows under its id (creation, then expiry): keyed by occurrence.
    const keyed = (xs: readonly Row[]) => {
      const seen = new Map<string, number>();
      return xs.map((x) => `${x.transferId}#${seen.set(x.transferId, (seen.get(x.transferId) ?? 0) + 1).get(x.transferId)}`);
    };
    const zero = { debitsPending: 0n, debitsPosted: 0n, creditsPending: 0n, creditsPosted: 0n };
    const expectedKeys = keyed(expected);
    const delta = new Map(expected.map((row, i) => [expectedKeys[i]!, minus(row, expected[i - 1] ?? zero)]));
    let running = zero;
    for (const [i, key] of keyed(real).entries()) {
      const row = real[i]!;
      running = plus(running, delta.get(key)!);
      const previous = i > 0 ? `row ${i - 1} (${real[i - 1]!.transferId} at ${withTimestamps[i - 1]!.timestamp}): ${json(minus(real[i - 1]!, zero))}` : 'no earlier row';
      assert.deepEqual(
        row,
        { transferId: row.transferId, ...running },
        `balance history of ${accountId}: row ${i} of ${real.length} (${row.transferId} at ${withTimestamps[i]!.timestamp}) is not the previous row plus its change ${json(delta.get(key))}; ${previous}`,
      );
    }
    return;
  }
  const first = expected.findIndex((e, i) => json(e) !== json(real[i]));
  const at = first < 0 ? expected.length : first;
  assert.ok(
    first < 0 && real.length === expected.length,
    `balance history of ${accountId}: ${real.length} rows, model ${expected.length}; first difference at row ${at}: service ${json(real[at])}, model ${json(expected[at])}`,
  );
}

type Four = Omit<Row, 'transferId'>;
const minus = (a: Four, b: Four): Four => ({ debitsPending: a.debitsPending - b.debitsPending, debitsPosted: a.debitsPosted - b.debitsPosted, creditsPending: a.creditsPending - b.creditsPending, creditsPosted: a.creditsPosted - b.creditsPosted });
const plus = (a: Four, b: Four): Four => ({ debitsPending: a.debitsPending + b.debitsPending, debitsPosted: a.debitsPosted + b.debitsPosted, creditsPending: a.creditsPending + b.creditsPending, creditsPosted: a.creditsPosted + b.creditsPosted });

/**
 * The books' invariants on the database, over a closed set of accounts (no transfer of the test leaves it):
 * per ledger, pending debits = pending credits and posted debits = posted credits; no balance negative; no
 * account with a limit flag beyond its limit; every transfer id recorded once.
 */
async function assertInvariants(pool: Pool, accountIds: readonly string[], transferIds: readonly string[]): Promise<void> {
  const perLedger = await snapshotQuery<{ ledger: string; dp: string; cp: string; dpo: string; cpo: string }>(pool, 
    `SELECT ledger::text, sum(debits_pending)::text AS dp, sum(credits_pending)::text AS cp, sum(debits_posted)::text AS dpo, sum(credits_posted)::text AS cpo
     FROM account_balances_current WHERE id = ANY($1::uuid[]) GROUP BY ledger`,
    [accountIds],
  );
  assert.ok(perLedger.rows.length > 0, 'no balances found for the accounts of the test');
  for (const r of perLedger.rows) {
    assert.equal(r.dp, r.cp, `ledger ${r.ledger}: sum of debits_pending ${r.dp} != sum of credits_pending ${r.cp}`);
    assert.equal(r.dpo, r.cpo, `ledger ${r.ledger}: sum of debits_posted ${r.dpo} != sum of credits_posted ${r.cpo}`);
  }
  const beyond = await snapshotQuery(pool, 
    `SELECT id::text, flags, debits_pending::text, debits_posted::text, credits_pending::text, credits_posted::text
     FROM account_balances_current WHERE id = ANY($1::uuid[]) AND (
       (flags & 2 <> 0 AND debits_pending + debits_posted > credits_posted) OR
       (flags & 4 <> 0 AND credits_pending + credits_posted > debits_posted) OR
       debits_pending < 0 OR debits_posted < 0 OR credits_pending < 0 OR credits_posted < 0)`,
    [accountIds],
  );
  assert.deepEqual(beyond.rows, [], 'accounts beyond their limit or with a negative balance');
  const twice = await snapshotQuery(pool, 'SELECT id::text, count(*)::int AS n FROM transfers WHERE id = ANY($1::uuid[]) GROUP BY id HAVING count(*) > 1', [[...new Set(transferIds)]]);
  assert.deepEqual(twice.rows, [], 'transfer ids recorded more than once');
}

// ---- the sequential scenario: a pool of 12 accounts on one shard ---------------------------------------

interface PoolAccount {
  ledger: number;
  code?: number;
  flags?: { debitsMustNotExceedCredits?: boolean; creditsMustNotExceedDebits?: boolean; history?: boolean; closed?: boolean };
  metadata?: Record<string, string>;
}

const POOL: readonly PoolAccount[] = [
  /* 0 */ { ledger: 978, flags: { history: true } },
  /* 1 */ { ledger: 978, flags: { history: true } },
  /* 2 */ { ledger: 978 },
  /* 3 */ { ledger: 978 },
  /* 4 */ { ledger: 978, metadata: { owner: 'four' } },
  /* 5 */ { ledger: 978, flags: { debitsMustNotExceedCredits: true } },
  /* 6 */ { ledger: 978, flags: { debitsMustNotExceedCredits: true, history: true } },
  /* 7 */ { ledger: 978, flags: { creditsMustNotExceedDebits: true } },
  /* 8 */ { ledger: 978, flags: { closed: true } },
  /* 9 */ { ledger: 840 },
  /* 10 */ { ledger: 840, flags: { debitsMustNotExceedCredits: true, history: true } },
  /* 11 */ { ledger: 840, code: 7, flags: { closed: true, creditsMustNotExceedDebits: true } },
];
/** Pool indexes weighted for picking: the closed accounts come up rarely (every transfer touching them fails). */
const PICK = POOL.flatMap((a, i) => Array<number>(a.flags?.closed ? 1 : 3).fill(i));
const BY_LEDGER = new Map<number, number[]>();
for (const i of PICK) BY_LEDGER.set(POOL[i]!.ledger, [...(BY_LEDGER.get(POOL[i]!.ledger) ?? []), i]);
const otherLedger = (ledger: number) => (ledger === 978 ? 840 : 978);

/** true with probability `percent`%. */
const chance = (percent: number) => fc.integer({ min: 0, max: 99 }).map((x) => x < percent);
const metaArb = fc.nat({ max: 3 });
const weighted = <T>(value: T, times: number): T[] => Array<T>(times).fill(value);

const amountArb = fc.oneof(
  { weight: 40, arbitrary: fc.bigInt({ min: 1n, max: 400n }) },
  { weight: 2, arbitrary: fc.constant(0n) },
  { weight: 4, arbitrary: fc.bigInt({ min: 401n, max: 100_000n }) },
  { weight: 3, arbitrary: fc.constantFrom(2n ** 62n, 2n ** 62n + 1n, MAX - 1000n, MAX, MAX + 1n, U64) },
);

const singleArb = fc.record({
  kind: fc.constant('single' as const),
  debit: fc.constantFrom(...PICK),
  credit: fc.nat({ max: PICK.length - 1 }),
  crossLedger: chance(4),
  unknown: fc.constantFrom(...weighted('none' as const, 24), 'debit' as const, 'credit' as const),
  sameAccount: chance(2),
  amount: amountArb,
  ledger: fc.constantFrom(...weighted('account' as const, 30), 'other' as const, 'zero' as const),
  code: fc.constantFrom(...weighted(1, 20), 2, 2, 0),
  pending: chance(40),
  balancingDebit: chance(6),
  balancingCredit: chance(4),
  timeout: chance(50),
  badTimeout: chance(3),
  badPendingId: chance(2),
  meta: metaArb,
});

const resolveArb = fc.record({
  kind: fc.constant('resolve' as const),
  target: fc.constantFrom(...weighted('pending' as const, 14), ...weighted('recent' as const, 5), 'nonpending' as const, 'unknown' as const, 'self' as const, 'none' as const),
  ref: fc.nat(),
  op: fc.constantFrom(...weighted('post' as const, 9), ...weighted('void' as const, 8), 'post+void' as const, 'pending+post' as const),
  amount: fc.constantFrom('zero', 'zero', 'zero', 'exact', 'exact', 'less', 'less', 'less', 'more', 'one'),
  give: fc.constantFrom(...weighted('none' as const, 10), ...weighted('all' as const, 5), 'debit' as const, 'credit' as const, 'ledger' as const, 'code' as const),
  timeout: chance(3),
  balancing: chance(3),
  meta: metaArb,
});

const repeatArb = fc.record({
  kind: fc.constant('repeat' as const),
  recent: fc.boolean(),
  ref: fc.nat(),
  change: fc.constantFrom(...weighted('none' as const, 6), 'amount' as const, 'lessAmount' as const, 'zeroAmount' as const, 'metadata' as const, 'code' as const, 'timeout' as const, 'debit' as const, 'kind' as const),
});

type Linked = { linked: boolean };
type SingleSpec = (typeof singleArb extends fc.Arbitrary<infer T> ? T : never) & Linked;
type ResolveSpec = (typeof resolveArb extends fc.Arbitrary<infer T> ? T : never) & Linked;
type RepeatSpec = (typeof repeatArb extends fc.Arbitrary<infer T> ? T : never) & Linked;
type EventSpec = SingleSpec | ResolveSpec | RepeatSpec;

const eventArb: fc.Arbitrary<EventSpec> = fc
  .tuple(
    fc.oneof({ weight: 11, arbitrary: singleArb }, { weight: 6, arbitrary: resolveArb }, { weight: 3, arbitrary: repeatArb }),
    chance(15), // linked: most chains are short, some are long
  )
  .map(([e, linked]) => ({ ...e, linked }));

/** A request of 1..200 events; about one in ten ends with an open chain. */
const requestArb = fc
  .tuple(fc.integer({ min: 1, max: 200 }), chance(10))
  .chain(([n, openEnd]) => fc.array(eventArb, { minLength: n, maxLength: n }).map((events) => events.map((e, i) => (i === n - 1 && openEnd ? { ...e, linked: true } : e))));

/**
 * Turns event specs into transfers. An event may refer to any transfer built before it (its own request's
 * too); references to earlier requests prefer transfers the model has recorded (and pending transfers still
 * pending), so that posts, voids and duplicates mostly meet real transfers.
 */
class Scenario {
  readonly accounts: Account[] = POOL.map((fields) => account(fields));
  /** Never created: for debit_account_not_found / credit_account_not_found. */
  readonly unknownAccount = id();
  readonly sent: Transfer[] = [];
  readonly pendings: Transfer[] = [];
  readonly plain: Transfer[] = [];

  constructor(private readonly model: LedgerModel) {}

  get accountIds(): string[] {
    return this.accounts.map((a) => a.id);
  }

  private idOf(i: number): string {
    return this.accounts[i]!.id;
  }

  build(specs: readonly EventSpec[]): Transfer[] {
    return specs.map((s) => {
      const t = s.kind === 'single' ? this.single(s) : s.kind === 'resolve' ? this.resolve(s) : this.repeat(s);
      this.sent.push(t);
      if (t.flags!.pending) this.pendings.push(t);
      else if (!t.flags!.postPendingTransfer && !t.flags!.voidPendingTransfer) this.plain.push(t);
      return t;
    });
  }

  private single(s: SingleSpec): Transfer {
    const debitLedger = POOL[s.debit]!.ledger;
    const group = BY_LEDGER.get(s.crossLedger ? otherLedger(debitLedger) : debitLedger)!;
    let k = s.credit % group.length;
    while (group[k] === s.debit && !s.sameAccount) k = (k + 1) % group.length;
    const credit = group[k]!;
    return transfer({
      debitAccountId: s.unknown === 'debit' ? this.unknownAccount : this.idOf(s.debit),
      creditAccountId: s.unknown === 'credit' ? this.unknownAccount : this.idOf(credit),
      amount: s.amount,
      ledger: s.ledger === 'account' ? debitLedger : s.ledger === 'other' ? otherLedger(debitLedger) : 0,
      code: s.code,
      timeout: s.pending ? (s.timeout ? 3600 : 0) : s.badTimeout ? 3600 : 0,
      pendingId: s.badPendingId ? (this.pendings[s.credit % Math.max(1, this.pendings.length)]?.id ?? id()) : '',
      flags: { pending: s.pending, linked: s.linked, balancingDebit: s.balancingDebit, balancingCredit: s.balancingCredit },
      metadata: s.meta === 0 ? {} : { order: String(s.meta) },
    });
  }

  private resolve(s: ResolveSpec): Transfer {
    const self = id();
    const recent = this.pendings.slice(-4);
    const p =
      s.target === 'pending'
        ? this.earlier(this.pendings, s.ref, (t) => this.model.pendingState(t.id) === 'pending')
        : s.target === 'recent'
          ? recent[s.ref % Math.max(1, recent.length)]
          : s.target === 'nonpending'
            ? this.earlier(this.plain, s.ref, () => true)
            : undefined;
    const pendingId = s.target === 'none' ? '' : s.target === 'self' ? self : (p?.id ?? id());
    const base = p?.amount ?? 100n;
    const below = base - 1n > 1000n ? 1000n : base - 1n;
    const amount = { zero: 0n, exact: base, less: below > 0n ? 1n + (BigInt(s.ref) % below) : 0n, more: base === U64 ? base : base + 1n, one: 1n }[s.amount];
    const another = (accountId: string | undefined) => this.accounts.find((a) => a.id !== accountId && a.ledger === 978)!.id;
    const give = s.give;
    return transfer({
      id: self,
      pendingId,
      amount,
      debitAccountId: give === 'all' ? (p?.debitAccountId ?? '') : give === 'debit' ? another(p?.debitAccountId) : '',
      creditAccountId: give === 'all' ? (p?.creditAccountId ?? '') : give === 'credit' ? another(p?.creditAccountId) : '',
      ledger: give === 'all' ? (p?.ledger ?? 0) : give === 'ledger' ? otherLedger(p?.ledger ?? 978) : 0,
      code: give === 'all' ? (p?.code ?? 0) : give === 'code' ? (p?.code ?? 1) + 1 : 0,
      timeout: s.timeout ? 3600 : 0,
      flags: {
        linked: s.linked,
        postPendingTransfer: s.op !== 'void',
        voidPendingTransfer: s.op === 'void' || s.op === 'post+void',
        pending: s.op === 'pending+post',
        balancingDebit: s.balancing,
      },
      metadata: s.meta === 0 ? {} : { note: String(s.meta) },
    });
  }

  /**
   * One of `xs` picked by `ref`: mostly one the model has recorded, of those mostly one satisfying `prefer`;
   * sometimes any (a failed one, never recorded, or one of this request).
   */
  private earlier(xs: readonly Transfer[], ref: number, prefer: (t: Transfer) => boolean): Transfer | undefined {
    const recorded = xs.filter((t) => this.model.transfer(t.id) !== undefined);
    const preferred = recorded.filter(prefer);
    const from = ref % 10 < 6 && preferred.length > 0 ? preferred : ref % 10 < 9 && recorded.length > 0 ? recorded : xs;
    return from[Math.floor(ref / 10) % Math.max(1, from.length)];
  }

  private repeat(s: RepeatSpec): Transfer {
    const e = s.recent ? this.sent.slice(-6)[s.ref % Math.min(6, Math.max(1, this.sent.length))] : this.earlier(this.sent, s.ref, () => true);
    if (!e) return transfer({ debitAccountId: this.idOf(2), creditAccountId: this.idOf(3), amount: 1n, flags: { linked: s.linked } });
    const t: Transfer = { ...e, metadata: { ...e.metadata }, flags: { ...e.flags!, linked: s.linked } };
    const f = t.flags!;
    switch (s.change) {
      case 'amount':
        t.amount = e.amount === U64 ? e.amount - 1n : e.amount + 1n; // stays a uint64
        break;
      case 'lessAmount':
        // A balancing transfer sent again with less: still `exists` while it covers what the first one moved.
        t.amount = e.amount > 1n ? e.amount - 1n : e.amount;
        break;
      case 'zeroAmount':
        // A post with 0 asks for the full pending amount: a partial post sent again so is not the same post.
        t.amount = 0n;
        break;
      case 'metadata':
        t.metadata = { ...e.metadata, changed: 'yes' };
        break;
      case 'code':
        t.code = e.code + 1;
        break;
      case 'timeout':
        t.timeout = e.timeout === 0 ? 3600 : 0;
        break;
      case 'debit':
        t.debitAccountId = this.accounts.find((a) => a.id !== e.debitAccountId && a.id !== e.creditAccountId)!.id;
        break;
      case 'kind':
        if (f.postPendingTransfer !== f.voidPendingTransfer) [f.postPendingTransfer, f.voidPendingTransfer] = [f.voidPendingTransfer, f.postPendingTransfer];
        else f.pending = !f.pending;
        break;
      case 'none':
        break;
    }
    return t;
  }

  /** Funds the limited accounts so that they have something to spend (and 7 room to receive). */
  funding(): Transfer[] {
    const pay = (from: number, to: number, amount: bigint) => transfer({ debitAccountId: this.idOf(from), creditAccountId: this.idOf(to), amount, ledger: POOL[from]!.ledger });
    return [pay(2, 5, 2000n), pay(3, 6, 2000n), pay(7, 4, 1500n), pay(9, 10, 2000n), pay(0, 1, 100n)];
  }
}

// ---- account creation ---------------------------------------------------------------------------------

const accountEventArb = fc.record({
  repeat: chance(30),
  ref: fc.nat(),
  change: fc.constantFrom('none', 'none', 'none', 'ledger', 'code', 'flags', 'metadata'),
  ledger: fc.constantFrom(978, 978, 978, 840, 0),
  code: fc.constantFrom(1, 1, 1, 1, 2, 0),
  flags: fc.record({ debitsMustNotExceedCredits: chance(20), creditsMustNotExceedDebits: chance(20), history: chance(20), closed: chance(10) }),
  balance: chance(3),
  meta: metaArb,
  linked: chance(20),
});

describe('ledger against the reference model (randomized, seeded)', function () {
  this.timeout(120_000);
  let pool: Pool;
  before(() => {
    pool = testPool();
  });
  after(async () => {
    await pool.end();
  });

  for (const shards of [1, 8]) describe(`${shards === 1 ? 'one shard' : `${shards} shards`}, one request at a time`, () => {
    // One shard evaluates every event of a request in request order, exactly as the model does. On several, the
    // router sends the events whose results depend on their order (same account with balance rules, same id, a
    // pending and its post/void) to one batch in request order: the answers must be the same (ledger/router.ts).
    let ledger: TestLedger | undefined;
    let client: LedgerClient;
    before(async () => {
      ledger = await startTestLedger({ LEDGER_SHARDS: String(shards) });
      client = new LedgerClient(ledger.app.address, { autoBatch: false });
    });
    after(async () => {
      client?.close();
      await ledger?.close();
    });

    it(`CreateAccounts: same answers and accounts as the model (seed ${SEED})`, async () => {
      await checkProperty(
        fc.asyncProperty(fc.array(fc.array(accountEventArb, { minLength: 1, maxLength: 60 }), { minLength: 3, maxLength: 8 }), async (requests) => {
          const model = new LedgerModel();
          const sent: Account[] = [];
          for (const [r, specs] of requests.entries()) {
            const request = specs.map((s, i) => {
              const earlier = sent[s.ref % Math.max(1, sent.length)];
              let a: Account;
              if (s.repeat && earlier) {
                a = { ...earlier, flags: { ...earlier.flags!, linked: s.linked } };
                if (s.change === 'ledger') a.ledger = earlier.ledger + 1;
                if (s.change === 'code') a.code = earlier.code + 1;
                if (s.change === 'flags') a.flags = { ...a.flags!, history: !a.flags!.history };
                if (s.change === 'metadata') a.metadata = { ...earlier.metadata, changed: 'yes' };
              } else {
                a = account({ ledger: s.ledger, code: s.code, flags: { ...s.flags, linked: s.linked }, metadata: s.meta === 0 ? {} : { k: String(s.meta) } });
                if (s.balance) a.creditsPosted = 1n;
              }
              if (i === specs.length - 1 && r % 3 === 2) a.flags = { ...a.flags!, linked: true }; // an open chain now and then
              sent.push(a);
              return a;
            });
            await sendAccounts(client, model, request, `CreateAccounts request ${r}`);
          }
          const ids = [...new Set(sent.map((a) => a.id))];
          const found = new Map((await client.lookupAccounts(ids)).map((a) => [a.id, a]));
          for (const accountId of ids) {
            const m = model.account(accountId);
            const a = found.get(accountId);
            const real = a && {
              ledger: a.ledger,
              code: a.code,
              flags: accountFlagBits(a.flags),
              metadata: a.metadata,
              debitsPending: a.debitsPending,
              debitsPosted: a.debitsPosted,
              creditsPending: a.creditsPending,
              creditsPosted: a.creditsPosted,
            };
            assert.deepEqual(real, m && { ledger: m.ledger, code: m.code, flags: m.flags, metadata: m.metadata, ...m.balances }, `account ${accountId}`);
          }
        }),
        { seed: SEED, numRuns: 5, endOnFailure: !SHRINK },
      );
    });

    it(`CreateTransfers: same answers event by event, same balances, transfers, states and histories (seed ${SEED})`, async () => {
      let events = 0;
      let balanced = 0;
      const codes = new Map<string, number>();
      await checkProperty(
        fc.asyncProperty(fc.array(requestArb, { minLength: 12, maxLength: 20 }), async (requests) => {
          const model = new LedgerModel();
          const scenario = new Scenario(model);
          await sendAccounts(client, model, scenario.accounts, 'the account pool');
          for (const [r, spec] of [undefined, ...requests].entries()) {
            // Built just before it is sent: references follow what the model recorded so far.
            const request = spec ? scenario.build(spec) : scenario.funding();
            const real = await sendTransfers(client, model, request, `request ${r} of ${requests.length + 1}`);
            events += request.length;
            for (const c of real) codes.set(c, (codes.get(c) ?? 0) + 1);
            request.forEach((t, i) => {
              if (real[i] === 'ok' && (t.flags?.balancingDebit || t.flags?.balancingCredit) && model.transfer(t.id)!.amount < t.amount) balanced++;
            });
          }
          const ids = scenario.accountIds;
          await compareBalances(client, model, [...ids, scenario.unknownAccount]);
          await compareTransfers(client, model, scenario.sent.map((t) => t.id));
          await comparePendingStates(pool, model, scenario.pendings.map((t) => t.id));
          await assertInvariants(pool, ids, scenario.sent.map((t) => t.id));
          for (const [i, a] of POOL.entries()) if (a.flags?.history) await compareHistory(client, model, ids[i]!);
        }),
        { seed: SEED, numRuns: RUNS, endOnFailure: !SHRINK },
      );
      if (VERBOSE) console.log(events, 'events', Object.fromEntries([...codes].sort((a, b) => b[1] - a[1])));
      assert.ok(events >= 500 * RUNS, `only ${events} events were exercised`);
      // The generator must keep reaching the interesting outcomes, not only refusals (given enough events).
      if (RUNS >= 4)
        for (const c of ['ok', 'exists', 'exists_with_different_fields', 'linked_event_failed', 'linked_event_chain_open', 'overflow', 'exceeds_credits', 'ledger_mismatch', 'account_closed', 'pending_transfer_already_posted', 'id_already_failed'])
          assert.ok((codes.get(c) ?? 0) > 0, `no event was answered ${c}`);
      // Balancing transfers that moved less than their amount (compareTransfers checked the amount recorded).
      if (RUNS >= 4) assert.ok(balanced > 0, 'no balancing transfer moved less than its amount');
      // A twelfth: across seeds the share of ok answers runs from about 12% to 35% (seeds 100-119: 12.9% at the
      // least); an eighth failed one seed in twenty or so (1275423414: 921 of 7,500), with the generator unchanged.
      assert.ok((codes.get('ok') ?? 0) > events / 12, `too few ok events: ${codes.get('ok')} of ${events}`);
    });
  });

  it(`expiry: pending transfers with a 1 s timeout are released by the sweeper, as in the model (seed ${SEED})`, async () => {
    const ledger = await startTestLedger(); // 8 shards: the sweeper works per shard
    const { client } = ledger;
    const model = new LedgerModel();
    const rnd = prng(SEED);
    try {
      const accounts = [account({ flags: { history: true } }), account(), account({ flags: { debitsMustNotExceedCredits: true, history: true } }), account({ flags: { creditsMustNotExceedDebits: true } }), account()];
      const [h, plain, limited, credLimited, other] = accounts as [Account, Account, Account, Account, Account];
      const accountIds = accounts.map((a) => a.id);
      await sendAccounts(client, model, accounts, 'accounts');
      await sendTransfers(client, model, [transfer({ debitAccountId: plain.id, creditAccountId: limited.id, amount: 10_000n }), transfer({ debitAccountId: credLimited.id, creditAccountId: other.id, amount: 10_000n })], 'funding');
      const pairs: [Account, Account][] = [
        [h, plain],
        [limited, h],
        [plain, credLimited],
        [other, limited],
        [limited, credLimited],
      ];
      const short: Transfer[] = [];
      const long: Transfer[] = [];
      const request: Transfer[] = [];
      for (let i = 0; i < 40; i++) {
        const [d, c] = pairs[rnd(pairs.length)]!;
        const t = transfer({ debitAccountId: d.id, creditAccountId: c.id, amount: BigInt(1 + rnd(300)), timeout: rnd(4) === 0 ? 3600 : 1, flags: { pending: true } });
        (t.timeout === 1 ? short : long).push(t);
        request.push(t);
      }
      // A chain that fails after its pending transfer (rolled back: nothing to expire), and an open chain.
      const rolledBack = transfer({ debitAccountId: h.id, creditAccountId: plain.id, amount: 5n, timeout: 1, flags: { pending: true, linked: true } });
      const open = transfer({ debitAccountId: h.id, creditAccountId: plain.id, amount: 6n, timeout: 1, flags: { pending: true, linked: true } });
      await sendTransfers(client, model, [...request, rolledBack, transfer({ debitAccountId: h.id, creditAccountId: plain.id, amount: 0n })], 'pending transfers');
      await sendTransfers(client, model, [open], 'open chain');
      // Some are resolved before their timeout: a posted, voided or partially posted one must not expire.
      const early = short.filter(() => rnd(3) === 0);
      const resolutions = early.map((p, i) =>
        transfer({ pendingId: p.id, ledger: 0, code: 0, amount: i % 3 === 2 ? p.amount - 1n : 0n, flags: { postPendingTransfer: i % 3 !== 1, voidPendingTransfer: i % 3 === 1 } }),
      );
      await sendTransfers(client, model, resolutions, 'resolutions before expiry');
      await compareBalances(client, model, accountIds);

      await new Promise((resolve) => setTimeout(resolve, 2500));
      for (const p of short) model.expire(p.id);
      await compareBalances(client, model, accountIds);
      await comparePendingStates(pool, model, [...short, ...long, rolledBack, open].map((t) => t.id));

      // After expiry post/void are pending_transfer_expired, but the checks that come before the state still win.
      const expired = short.filter((p) => !early.includes(p));
      assert.ok(expired.length >= 5, 'too few expired pending transfers');
      const after = expired.map((p, i) => {
        switch (i % 6) {
          case 0:
            return transfer({ pendingId: p.id, ledger: 0, code: 0, flags: { postPendingTransfer: true } });
          case 1:
            return transfer({ pendingId: p.id, ledger: 0, code: 0, flags: { voidPendingTransfer: true } });
          case 2:
            return transfer({ pendingId: p.id, ledger: 0, code: 0, amount: p.amount + 1n, flags: { postPendingTransfer: true } });
          case 3:
            return transfer({ pendingId: p.id, ledger: 0, code: 0, amount: 1n, debitAccountId: p.debitAccountId, creditAccountId: p.creditAccountId, flags: { postPendingTransfer: true } });
          case 4:
            return { ...p }; // the pending transfer itself again: it still exists
          default:
            return transfer({ pendingId: p.id, ledger: 0, code: 0, amount: p.amount, flags: { voidPendingTransfer: true } });
        }
      });
      const real = await sendTransfers(client, model, after, 'events on expired pending transfers');
      assert.ok(real.includes('pending_transfer_expired'));
      // Retries of the resolutions made before expiry are `exists`; the long ones can still be posted.
      const later = [...resolutions.map((r) => ({ ...r })), ...long.map((p) => transfer({ pendingId: p.id, ledger: 0, code: 0, flags: { postPendingTransfer: true } }))];
      await sendTransfers(client, model, later, 'retries, and posts of the long ones');
      await compareBalances(client, model, accountIds);
      await comparePendingStates(pool, model, [...short, ...long].map((t) => t.id));
      const sent = [...request, rolledBack, open, ...resolutions, ...after, ...later];
      await compareTransfers(client, model, sent.map((t) => t.id));
      await assertInvariants(pool, accountIds, sent.map((t) => t.id));
      for (const a of [h, limited]) await compareHistory(client, model, a.id, 'any order'); // several shards
    } finally {
      await ledger.close();
    }
  });

  it(`expiry before the sweeper: a post or void after the timeout is pending_transfer_expired, then released (seed ${SEED})`, async () => {
    const model = new LedgerModel();
    const rnd = prng(SEED ^ 0xe1);
    const accounts = [account({ flags: { history: true } }), account(), account({ flags: { creditsMustNotExceedDebits: true } })];
    const [h, plain, credLimited] = accounts as [Account, Account, Account];
    const accountIds = accounts.map((a) => a.id);
    const short: Transfer[] = [];
    const long: Transfer[] = [];
    const sent: Transfer[] = [];
    // This instance never sweeps (another instance on the test database may: the codes are the same either way).
    const quiet = await startTestLedger({ LEDGER_EXPIRY_SWEEP_MS: '3600000' });
    try {
      await sendAccounts(quiet.client, model, accounts, 'accounts');
      await sendTransfers(quiet.client, model, [transfer({ debitAccountId: credLimited.id, creditAccountId: plain.id, amount: 5000n })], 'funding');
      for (let i = 0; i < 12; i++) {
        const [d, c] = i % 2 ? [h, credLimited] : [plain, h];
        (i % 4 === 3 ? long : short).push(transfer({ debitAccountId: d.id, creditAccountId: c.id, amount: BigInt(1 + rnd(200)), timeout: i % 4 === 3 ? 3600 : 1, flags: { pending: true } }));
      }
      await sendTransfers(quiet.client, model, [...short, ...long], 'pending transfers');
      await new Promise((resolve) => setTimeout(resolve, 1300));
      for (const p of short) model.timeoutPassed(p.id);
      const resolutions = [...short, ...long].map((p, i) => transfer({ pendingId: p.id, ledger: 0, code: 0, flags: { postPendingTransfer: i % 2 === 0, voidPendingTransfer: i % 2 === 1 } }));
      const real = await sendTransfers(quiet.client, model, resolutions, 'post/void after the timeout, before any sweep');
      assert.equal(real.filter((c) => c === 'pending_transfer_expired').length, short.length);
      sent.push(...short, ...long, ...resolutions);
    } finally {
      await quiet.close();
    }
    // An instance that sweeps releases them.
    const sweeping = await startTestLedger();
    try {
      // Until its sweeps released them (a fixed wait failed on a loaded machine), then compare everything.
      const deadline = Date.now() + 15_000;
      const stillPending = async () => (await pool.query('SELECT count(*)::int AS n FROM pending_transfers WHERE id = ANY($1::uuid[]) AND state = 1', [short.map((t) => t.id)])).rows[0].n as number;
      while ((await stillPending()) > 0) {
        assert.ok(Date.now() < deadline, 'the sweeping instance did not release the expired pending transfers within 15 s');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      for (const p of short) model.expire(p.id);
      await compareBalances(sweeping.client, model, accountIds);
      await comparePendingStates(pool, model, [...short, ...long].map((t) => t.id));
      await compareTransfers(sweeping.client, model, sent.map((t) => t.id));
      await assertInvariants(pool, accountIds, sent.map((t) => t.id));
      await compareHistory(sweeping.client, model, h.id, 'any order');
    } finally {
      await sweeping.close();
    }
  });

  it(`concurrent clients on hot accounts across 8 shards: all ok, same balances as the model (seed ${SEED})`, async () => {
    const ledger = await startTestLedger(); // 8 shards: batches of several shards commit concurrently
    const model = new LedgerModel();
    const rnd = prng(SEED ^ 0x5eed);
    const hot = account();
    // A second, smaller stream goes to a hot account with history: its rows come from every shard.
    const hotHistory = account({ flags: { history: true } });
    const funder = account();
    /** A lane is a sequence of requests on its own source account; two lanes share each client (auto-batched). */
    interface Lane {
      source: Account;
      available: bigint;
      open: Transfer[];
      sent: Transfer[];
    }
    const clients = Array.from({ length: 8 }, () => ({
      client: new LedgerClient(ledger.app.address),
      lanes: Array.from({ length: 2 }, (): Lane => ({ source: account({ flags: { debitsMustNotExceedCredits: true } }), available: 3000n, open: [], sent: [] })),
    }));
    const lanes = clients.flatMap((c) => c.lanes);
    const allAccounts = [hot, hotHistory, funder, ...lanes.map((l) => l.source)];
    let events = 0;
    try {
      await sendAccounts(ledger.client, model, allAccounts, 'accounts');
      await sendTransfers(ledger.client, model, lanes.map((l) => transfer({ debitAccountId: funder.id, creditAccountId: l.source.id, amount: l.available })), 'funding');
      const runLane = async (client: LedgerClient, lane: Lane) => {
        for (let round = 0; round < ROUNDS; round++) {
          const request: Transfer[] = [];
          let refund = 0n; // credits from the hot account count only once the request is answered
          for (let k = 1 + rnd(8); k > 0; k--) {
            const roll = rnd(100);
            const amount = BigInt(1 + rnd(40));
            if (roll < 35 && lane.available >= amount) {
              request.push(transfer({ debitAccountId: lane.source.id, creditAccountId: rnd(4) === 0 ? hotHistory.id : hot.id, amount }));
              lane.available -= amount;
            } else if (roll < 60 && lane.available >= amount) {
              const p = transfer({ debitAccountId: lane.source.id, creditAccountId: rnd(4) === 0 ? hotHistory.id : hot.id, amount, timeout: rnd(2) ? 3600 : 0, flags: { pending: true } });
              request.push(p);
              lane.open.push(p);
              lane.available -= amount;
            } else if (roll < 85 && lane.open.length > 0) {
              // Sometimes of a pending transfer of this very request (the router sends it to the same shard).
              const p = lane.open.splice(rnd(lane.open.length), 1)[0]!;
              const post = rnd(3) !== 0;
              const posted = post ? BigInt(rnd(Number(p.amount) + 1)) : 0n; // 0: the whole amount
              const named = rnd(2) === 0; // naming the debit account, or not (the service looks it up)
              request.push(transfer({ pendingId: p.id, ledger: 0, code: 0, amount: posted, debitAccountId: named ? p.debitAccountId : '', flags: { postPendingTransfer: post, voidPendingTransfer: !post } }));
              if (!post) lane.available += p.amount;
              else if (posted !== 0n) lane.available += p.amount - posted;
            } else if (roll < 89 && lane.available >= amount) {
              // Reserved and released in one request: the batch's net change on the history account is zero.
              const p = transfer({ debitAccountId: lane.source.id, creditAccountId: hotHistory.id, amount, flags: { pending: true } });
              request.push(p, transfer({ pendingId: p.id, ledger: 0, code: 0, flags: { voidPendingTransfer: true } }));
            } else if (roll < 95 && lane.available >= amount) {
              // A chain out of the source and back from the hot account (the chain runs on the source's shard).
              request.push(transfer({ debitAccountId: lane.source.id, creditAccountId: hot.id, amount, flags: { linked: true } }));
              request.push(transfer({ debitAccountId: hot.id, creditAccountId: lane.source.id, amount: amount + 1n }));
              lane.available -= amount;
              refund += amount + 1n;
            } else {
              // From the hot account's shard into the limited source account.
              const back = BigInt(1 + rnd(20));
              request.push(transfer({ debitAccountId: hot.id, creditAccountId: lane.source.id, amount: back }));
              refund += back;
            }
          }
          const real = (await client.createTransfers(request)).map((r) => transferCodeName(r.code));
          lane.available += refund;
          lane.sent.push(...request);
          events += request.length;
          assert.deepEqual(real, request.map(() => 'ok'), `every event of a lane is valid, yet: ${json(request)}`);
          // Lanes share nothing but the hot accounts, which have no limit: applying the requests to the model in
          // completion order gives the same answers and the same final balances.
          assertSameCodes('concurrent request', request, real, model.createTransfers(request));
        }
      };
      await Promise.all(clients.flatMap((c) => c.lanes.map((lane) => runLane(c.client, lane))));
      assert.ok(events > 400, `only ${events} events`);
      const ids = allAccounts.map((a) => a.id);
      await compareBalances(ledger.client, model, ids);
      const sent = lanes.flatMap((l) => l.sent);
      await compareTransfers(ledger.client, model, sent.map((t) => t.id));
      await comparePendingStates(pool, model, sent.filter((t) => t.flags!.pending).map((t) => t.id));
      await assertInvariants(pool, ids, sent.map((t) => t.id));
      await compareHistory(ledger.client, model, hotHistory.id, 'any order');
    } finally {
      clients.forEach((c) => c.client.close());
      await ledger.close();
    }
  });
});
