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
 * A linked chain travels whole with its first event, so it always runs inside one batch transaction.
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
    return this.route(events, (e) => hasFlag(e.flags, AccountFlag.linked), (e) => e.id, (chunk) => ({ kind: 'accounts', events: chunk }));
  }

  /** `routingKey` names the account whose shard serializes a transfer (for post/void: the pending's debit account). */
  createTransfers(events: readonly TransferInput[], routingKey: (e: TransferInput) => string): Promise<EventResult<TransferResultCode>[]> {
    return this.route(events, (e) => hasFlag(e.flags, TransferFlag.linked), routingKey, (chunk) => ({ kind: 'transfers', events: chunk }));
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
  ): Promise<R[]> {
    // Group into chains, then gather each shard's chains in request order.
    const perShard = new Map<number, { events: E[]; indexes: number[] }>();
    for (let start = 0; start < events.length; ) {
      let end = start;
      while (end < events.length - 1 && isLinked(events[end]!)) end++;
      const shard = shardOf(key(events[start]!), this.shardCount);
      let group = perShard.get(shard);
      if (!group) perShard.set(shard, (group = { events: [], indexes: [] }));
      for (let i = start; i <= end; i++) {
        group.events.push(events[i]!);
        group.indexes.push(i);
      }
      start = end + 1;
    }
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
