import { AppError, ResourceExhaustedError } from '../lib/errors.js';
import { BalanceRuleAccounts, type BalanceRulesReader } from './balance-rule-accounts.js';
import { ShardBatcher, QueueBudget, type BatchObserver, type BatchRunner, type BatcherOptions } from './batcher.js';
import { CommitHorizon } from './clock.js';
import { SLOT_SOFT_LIMIT } from './store.js';
import {
  AccountFlag,
  BALANCE_RULE_FLAGS,
  balancedAccounts,
  TransferFlag,
  hasFlag,
  type AccountInput,
  type AccountResultCode,
  type EventResult,
  type Submission,
  type SubmissionResult,
  type TransferInput,
  type TransferResultCode,
} from './model.js';

/**
 * Virtual shard of an id. The last 8 hex digits are random in UUID v4 and v7 alike (v7 starts with a clock,
 * which would pile every new id onto one shard).
 */
export function shardOf(id: string, shardCount: number): number {
  return Number.parseInt(id.slice(-8), 16) % shardCount;
}

export class ShardNotOwnedError extends AppError {
  constructor(
    readonly shard: number,
    readonly owner: string | undefined,
  ) {
    super('unavailable', 'shard_not_owned', `shard ${shard} is not owned by this ledger instance${owner ? `; it is served by ${owner}` : ''}`, {
      shard,
      ...(owner ? { owner } : {}),
      retryAfterSeconds: 1,
    });
  }
}

/**
 * Routes events to the batcher of the shard that owns them: transfers by debit account, accounts by id.
 * A linked chain travels whole with its first event, so it always runs inside one batch transaction. Chains of
 * one request whose results depend on their order (two events with one id, a post/void naming a pending transfer of
 * the same request, two posts/voids of one pending, events sharing an account with balance rules:
 * transferDependencies) travel together
 * with the first of them, in request order, so that they are evaluated in order in one batch.
 */
export class LedgerRouter {
  private readonly batchers = new Map<number, ShardBatcher>();
  private readonly balanceRules: BalanceRuleAccounts;
  /** This instance's batches as open writes (CommitHorizon); its clock starts at the latest shard clock (ledger/app.ts). */
  readonly commits = new CommitHorizon();
  readonly budget: QueueBudget;
  /** Events per batch (LEDGER_BATCH_MAX): the most the sweeper submits to one shard at once. */
  readonly maxBatchEvents: number;

  constructor(
    readonly shardCount: number,
    readonly ownedShards: readonly number[],
    run: BatchRunner,
    options: BatcherOptions & { maxQueuedEvents: number; readBalanceRules: BalanceRulesReader },
    observer: BatchObserver = {},
    /** host:port of the instance that owns each shard this one does not (where to send the caller). */
    private readonly owners: ReadonlyMap<number, string> = new Map(),
  ) {
    this.balanceRules = new BalanceRuleAccounts(options.readBalanceRules);
    this.budget = new QueueBudget(options.maxQueuedEvents);
    this.maxBatchEvents = options.maxEvents;
    // Accounts a batch found wide have balance rules from now on.
    const runNoticingWide: BatchRunner = async (task) => {
      const reply = await run(task);
      if (reply.ok) for (const id of reply.outcome.wideAccountIds ?? []) this.balanceRules.remember(id, true);
      return reply;
    };
    for (const shard of ownedShards) this.batchers.set(shard, new ShardBatcher(shard, runNoticingWide, options, this.budget, observer, this.commits));
  }

  /**
   * The latest timestamp at or below which no transfer can commit any more, for listings in timestamp order
   * (ledger/README.md "Timestamps"): shards stamp a batch when it starts, so another shard's batch still running
   * can commit transfers below ones already visible (CommitHorizon.horizon; `readsUpTo`: the listing's own
   * timestamp_max). Undefined when other instances own shards: their batches are not known here.
   */
  async listingHorizon(maxWaitMs: number, readsUpTo?: bigint): Promise<bigint | undefined> {
    return this.ownedShards.length < this.shardCount ? undefined : this.commits.horizon(maxWaitMs, { readsUpTo });
  }

  queueDepths(): Map<number, number> {
    return new Map([...this.batchers].map(([shard, b]) => [shard, b.depth]));
  }

  async createAccounts(events: readonly AccountInput[]): Promise<EventResult<AccountResultCode>[]> {
    const chains = chainsOf(events, (e) => hasFlag(e.flags, AccountFlag.linked));
    const results = await this.route<AccountInput, EventResult<AccountResultCode>>(events, chains, (e) => e.id, (chunk) => ({ kind: 'accounts', events: chunk }), sameIdDependencies(events).pairs);
    // `exists` means the same fields, flags included.
    results.forEach((r, i) => (r.code === 'ok' || r.code === 'exists') && this.balanceRules.remember(events[i]!.id, hasFlag(events[i]!.flags, BALANCE_RULE_FLAGS)));
    return results;
  }

  /**
   * `routingKey` names the account whose shard serializes a transfer (for post/void: the pending's debit account);
   * `accountsOf` the accounts it changes (for a post/void naming none: its pending's, when that is known).
   */
  async createTransfers(
    events: readonly TransferInput[],
    routingKey: (e: TransferInput) => string,
    accountsOf: (e: TransferInput) => readonly string[] = namedAccounts,
  ): Promise<EventResult<TransferResultCode>[]> {
    const chains = chainsOf(events, (e) => hasFlag(e.flags, TransferFlag.linked));
    const order = await this.accountsToOrder(events, chains.chainOf, accountsOf);
    return this.route(events, chains, routingKey, (chunk) => ({ kind: 'transfers', events: chunk }), transferDependencies(events, order));
  }

  /**
   * Accounts whose events in this request must run in request order (`ruled`): named by more than one chain, and
   * with balance rules, or made wide by an amount of the request (an overflow check then reads their balances).
   * With them, each event's accounts (`accounts`, by event index; none for a request of one chain).
   */
  private async accountsToOrder(events: readonly TransferInput[], chainOf: readonly number[], accountsOf: (e: TransferInput) => readonly string[]): Promise<AccountsToOrder> {
    if (chainOf.length < 2 || chainOf[chainOf.length - 1] === 0) return NOTHING_TO_ORDER;
    const accounts = events.map(accountsOf);
    const firstChain = new Map<string, number>();
    const shared = new Set<string>();
    accounts.forEach((named, i) => {
      for (const accountId of named) {
        const first = firstChain.get(accountId);
        if (first === undefined) firstChain.set(accountId, chainOf[i]!);
        else if (first !== chainOf[i]) shared.add(accountId);
      }
    });
    if (shared.size === 0) return NOTHING_TO_ORDER;
    const ruled = await this.balanceRules.among(shared);
    events.forEach((e, i) => {
      // Like a limit, a balancing transfer's amount depends on every earlier event of the account it balances.
      const readInFull = e.amount > SLOT_SOFT_LIMIT ? accounts[i]! : balancedAccounts(e);
      for (const accountId of readInFull) if (shared.has(accountId)) ruled.add(accountId);
    });
    return { ruled, accounts };
  }

  async expire(shard: number, pendingIds: string[]): Promise<number> {
    const result = await this.batcher(shard).submit({ kind: 'expirations', pendingIds });
    return result.kind === 'expirations' ? result.expired : 0;
  }

  private batcher(shard: number): ShardBatcher {
    const b = this.batchers.get(shard);
    if (!b) throw new ShardNotOwnedError(shard, this.owners.get(shard));
    return b;
  }

  private async route<E, R>(
    events: readonly E[],
    { chains, chainOf }: Chains,
    key: (e: E) => string,
    toSubmission: (chunk: E[]) => Submission,
    dependencies: readonly [number, number][],
  ): Promise<R[]> {
    // Chains that depend on each other go together (union-find; the root is the component's first chain), to the
    // shard of the first: any shard's batch evaluates them correctly, one batch evaluates them in order.
    const parent = chains.map((_, c) => c);
    const root = (c: number): number => {
      while (parent[c] !== c) c = parent[c] = parent[parent[c]!]!;
      return c;
    };
    for (const [a, b] of dependencies) {
      const [ra, rb] = [root(chainOf[a]!), root(chainOf[b]!)];
      if (ra !== rb) parent[Math.max(ra, rb)] = Math.min(ra, rb);
    }
    // Then gather each shard's chains in request order.
    const perShard = new Map<number, { events: E[]; indexes: number[] }>();
    chains.forEach(({ start, end }, c) => {
      const shard = shardOf(key(events[chains[root(c)]!.start]!), this.shardCount);
      let group = perShard.get(shard);
      if (!group) perShard.set(shard, (group = { events: [], indexes: [] }));
      for (let i = start; i <= end; i++) {
        group.events.push(events[i]!);
        group.indexes.push(i);
      }
    });
    // Admit the whole request or none of it: a refusal after some shards had queued their part would answer
    // an error for events that still commit.
    for (const shard of perShard.keys()) this.batcher(shard);
    if (this.budget.used + events.length > this.budget.max) {
      throw new ResourceExhaustedError('ledger_overloaded', `ledger queue full (${this.budget.used} events waiting)`, 1);
    }
    const results: R[] = new Array(events.length);
    // Every part settled before the caller hears anything: answered at the first failure, it could retry (or the
    // server stop, its handlers done) while another part of the request was still committing.
    const parts = await Promise.allSettled(
      [...perShard].map(async ([shard, group]) => {
        const reply: SubmissionResult = await this.batcher(shard).submit(toSubmission(group.events));
        if (reply.kind === 'expirations') throw new Error('unreachable: expiration reply to an event submission');
        reply.results.forEach((r, i) => (results[group.indexes[i]!] = r as R));
      }),
    );
    const failed = parts.find((p): p is PromiseRejectedResult => p.status === 'rejected');
    if (failed) throw failed.reason;
    return results;
  }
}

interface Chains {
  chains: { start: number; end: number }[];
  /** Event index -> chain index. */
  chainOf: number[];
}

/** A request's linked chains: a chain ends at the first event without the linked flag. */
function chainsOf<E>(events: readonly E[], isLinked: (e: E) => boolean): Chains {
  const chains: { start: number; end: number }[] = [];
  const chainOf: number[] = new Array(events.length);
  for (let start = 0; start < events.length; ) {
    let end = start;
    while (end < events.length - 1 && isLinked(events[end]!)) end++;
    for (let i = start; i <= end; i++) chainOf[i] = chains.length;
    chains.push({ start, end });
    start = end + 1;
  }
  return { chains, chainOf };
}

interface AccountsToOrder {
  ruled: ReadonlySet<string>;
  accounts: readonly (readonly string[])[];
}

const NOTHING_TO_ORDER: AccountsToOrder = { ruled: new Set(), accounts: [] };

/** The accounts a transfer event names (a post/void may name none). */
const namedAccounts = (e: TransferInput): string[] => [e.debitAccountId, e.creditAccountId].filter((id) => id !== '');

/**
 * Pairs of event indexes of one request that must run in one batch, in request order: two events with the same
 * id (the later one is answered from the earlier: `exists`, ...; chains of different shards can hold them).
 * Returns, too, the index of the first event with each id (the one that creates it).
 */
function sameIdDependencies<E extends { id: string }>(events: readonly E[]): { pairs: [number, number][]; firstWithId: Map<string, number> } {
  const pairs: [number, number][] = [];
  const firstWithId = new Map<string, number>();
  events.forEach((e, i) => {
    const earlier = firstWithId.get(e.id);
    if (earlier === undefined) firstWithId.set(e.id, i);
    else pairs.push([earlier, i]);
  });
  return { pairs, firstWithId };
}

/**
 * The same for transfers, and also:
 * - a post/void and the event of the same request whose id is its pending id (before it: the post/void must see
 *   the pending transfer; after it: it must not, whichever shard's batch commits first);
 * - two posts/voids of one pending transfer (the first resolves it; chains can carry them to different shards);
 * - consecutive events changing an account of `ruled` (balance rules: a limit's or an overflow check, or the
 *   balances history records, depends on every earlier event of the account).
 */
function transferDependencies(events: readonly TransferInput[], { ruled, accounts }: AccountsToOrder): [number, number][] {
  const { pairs, firstWithId } = sameIdDependencies(events);
  const lastOfAccount = new Map<string, number>();
  const lastResolutionOf = new Map<string, number>();
  events.forEach((e, i) => {
    if (e.pendingId !== '' && hasFlag(e.flags, TransferFlag.postPendingTransfer | TransferFlag.voidPendingTransfer)) {
      const j = firstWithId.get(e.pendingId);
      if (j !== undefined) pairs.push([j, i]);
      const previous = lastResolutionOf.get(e.pendingId);
      if (previous !== undefined) pairs.push([previous, i]);
      lastResolutionOf.set(e.pendingId, i);
    }
    if (ruled.size === 0) return;
    for (const accountId of accounts[i]!) {
      if (!ruled.has(accountId)) continue;
      const previous = lastOfAccount.get(accountId);
      if (previous !== undefined) pairs.push([previous, i]);
      lastOfAccount.set(accountId, i);
    }
  });
  return pairs;
}
