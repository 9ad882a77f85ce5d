import { status, type ServiceError } from '@grpc/grpc-js';
import { context, type Context } from '@opentelemetry/api';
import { Coalescer } from '../lib/coalesce.js';
import type { Config } from '../lib/config.js';
import { AppError, InternalError } from '../lib/errors.js';
import { appErrorOf, callUnary, raceDeadline, receivedFailure, type UnaryMethod } from '../lib/grpc.js';
import { channelCredentials, type GrpcTlsConfig } from '../lib/grpc-tls.js';
import { retry } from '../lib/retry.js';
import { LedgerClient, type CallOptions } from '../ledger/client.js';
import { mergedCallSpan, traceparentOf } from '../observability/tracing.js';
import { PaymentServiceClient, type CreatePaymentOutcome, type CreatePaymentRequest, type Payment } from '../proto/gen/payments/v1/payments.js';
import { SettlementServiceClient } from '../proto/gen/settlement/v1/settlement.js';

interface PaymentCreation {
  request: CreatePaymentRequest;
  /** The caller's context: the trace its payment belongs to. */
  caller: Context;
  /** Epoch ms: the caller's own deadline, as a lone call would have had. */
  deadline: number;
}

/** A creation's answer: its payment, or the error its caller gets (an AppError, or the status of a lone call). */
type CreationOutcome = { payment: Payment } | { error: unknown };

/** Time an attempt needs to be worth making (a retry with less left would only answer DEADLINE_EXCEEDED). */
const MIN_ATTEMPT_MS = 50;
const creationExpired = () => new AppError('deadline_exceeded', 'deadline_exceeded', 'the ledger did not answer before the deadline');

/** Payments per CreatePayments call (the ledger accepts up to 1,000). */
const CREATIONS_PER_CALL = 256;
/** CreatePayments calls in flight at once; creations arriving meanwhile wait and go together in the next. */
const CREATION_CALLS_IN_FLIGHT = 8;

/** A CreatePayments item's outcome as its caller's answer. */
function outcomeOf({ result }: CreatePaymentOutcome): CreationOutcome {
  if (result?.$case === 'payment') return { payment: result.value };
  if (result?.$case === 'error') return { error: appErrorOf(result.value) };
  return { error: new InternalError('CreatePayments answered an outcome with neither a payment nor an error') };
}

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
      (_, i) =>
        new PaymentServiceClient(config.LEDGER_GRPC_TARGET, secured, {
          'grpc.keepalive_time_ms': 30_000,
          // A CreatePayments answer of 256 payments with full metadata is several MB (grpc-js receives 4 MB by default).
          'grpc.max_receive_message_length': 32 * 1024 * 1024,
          'grpc.max_send_message_length': 32 * 1024 * 1024,
          ...channel(i),
        }),
    );
    // Settlement calls are few (admins, reports): one channel. A batch's report or reconciliation is several MB for
    // a batch of tens of thousands of payments (grpc-js receives 4 MB by default).
    this.settlement = new SettlementServiceClient(config.SETTLEMENT_GRPC_TARGET, secured, {
      'grpc.keepalive_time_ms': 30_000,
      'grpc.max_receive_message_length': 32 * 1024 * 1024,
    });
  }

  /** A ledger client (auto-batching: concurrent transfer calls of this channel share requests). */
  private ledger(): LedgerClient {
    return this.ledgers[this.next++ % this.ledgers.length]!;
  }

  /** A payments client: the channels in turn. */
  private paymentClient(): PaymentServiceClient {
    return this.payments[this.next++ % this.payments.length]!;
  }

  /** Calls a payments method; `idempotent` calls are retried on UNAVAILABLE. */
  payment<Req, Res>(pick: (client: PaymentServiceClient) => UnaryMethod<Req, Res>, request: Req, idempotent: boolean): Promise<Res> {
    return this.call((deadlineMs) => {
      const client = this.paymentClient();
      return callUnary(client, pick(client), request, deadlineMs);
    }, idempotent);
  }

  /** Creates a payment (coalesced with concurrent ones); with an idempotency key it is retried on UNAVAILABLE. */
  createPayment(request: CreatePaymentRequest, idempotent: boolean): Promise<Payment> {
    return this.call(async (deadlineMs) => {
      const deadline = Date.now() + deadlineMs;
      // Its own deadline, whatever the call carrying it waits for.
      const outcome = await raceDeadline(this.creations.add({ request, caller: context.active(), deadline }), deadline, creationExpired);
      if ('error' in outcome) throw outcome.error;
      return outcome.payment;
    }, idempotent);
  }

  /** Calls a settlement method, with the same retry rule and error mapping. */
  settle<Req, Res>(pick: (client: SettlementServiceClient) => UnaryMethod<Req, Res>, request: Req, idempotent: boolean): Promise<Res> {
    return this.call((deadlineMs) => callUnary(this.settlement, pick(this.settlement), request, deadlineMs), idempotent);
  }

  /** Any ledger call, with the same retry rule and error mapping; `work` passes `options` on (the deadline left). */
  ledgerCall<T>(work: (ledger: LedgerClient, options: CallOptions) => Promise<T>, idempotent: boolean): Promise<T> {
    return this.call((deadlineMs) => work(this.ledger(), { deadlineMs }), idempotent);
  }

  /**
   * One CreatePayments call for the creations of a turn, as a root span linked to each caller (each item carries
   * its caller's traceparent: the ledger serves it in that trace), with the deadline of the latest caller (each
   * caller also stops waiting at its own). A failed call fails every item with its status; an item's own
   * failure comes back as its outcome. A lone creation goes as CreatePayment, in its caller's trace, and so does
   * each item when the ledger does not know CreatePayments (an older version during a rolling upgrade).
   */
  private async sendCreations(items: PaymentCreation[]): Promise<CreationOutcome[]> {
    const now = Date.now();
    const live = items.filter((i) => i.deadline > now);
    const answers = new Map<PaymentCreation, CreationOutcome>();
    if (live.length === 1) answers.set(live[0]!, await this.createAlone(live[0]!));
    if (live.length > 1) {
      const client = this.paymentClient();
      const payments = live.map((i) => ({ request: i.request, traceparent: traceparentOf(i.caller) }));
      const deadlineMs = Math.max(...live.map((i) => i.deadline)) - now;
      try {
        const { outcomes } = await callUnary(client, client.createPayments, { payments }, deadlineMs, mergedCallSpan(live.map((i) => i.caller)));
        if (outcomes.length !== live.length) throw new InternalError(`CreatePayments answered ${outcomes.length} outcomes for ${live.length} payments`);
        live.forEach((item, n) => answers.set(item, outcomeOf(outcomes[n]!)));
      } catch (error) {
        if ((error as ServiceError).code !== status.UNIMPLEMENTED) throw error;
        const alone = await Promise.all(live.map((item) => this.createAlone(item)));
        live.forEach((item, n) => answers.set(item, alone[n]!));
      }
    }
    // Callers already past their deadline were never sent (nothing written): their own timer has answered them.
    return items.map((item) => answers.get(item) ?? { error: creationExpired() });
  }

  private async createAlone(item: PaymentCreation): Promise<CreationOutcome> {
    const client = this.paymentClient();
    try {
      const { payment } = await context.with(item.caller, () => callUnary(client, client.createPayment, item.request, Math.max(1, item.deadline - Date.now())));
      return payment ? { payment } : { error: new InternalError('CreatePayment answered no payment') };
    } catch (error) {
      return { error };
    }
  }

  /**
   * Runs `attempt` with the time left of one GATEWAY_GRPC_DEADLINE_MS for the whole call: retries (idempotent calls,
   * on UNAVAILABLE) share it, so a request waits at most that long however many attempts it takes.
   */
  private async call<T>(attempt: (deadlineMs: number) => Promise<T>, idempotent: boolean): Promise<T> {
    const until = Date.now() + this.config.GATEWAY_GRPC_DEADLINE_MS;
    const left = () => until - Date.now();
    try {
      return await retry(() => attempt(Math.max(1, left())), {
        attempts: idempotent ? 3 : 1,
        baseDelayMs: 20,
        maxDelayMs: 200,
        // A batched item's own UNAVAILABLE arrives as the AppError it was on the server; no attempt without time left.
        isRetryable: (error) => left() > MIN_ATTEMPT_MS && ((error as ServiceError).code === status.UNAVAILABLE || (error instanceof AppError && error.kind === 'unavailable')),
      });
    } catch (error) {
      const failure = error instanceof AppError ? error : receivedFailure(error);
      // A backend refusing the gateway itself (its client certificate not allowed: lib/grpc-tls.ts) is this
      // platform's misconfiguration, not the merchant's lack of rights: a 500 (logged), not a 403 naming it.
      if (failure?.kind === 'permission_denied' || failure?.kind === 'unauthenticated') throw new InternalError('a backend refused the gateway\'s credentials (GRPC_TLS_*)', { cause: error });
      throw failure ?? error;
    }
  }

  close(): void {
    for (const l of this.ledgers) l.close();
    for (const p of this.payments) p.close();
    this.settlement.close();
  }
}
