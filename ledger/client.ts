import { credentials, Metadata, status, type ChannelCredentials, type ServiceError } from '@grpc/grpc-js';
import { context, type Context, type Link } from '@opentelemetry/api';
import { callUnary, raceDeadline, type UnaryMethod } from '../lib/grpc.js';
import { mergedCallSpan } from '../observability/tracing.js';
import {
  LedgerServiceClient,
  PendingState,
  type Account,
  type AccountFlags,
  type TransferFlags,
  type AccountBalance,
  type AccountFilter,
  type CreateAccountResult,
  type CreateTransferResult,
  type Transfer,
} from '../proto/gen/ledger/v1/ledger.js';
import { encodedSizeBound } from './encoded-size.js';
import { MAX_BATCH_EVENTS } from './model.js';

export interface LedgerClientOptions {
  /** Merge concurrent createTransfers calls into shared requests (as TigerBeetle's clients do). */
  autoBatch?: boolean;
  /** Requests in flight at once when auto-batching; later calls wait and ride along in the next request. */
  maxInFlight?: number;
  deadlineMs?: number;
  /**
   * How the channel is secured: `channelCredentials(config)` (lib/grpc-tls.ts) in every service and CLI. Default
   * plaintext, which a TLS-configured ledger refuses: a client left on it fails closed.
   */
  credentials?: ChannelCredentials;
  /** Extra grpc-js channel options (e.g. a private subchannel pool, so that several clients use several connections). */
  channelOptions?: Record<string, string | number>;
}

/** One call's own options. */
export interface CallOptions {
  /** This call's deadline instead of the client's `deadlineMs` (a caller sharing one deadline across retries). */
  deadlineMs?: number;
}

const NO_ACCOUNT_FLAGS: AccountFlags = { linked: false, debitsMustNotExceedCredits: false, creditsMustNotExceedDebits: false, history: false, closed: false };
const NO_TRANSFER_FLAGS: TransferFlags = { linked: false, pending: false, postPendingTransfer: false, voidPendingTransfer: false, balancingDebit: false, balancingCredit: false };

/** A CreateAccounts event: zero balances and no flags unless given. */
export function newAccount(fields: Partial<Omit<Account, 'flags'>> & { id: string; flags?: Partial<AccountFlags> }): Account {
  return {
    ledger: 0,
    code: 0,
    debitsPending: 0n,
    debitsPosted: 0n,
    creditsPending: 0n,
    creditsPosted: 0n,
    metadata: {},
    timestamp: 0n,
    ...fields,
    flags: { ...NO_ACCOUNT_FLAGS, ...fields.flags },
  };
}

/** A CreateTransfers event: empty or zero where not given. */
export function newTransfer(fields: Partial<Omit<Transfer, 'flags'>> & { id: string; flags?: Partial<TransferFlags> }): Transfer {
  return {
    debitAccountId: '',
    creditAccountId: '',
    amount: 0n,
    pendingId: '',
    ledger: 0,
    code: 0,
    timeout: 0,
    pendingState: PendingState.PENDING_STATE_UNSPECIFIED,
    metadata: {},
    timestamp: 0n,
    ...fields,
    flags: { ...NO_TRANSFER_FLAGS, ...fields.flags },
  };
}

interface QueuedCall {
  transfers: Transfer[];
  /** An upper bound of the transfers' encoded size. */
  bytes: number;
  /** Epoch ms: the caller's deadline, counted from its call (as a lone call's would be), not from its request. */
  deadline: number;
  /** The caller's trace context: its request is sent in it, or linked to it when merged with others'. */
  context: Context;
  resolve: (results: CreateTransferResult[]) => void;
  reject: (error: unknown) => void;
}

/**
 * Bytes a merged request may have: well under the 32 MB a message may have (client and ledger, ledger/app.ts), so
 * calls that each fit in a message also fit together (with full metadata a transfer is ~28 KB: 8,190 are ~225 MB).
 */
const MAX_MERGED_BYTES = 24 * 1024 * 1024;

/**
 * Promise client for ledger.v1.LedgerService. With auto-batching, many callers each sending a few transfers
 * share requests of up to 8,190 events (and MAX_MERGED_BYTES), so small callers get the throughput of the batched API. A call whose
 * last event opens a linked chain is never merged (the chain would swallow the next caller's events), and
 * when a merged request is refused as malformed each call is retried alone, so one bad caller fails alone.
 */
export class LedgerClient {
  readonly raw: LedgerServiceClient;
  private readonly queue: QueuedCall[] = [];
  private inFlight = 0;
  private scheduled = false;
  private readonly autoBatch: boolean;
  private readonly maxInFlight: number;
  private readonly deadlineMs: number;

  constructor(target: string, options: LedgerClientOptions = {}) {
    this.raw = new LedgerServiceClient(target, options.credentials ?? credentials.createInsecure(), {
      'grpc.max_receive_message_length': 32 * 1024 * 1024,
      'grpc.max_send_message_length': 32 * 1024 * 1024,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      ...options.channelOptions,
    });
    this.autoBatch = options.autoBatch ?? true;
    this.maxInFlight = options.maxInFlight ?? 4;
    this.deadlineMs = options.deadlineMs ?? 30_000;
  }

  close(): void {
    this.raw.close();
  }

  private call<Req, Res>(method: UnaryMethod<Req, Res>, request: Req, options: CallOptions): Promise<Res> {
    return callUnary(this.raw, method, request, options.deadlineMs ?? this.deadlineMs);
  }

  async createAccounts(accounts: Account[], options: CallOptions = {}): Promise<CreateAccountResult[]> {
    return (await this.call(this.raw.createAccounts, { accounts }, options)).results;
  }

  createTransfers(transfers: Transfer[], options: CallOptions = {}): Promise<CreateTransferResult[]> {
    const deadlineMs = options.deadlineMs ?? this.deadlineMs;
    // An empty call is a malformed request of its own: merged with others it would vanish unanswered.
    if (!this.autoBatch || transfers.length === 0) return this.sendTransfers(transfers, deadlineMs);
    const deadline = Date.now() + deadlineMs;
    const queued = new Promise<CreateTransferResult[]>((resolve, reject) => {
      this.queue.push({ transfers, bytes: transfers.reduce((sum, t) => sum + encodedSizeBound(t), 0), deadline, context: context.active(), resolve, reject });
      this.schedule();
    });
    // Its own deadline, however long it waited for a request slot (a call still queued then is never sent).
    return raceDeadline(queued, deadline, deadlineExceeded);
  }

  async lookupAccounts(ids: string[], options: CallOptions = {}): Promise<Account[]> {
    return (await this.call(this.raw.lookupAccounts, { ids }, options)).accounts;
  }

  async lookupTransfers(ids: string[], options: CallOptions = {}): Promise<Transfer[]> {
    return (await this.call(this.raw.lookupTransfers, { ids }, options)).transfers;
  }

  async getAccountTransfers(filter: Partial<AccountFilter> & { accountId: string }, options: CallOptions = {}): Promise<{ transfers: Transfer[]; nextCursor: string }> {
    return this.call(this.raw.getAccountTransfers, { filter: fullFilter(filter) }, options);
  }

  async getAccountBalances(filter: Partial<AccountFilter> & { accountId: string }, options: CallOptions = {}): Promise<{ balances: AccountBalance[]; nextCursor: string }> {
    return this.call(this.raw.getAccountBalances, { filter: fullFilter(filter) }, options);
  }

  async getAccountBalanceAt(accountId: string, timestamp: bigint, options: CallOptions = {}): Promise<AccountBalance | undefined> {
    return (await this.call(this.raw.getAccountBalanceAt, { accountId, timestamp }, options)).balance;
  }

  private async sendTransfers(transfers: Transfer[], deadlineMs: number, span?: { parent: Context; links?: Link[] }): Promise<CreateTransferResult[]> {
    return (await callUnary(this.raw, this.raw.createTransfers, { transfers }, deadlineMs, span)).results;
  }

  private schedule(): void {
    if (this.scheduled || this.inFlight >= this.maxInFlight || this.queue.length === 0) return;
    this.scheduled = true;
    // setImmediate lets every caller of this turn of the event loop join the request.
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  private flush(): void {
    while (this.inFlight < this.maxInFlight && this.queue.length > 0) {
      const calls: QueuedCall[] = [];
      let size = 0;
      let bytes = 0;
      const now = Date.now();
      while (this.queue.length > 0) {
        const next = this.queue[0]!;
        if (next.deadline <= now) {
          // Its caller has been answered DEADLINE_EXCEEDED already: sent now, it would be written unknown to anyone.
          this.queue.shift();
          next.reject(deadlineExceeded());
          continue;
        }
        const opensChain = next.transfers[next.transfers.length - 1]?.flags?.linked === true;
        if (calls.length > 0 && (size + next.transfers.length > MAX_BATCH_EVENTS || bytes + next.bytes > MAX_MERGED_BYTES || opensChain)) break;
        calls.push(this.queue.shift()!);
        size += next.transfers.length;
        bytes += next.bytes;
        if (opensChain) break;
      }
      if (calls.length === 0) break;
      this.inFlight++;
      void this.sendMerged(calls).finally(() => {
        this.inFlight--;
        this.schedule();
      });
    }
  }

  private async sendMerged(calls: QueuedCall[]): Promise<void> {
    // Until the latest caller's deadline: each of them stops waiting at its own.
    const remaining = (c: { deadline: number }) => Math.max(1, c.deadline - Date.now());
    if (calls.length === 1) {
      const only = calls[0]!;
      await this.sendTransfers(only.transfers, remaining(only), { parent: only.context }).then(only.resolve, only.reject);
      return;
    }
    // Sent from a timer whose context is whichever caller's scheduled it (or an earlier request's): the request of
    // one caller is in that caller's trace, and a merged one is a root span linked to each caller, as CreatePayments.
    const span = mergedCallSpan(calls.map((c) => c.context));
    try {
      const results = await this.sendTransfers(calls.flatMap((c) => c.transfers), remaining({ deadline: Math.max(...calls.map((c) => c.deadline)) }), span);
      let offset = 0;
      for (const c of calls) {
        // Field by field: spreading an object with a bigint field takes V8's slow path (microseconds each).
        const mine = results.slice(offset, offset + c.transfers.length).map((r) => ({ index: r.index - offset, code: r.code, timestamp: r.timestamp }));
        offset += c.transfers.length;
        c.resolve(mine);
      }
    } catch (error) {
      if ((error as ServiceError).code === status.INVALID_ARGUMENT) {
        // Not for a call whose deadline passed while the merged request ran: its caller has been answered
        // DEADLINE_EXCEEDED, and sent now it would be written unknown to anyone.
        const resend = (c: QueuedCall) => (c.deadline <= Date.now() ? Promise.reject(deadlineExceeded()) : this.sendTransfers(c.transfers, remaining(c), { parent: c.context }));
        await Promise.all(calls.map((c) => resend(c).then(c.resolve, c.reject)));
      } else {
        for (const c of calls) c.reject(error);
      }
    }
  }
}

/** A queued call's deadline passing, as the status a call whose deadline passed in flight gets. */
function deadlineExceeded(): ServiceError {
  const details = 'deadline exceeded while waiting to be sent';
  return Object.assign(new Error(`${status.DEADLINE_EXCEEDED} DEADLINE_EXCEEDED: ${details}`), { code: status.DEADLINE_EXCEEDED, details, metadata: new Metadata() });
}

function fullFilter(f: Partial<AccountFilter> & { accountId: string }): AccountFilter {
  return { timestampMin: 0n, timestampMax: 0n, debits: false, credits: false, reversed: false, limit: 0, cursor: '', ...f };
}
