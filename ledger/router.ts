import { AppError, ResourceExhaustedError } from '../lib/errors.js';
import { ShardBatcher, QueueBudget, type BatchObserver, type BatchRunner, type BatcherOptions } from './batcher.js';
import {
  AccountFlag,
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
 * one request that depend on each other (a post/void naming a pending transfer of the same request) travel
 * together with the first of them, in request order, so that they are evaluated in order in one batch.
 */
export class LedgerRouter {
  private readonly batchers = new Map<number, ShardBatcher>();
  readonly budget: QueueBudget;

  constructor(
    readonly shardCount: number,
    readonly ownedShards: readonly number[],
    run: BatchRunner,
    options: BatcherOptions & { maxQueuedEvents: number },
    observer: BatchObserver = {},
    /** host:port of the instance that owns each shard this one does not (where to send the caller). */
    private readonly owners: ReadonlyMap<number, string> = new Map(),
  ) {
    this.budget = new QueueBudget(options.maxQueuedEvents);
    for (const shard of ownedShards) this.batchers.set(shard, new ShardBatcher(shard, run, options, this.budget, observer));
  }

  queueDepths(): Map<number, number> {
    return new Map([...this.batchers].map(([shard, b]) => [shard, b.depth]));
  }

  createAccounts(events: readonly AccountInput[]): Promise<EventResult<AccountResultCode>[]> {
    return this.route(events, (e) => hasFlag(e.flags, AccountFlag.linked), (e) => e.id, (chunk) => ({ kind: 'accounts', events: chunk }), noDependencies);
  }

  /** `routingKey` names the account whose shard serializes a transfer (for post/void: the pending's debit account). */
  createTransfers(events: readonly TransferInput[], routingKey: (e: TransferInput) => string): Promise<EventResult<TransferResultCode>[]> {
    return this.route(events, (e) => hasFlag(e.flags, TransferFlag.linked), routingKey, (chunk) => ({ kind: 'transfers', events: chunk }), pendingDependencies);
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
    isLinked: (e: E) => boolean,
    key: (e: E) => string,
    toSubmission: (chunk: E[]) => Submission,
    dependencies: (events: readonly E[]) => [number, number][],
  ): Promise<R[]> {
    // Group into chains (chainOf: event index -> chain index).
    const chains: { start: number; end: number }[] = [];
    const chainOf: number[] = new Array(events.length);
    for (let start = 0; start < events.length; ) {
      let end = start;
      while (end < events.length - 1 && isLinked(events[end]!)) end++;
      for (let i = start; i <= end; i++) chainOf[i] = chains.length;
      chains.push({ start, end });
      start = end + 1;
    }
    // Chains that depend on each other go together (union-find; the root is the component's first chain), to the
    // shard of the first: any shard's batch evaluates them correctly, one batch evaluates them in order.
    const parent = chains.map((_, c) => c);
    const root = (c: number): number => {
      while (parent[c] !== c) c = parent[c] = parent[parent[c]!]!;
      return c;
    };
    for (const [a, b] of dependencies(events)) {
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
    await Promise.all(
      [...perShard].map(async ([shard, group]) => {
        const reply: SubmissionResult = await this.batcher(shard).submit(toSubmission(group.events));
        if (reply.kind === 'expirations') throw new Error('unreachable: expiration reply to an event submission');
        reply.results.forEach((r, i) => (results[group.indexes[i]!] = r as R));
      }),
    );
    return results;
  }
}

const noDependencies = (): [number, number][] => [];

/**
 * Pairs of event indexes of one request that must run in one batch: a post/void and the event of the same
 * request whose id is its pending id (before it: the post/void must see the pending transfer; after it: it must
 * not, whichever shard's batch commits first).
 */
function pendingDependencies(events: readonly TransferInput[]): [number, number][] {
  const pairs: [number, number][] = [];
  let indexOf: Map<string, number> | undefined;
  events.forEach((e, i) => {
    if (e.pendingId === '' || !hasFlag(e.flags, TransferFlag.postPendingTransfer | TransferFlag.voidPendingTransfer)) return;
    if (!indexOf) {
      // The first event with an id is the one that creates it (a later one with the same id is `exists`).
      indexOf = new Map();
      for (let j = events.length - 1; j >= 0; j--) indexOf.set(events[j]!.id, j);
    }
    const j = indexOf.get(e.pendingId);
    if (j !== undefined) pairs.push([j, i]);
  });
  return pairs;
}
