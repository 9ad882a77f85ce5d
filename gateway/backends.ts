import { status, type ServiceError } from '@grpc/grpc-js';
import type { Config } from '../lib/config.js';
import { AppError } from '../lib/errors.js';
import { callUnary, fromServiceError, type UnaryMethod } from '../lib/grpc.js';
import { channelCredentials, type GrpcTlsConfig } from '../lib/grpc-tls.js';
import { retry } from '../lib/retry.js';
import { LedgerClient } from '../ledger/client.js';
import { PaymentServiceClient } from '../proto/gen/payments/v1/payments.js';
import { SettlementServiceClient } from '../proto/gen/settlement/v1/settlement.js';

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

  /** Calls a settlement method, with the same retry rule and error mapping. */
  settle<Req, Res>(pick: (client: SettlementServiceClient) => UnaryMethod<Req, Res>, request: Req, idempotent: boolean): Promise<Res> {
    return this.call(() => callUnary(this.settlement, pick(this.settlement), request, this.config.GATEWAY_GRPC_DEADLINE_MS), idempotent);
  }

  /** Any ledger call, with the same retry rule and error mapping. */
  ledgerCall<T>(work: (ledger: LedgerClient) => Promise<T>, idempotent: boolean): Promise<T> {
    return this.call(() => work(this.ledger()), idempotent);
  }

  private async call<T>(attempt: () => Promise<T>, idempotent: boolean): Promise<T> {
    try {
      return await retry(attempt, {
        attempts: idempotent ? 3 : 1,
        baseDelayMs: 20,
        maxDelayMs: 200,
        isRetryable: (error) => (error as ServiceError).code === status.UNAVAILABLE,
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
