import { status, type ServiceError } from '@grpc/grpc-js';
import { context, ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import { Coalescer } from '../lib/coalesce.js';
import type { Config } from '../lib/config.js';
import { AppError, InternalError } from '../lib/errors.js';
import { appErrorOf, callUnary, fromServiceError, type UnaryMethod } from '../lib/grpc.js';
import { channelCredentials, type GrpcTlsConfig } from '../lib/grpc-tls.js';
import { retry } from '../lib/retry.js';
import { LedgerClient } from '../ledger/client.js';
import { linkTo, traceparentOf } from '../observability/tracing.js';
import { PaymentServiceClient, type CreatePaymentOutcome, type CreatePaymentRequest, type Payment } from '../proto/gen/payments/v1/payments.js';
import { SettlementServiceClient } from '../proto/gen/settlement/v1/settlement.js';

interface PaymentCreation {
  request: CreatePaymentRequest;
  /** The caller's context: the trace its payment belongs to. */
  caller: Context;
  queuedAt: number;
}

/** Payments per CreatePayments call (the ledger accepts up to 1,000). */
const CREATIONS_PER_CALL = 256;
/** CreatePayments calls in flight at once; creations arriving meanwhile wait and go together in the next. */
const CREATION_CALLS_IN_FLIGHT = 8;

/**
 * The gateway's gRPC clients. Several HTTP/2 channels per backend (each its own TCP connection: a private
 * subchannel pool), used round-robin; a deadline on every call; UNAVAILABLE retried with backoff only for
 * idempotent calls (reads, and writes whose ids or idempotency key make a repeat harmless). Errors come back
 * as the AppError the backend threw. Every channel is secured as GRPC_TLS_* say (lib/grpc-tls.ts).
 */
export class Backends {
  private readonly ledgers: LedgerClient[];
  private readonly payments: PaymentServiceClient[];
  private readonly settlement: SettlementServiceClient;
  private next = 0;
  /**
   * Concurrent payment creations of one event-loop turn go to the ledger as one CreatePayments call (one message
   * instead of many: at payment rates the per-call cost dominates); a lone one as a plain CreatePayment.
   */
  private readonly creations = new Coalescer((items: PaymentCreation[]) => this.sendCreations(items), CREATIONS_PER_CALL, CREATION_CALLS_IN_FLIGHT);

  constructor(private readonly config: Pick<Config, 'LEDGER_GRPC_TARGET' | 'SETTLEMENT_GRPC_TARGET' | 'GATEWAY_GRPC_CHANNELS' | 'GATEWAY_GRPC_DEADLINE_MS'> & GrpcTlsConfig) {
    const channel = (i: number) => ({ 'grpc.use_local_subchannel_pool': 1, 'grpc.channel_index': i });
    const secured = channelCredentials(config);
    this.ledgers = Array.from(
      { length: config.GATEWAY_GRPC_CHANNELS },
      (_, i) => new LedgerClient(config.LEDGER_GRPC_TARGET, { deadlineMs: config.GATEWAY_GRPC_DEADLINE_MS, channelOptions: channel(i), credentials: secured }),
    );
    // Payments are served by the ledger process.
    this.payments = Array.from(
      { length: config.GATEWAY_GRPC_CHANNELS },
      (_, i) => new PaymentServiceClient(config.LEDGER_GRPC_TARGET, secured, { 'grpc.keepalive_time_ms': 30_000, ...channel(i) }),
    );
    // Settlement calls are few (admins, reports): one channel.
    this.settlement = new SettlementServiceClient(config.SETTLEMENT_GRPC_TARGET, secured, { 'grpc.keepalive_time_ms': 30_000 });
  }

  /** A ledger client (auto-batching: concurrent transfer calls of this channel share requests). */
  ledger(): LedgerClient {
    return this.ledgers[this.next++ % this.ledgers.length]!;
  }

  /** Calls a payments method; `idempotent` calls are retried on UNAVAILABLE. */
  payment<Req, Res>(pick: (client: PaymentServiceClient) => UnaryMethod<Req, Res>, request: Req, idempotent: boolean): Promise<Res> {
    return this.call(() => {
      const client = this.payments[this.next++ % this.payments.length]!;
      return callUnary(client, pick(client), request, this.config.GATEWAY_GRPC_DEADLINE_MS);
    }, idempotent);
  }

  /** Creates a payment (coalesced with concurrent ones); with an idempotency key it is retried on UNAVAILABLE. */
  createPayment(request: CreatePaymentRequest, idempotent: boolean): Promise<Payment> {
    return this.call(async () => {
      const { result } = await this.creations.add({ request, caller: context.active(), queuedAt: Date.now() });
      if (result?.$case === 'payment') return result.value;
      if (result?.$case === 'error') throw appErrorOf(result.value);
      throw new InternalError('CreatePayments answered an outcome with neither a payment nor an error');
    }, idempotent);
  }

  /** Calls a settlement method, with the same retry rule and error mapping. */
  settle<Req, Res>(pick: (client: SettlementServiceClient) => UnaryMethod<Req, Res>, request: Req, idempotent: boolean): Promise<Res> {
    return this.call(() => callUnary(this.settlement, pick(this.settlement), request, this.config.GATEWAY_GRPC_DEADLINE_MS), idempotent);
  }

  /** Any ledger call, with the same retry rule and error mapping. */
  ledgerCall<T>(work: (ledger: LedgerClient) => Promise<T>, idempotent: boolean): Promise<T> {
    return this.call(() => work(this.ledger()), idempotent);
  }

  /**
   * One CreatePayments call for the creations of a turn, as a root span linked to each caller (each item carries
   * its caller's traceparent: the ledger serves it in that trace), with the deadline of the oldest. A failed call
   * fails every item with its status; an item's own failure comes back as its outcome.
   */
  private async sendCreations(items: PaymentCreation[]): Promise<CreatePaymentOutcome[]> {
    const client = this.payments[this.next++ % this.payments.length]!;
    const deadlineMs = Math.max(1, Math.min(...items.map((i) => i.queuedAt)) + this.config.GATEWAY_GRPC_DEADLINE_MS - Date.now());
    if (items.length === 1) {
      const [only] = items as [PaymentCreation];
      const { payment } = await context.with(only.caller, () => callUnary(client, client.createPayment, only.request, deadlineMs));
      return [{ result: payment ? { $case: 'payment', value: payment } : undefined }];
    }
    const payments = items.map((i) => ({ request: i.request, traceparent: traceparentOf(i.caller) }));
    const { outcomes } = await callUnary(client, client.createPayments, { payments }, deadlineMs, { parent: ROOT_CONTEXT, links: items.flatMap((i) => linkTo(i.caller)) });
    if (outcomes.length !== items.length) throw new InternalError(`CreatePayments answered ${outcomes.length} outcomes for ${items.length} payments`);
    return outcomes;
  }

  private async call<T>(attempt: () => Promise<T>, idempotent: boolean): Promise<T> {
    try {
      return await retry(attempt, {
        attempts: idempotent ? 3 : 1,
        baseDelayMs: 20,
        maxDelayMs: 200,
        // A batched item's own UNAVAILABLE arrives as the AppError it was on the server.
        isRetryable: (error) => (error as ServiceError).code === status.UNAVAILABLE || (error instanceof AppError && error.kind === 'unavailable'),
      });
    } catch (error) {
      if (error instanceof AppError) throw error;
      if (typeof (error as ServiceError).code === 'number' && (error as ServiceError).metadata !== undefined) throw fromServiceError(error as ServiceError);
      throw error;
    }
  }

  close(): void {
    for (const l of this.ledgers) l.close();
    for (const p of this.payments) p.close();
    this.settlement.close();
  }
}
