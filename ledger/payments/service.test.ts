import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Server, credentials, status } from '@grpc/grpc-js';
import { after, before, describe, it } from 'mocha';
import { callUnary } from '../../lib/grpc.js';
import { createLogger } from '../../lib/logger.js';
import { CaptureMethod, CreatePaymentRequest, PaymentServiceClient, PaymentServiceService } from '../../proto/gen/payments/v1/payments.js';
import type { CreatePaymentInput, PaymentFlows } from './flows.js';
import type { PaymentRow } from './model.js';
import { createPaymentService } from './service.js';
import { listenForTest } from '../../test/support.js';

/**
 * CreatePayments' own rules, over flows that answer when the test says (the payments on the real ledger are
 * tested in payments.test.ts): one slow payment must not cost the others of its call their answers.
 */
describe('payments.v1 CreatePayments: each item answered on its own', () => {
  let server: Server;
  let client: PaymentServiceClient;
  /** Amounts the stand-in flows do not finish until the tests are over. */
  const stuck = new Set([13n]);
  // Released at the end: a handler left running would hold up every later drainHandlers() of this process.
  const release: (() => void)[] = [];

  const row = (input: CreatePaymentInput): PaymentRow => ({
    id: randomUUID(),
    merchantId: input.merchantId,
    idempotencyKey: input.idempotencyKey || null,
    amount: input.amount,
    currency: input.currency,
    captureMethod: input.captureMethod,
    sourceKind: 'card',
    sourceAccountId: randomUUID(),
    cardFingerprint: 'fp',
    cardCountry: 'US',
    cardType: null,
    merchantCategory: null,
    destinationAccountId: randomUUID(),
    customerId: null,
    deviceId: null,
    ipCountry: null,
    status: 'succeeded',
    amountCaptured: input.amount,
    amountRefunded: 0n,
    feeBps: 0,
    fee: 0n,
    declineCode: null,
    declineReason: null,
    risk: { outcome: 'scored', scorePpm: 0, decision: 'approve', reasons: [], modelVersion: 'test' },
    metadata: {},
    version: 2n,
    createdAt: 0n,
  });

  before(async () => {
    const flows = {
      createPayment: (input: CreatePaymentInput) =>
        stuck.has(input.amount) ? new Promise<PaymentRow>((resolve) => release.push(() => resolve(row(input)))) : Promise.resolve(row(input)),
    } as unknown as PaymentFlows;
    server = new Server();
    server.addService(PaymentServiceService, createPaymentService(flows, createLogger('service-test', 'silent')));
    const address = await listenForTest(server);
    client = new PaymentServiceClient(address, credentials.createInsecure());
  });
  after(() => {
    for (const r of release) r();
    client?.close();
    server?.forceShutdown();
  });

  it('an item not done near the deadline is answered DEADLINE_EXCEEDED alone; the others get their payments', async () => {
    const item = (amount: bigint) => ({
      request: CreatePaymentRequest.fromPartial({
        merchantId: randomUUID(),
        amount,
        currency: 'USD',
        source: { kind: { $case: 'card', value: { token: 'tok', fingerprint: 'fp', country: 'US', type: '' } } },
        captureMethod: CaptureMethod.CAPTURE_METHOD_AUTOMATIC,
      }),
      traceparent: '',
    });
    const { outcomes } = await callUnary(client, client.createPayments, { payments: [item(1n), item(13n), item(3n)] }, 500);
    const [first, slow, third] = outcomes.map((o) => o.result);
    assert.equal(first?.$case === 'payment' && first.value.amount, 1n);
    assert.equal(third?.$case === 'payment' && third.value.amount, 3n);
    assert.deepEqual(slow, { $case: 'error', value: { status: status.DEADLINE_EXCEEDED, message: 'not done before the deadline of the call', code: 'deadline_exceeded', field: '', retryAfterSeconds: 0 } });
  });
});
