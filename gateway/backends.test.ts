import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Server, status, type ServerUnaryCall, type ServiceDefinition, type sendUnaryData, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { after, describe, it } from 'mocha';
import { AppError } from '../lib/errors.js';
import {
  CreatePaymentRequest,
  Payment,
  PaymentServiceService,
  type CreatePaymentResponse,
  type CreatePaymentsRequest,
  type CreatePaymentsResponse,
} from '../proto/gen/payments/v1/payments.js';
import { LedgerServiceService } from '../proto/gen/ledger/v1/ledger.js';
import { newTransfer } from '../ledger/client.js';
import { SettlementServiceService, type GetReportRequest, type GetReportResponse } from '../proto/gen/settlement/v1/settlement.js';
import { testConfig, listenForTest } from '../test/support.js';
import { Backends } from './backends.js';

/**
 * The gateway's payment creations against a stand-in ledger (a gRPC server of the project's proto, answering
 * what each test needs): how creations are coalesced, and what each caller gets.
 */
describe('gateway backends: payment creations coalesced into CreatePayments', () => {
  const servers: Server[] = [];
  const clients: Backends[] = [];
  after(async () => {
    for (const c of clients) c.close();
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.tryShutdown(() => resolve()))));
  });

  async function standIn(methods: UntypedServiceImplementation, deadlineMs = 5_000, service: ServiceDefinition = PaymentServiceService): Promise<Backends> {
    // The ledger's own limits (ledger/app.ts).
    const server = new Server({ 'grpc.max_receive_message_length': 32 * 1024 * 1024, 'grpc.max_send_message_length': 32 * 1024 * 1024 });
    server.addService(service, methods);
    const address = await listenForTest(server);
    servers.push(server);
    const backends = new Backends(testConfig({ LEDGER_GRPC_TARGET: address, GATEWAY_GRPC_DEADLINE_MS: String(deadlineMs) }));
    clients.push(backends);
    return backends;
  }

  const request = (amount: bigint, metadata: Record<string, string> = {}) => CreatePaymentRequest.fromPartial({ merchantId: randomUUID(), amount, currency: 'USD', metadata });
  const paymentFor = (r: CreatePaymentRequest) => Payment.fromPartial({ id: randomUUID(), merchantId: r.merchantId, amount: r.amount, currency: r.currency, metadata: r.metadata });

  it('an answer of several MB (256 payments with full metadata) reaches its callers', async () => {
    let calls = 0;
    const backends = await standIn({
      createPayments: (call: ServerUnaryCall<CreatePaymentsRequest, CreatePaymentsResponse>, done: sendUnaryData<CreatePaymentsResponse>) => {
        calls++;
        done(null, { outcomes: call.request.payments.map((item) => ({ result: { $case: 'payment', value: paymentFor(item.request!) } })) });
      },
    });
    // 16 entries of 64 + 512 three-byte characters: about 27 KB a payment, about 7 MB for 256.
    const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`${i}`.padEnd(64, '€'), '€'.repeat(512)]));
    const created = await Promise.all(Array.from({ length: 256 }, (_, i) => backends.createPayment(request(BigInt(i + 1), metadata), false)));
    assert.equal(calls, 1, 'one call for the 256');
    assert.deepEqual(created.map((p) => p.amount), Array.from({ length: 256 }, (_, i) => BigInt(i + 1)));
    assert.deepEqual(created[255]!.metadata, metadata);
  });

  it('a ledger without CreatePayments (an older version during an upgrade) gets each creation as CreatePayment', async () => {
    let lone = 0;
    const backends = await standIn({
      createPayment: (call: ServerUnaryCall<CreatePaymentRequest, CreatePaymentResponse>, done: sendUnaryData<CreatePaymentResponse>) => {
        lone++;
        if (call.request.amount === 13n) done({ code: status.NOT_FOUND, details: 'no such account' });
        else done(null, { payment: paymentFor(call.request) });
      },
    });
    const results = await Promise.allSettled([1n, 13n, 3n].map((amount) => backends.createPayment(request(amount), false)));
    assert.equal(lone, 3);
    assert.deepEqual(results.map((r) => (r.status === 'fulfilled' ? r.value.amount : (r.reason as AppError).kind)), [1n, 'not_found', 3n]);
  });

  /**
   * Calls `invoke` against a stand-in whose `method` answers UNAVAILABLE after 150 ms (its database unreachable,
   * say), with a deadline of 400 ms: every attempt's deadline, as the server saw it, must lie within the caller's
   * (plus the transit of the call), not 400 ms each.
   */
  async function assertRetriesShareDeadline(service: ServiceDefinition, method: string, invoke: (backends: Backends) => Promise<unknown>): Promise<void> {
    const attempts: number[] = [];
    const backends = await standIn(
      {
        [method]: (call: ServerUnaryCall<unknown, unknown>, done: sendUnaryData<unknown>) => {
          const deadline = call.getDeadline();
          attempts.push(deadline instanceof Date ? deadline.getTime() : Number(deadline));
          setTimeout(() => done({ code: status.UNAVAILABLE, details: 'database unavailable' }), 150);
        },
      },
      400,
      service,
    );
    const started = Date.now();
    await assert.rejects(invoke(backends), (e: AppError) => e.kind === 'unavailable' || e.kind === 'deadline_exceeded');
    assert.ok(attempts.length >= 2, `${attempts.length} attempts: the UNAVAILABLE was not retried`);
    for (const a of attempts) assert.ok(a <= started + 400 + 150, `an attempt had until ${a - started} ms after the call began`);
  }

  it('retries of an idempotent call share the caller\'s deadline: no attempt is given time beyond it', async () => {
    await assertRetriesShareDeadline(PaymentServiceService, 'getPayment', (backends) =>
      backends.payment((c) => c.getPayment, { merchantId: randomUUID(), paymentId: randomUUID() }, true),
    );
  });

  it('so do retries of ledger calls: a lookup, and a transfer through the auto-batching client', async () => {
    await assertRetriesShareDeadline(LedgerServiceService, 'lookupAccounts', (backends) => backends.ledgerCall((ledger, options) => ledger.lookupAccounts([randomUUID()], options), true));
    const transfer = newTransfer({ id: randomUUID(), debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n, ledger: 1, code: 1 });
    await assertRetriesShareDeadline(LedgerServiceService, 'createTransfers', (backends) => backends.ledgerCall((ledger, options) => ledger.createTransfers([transfer], options), true));
  });

  it('a backend refusing the gateway\'s certificate (PERMISSION_DENIED) is the platform\'s fault: internal, not 403 with its details', async () => {
    const backends = await standIn({
      getPayment: (_call: ServerUnaryCall<unknown, unknown>, done: sendUnaryData<unknown>) =>
        done({ code: status.PERMISSION_DENIED, details: 'client certificate "gateway" is not allowed here' }),
    });
    await assert.rejects(backends.payment((c) => c.getPayment, { merchantId: randomUUID(), paymentId: randomUUID() }, true), (e: AppError) => {
      assert.equal(e.kind, 'internal');
      assert.doesNotMatch(e.message, /certificate "gateway"/);
      return true;
    });
  });

  it('each caller keeps its own deadline: creations the ledger does not answer in time are deadline errors at that deadline', async () => {
    const backends = await standIn(
      {
        createPayments: (call: ServerUnaryCall<CreatePaymentsRequest, CreatePaymentsResponse>, done: sendUnaryData<CreatePaymentsResponse>) => {
          // The ledger answers the whole call after 1 s: longer than the callers' 300 ms.
          setTimeout(() => done(null, { outcomes: call.request.payments.map((item) => ({ result: { $case: 'payment', value: paymentFor(item.request!) } })) }), 1_000);
        },
      },
      300,
    );
    const started = Date.now();
    const results = await Promise.allSettled([1n, 2n].map((amount) => backends.createPayment(request(amount), false)));
    assert.ok(Date.now() - started < 900, 'answered at the deadline, not when the ledger did');
    for (const r of results) assert.equal(r.status === 'rejected' && (r.reason as AppError).kind, 'deadline_exceeded');
  });
});

describe('gateway backends: settlement calls', () => {
  it('a batch report of several MB (a batch of ~20,000 payments) reaches the gateway', async () => {
    // The settlement service's server, as settlement/app.ts makes it (grpc-js sends messages of any size).
    const server = new Server();
    const header = 'record,batch_id,kind,payment_id,transfer_id,currency,amount,amount_major,occurred_at\n';
    const line = `line,${randomUUID()},capture,${randomUUID()},${randomUUID()},EUR,1999,19.99,2026-12-01T10:00:00.123456789Z\n`;
    // Two lines a payment (its capture and its fee): about 6 MB.
    const csv = header + line.repeat(40_000);
    server.addService(SettlementServiceService, {
      getReport: (_call: ServerUnaryCall<GetReportRequest, GetReportResponse>, done: sendUnaryData<GetReportResponse>) => done(null, { csv }),
    });
    const address = await listenForTest(server);
    const backends = new Backends(testConfig({ SETTLEMENT_GRPC_TARGET: address }));
    try {
      const report = await backends.settle((c) => c.getReport, { batchId: randomUUID(), merchantId: '' }, true);
      assert.equal(report.csv.length, csv.length);
    } finally {
      backends.close();
      server.forceShutdown();
    }
  });
});
