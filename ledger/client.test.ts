import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Server, status, type ServiceError, type ServerUnaryCall, type sendUnaryData, type UntypedServiceImplementation } from '@grpc/grpc-js';
import { after, describe, it } from 'mocha';
import {
  CreateTransferResultCode,
  LedgerServiceService,
  type CreateTransfersRequest,
  type CreateTransfersResponse,
} from '../proto/gen/ledger/v1/ledger.js';
import { LedgerClient, newTransfer, type LedgerClientOptions } from './client.js';
import { listenForTest } from '../test/support.js';

/**
 * The auto-batching client against a stand-in ledger (a gRPC server of the project's proto with the ledger's
 * message limits, answering what each test needs): what each caller of a merged request gets.
 */
describe('ledger client: auto-batching', () => {
  const servers: Server[] = [];
  const clients: LedgerClient[] = [];
  after(async () => {
    for (const c of clients) c.close();
    for (const s of servers) s.forceShutdown();
  });

  async function standIn(methods: UntypedServiceImplementation, options: LedgerClientOptions = {}): Promise<LedgerClient> {
    // The ledger's own limits (ledger/app.ts).
    const server = new Server({ 'grpc.max_receive_message_length': 32 * 1024 * 1024, 'grpc.max_send_message_length': 32 * 1024 * 1024 });
    server.addService(LedgerServiceService, methods);
    const address = await listenForTest(server);
    servers.push(server);
    const client = new LedgerClient(address, options);
    clients.push(client);
    return client;
  }

  const allOk = (call: ServerUnaryCall<CreateTransfersRequest, CreateTransfersResponse>, done: sendUnaryData<CreateTransfersResponse>) =>
    done(null, { results: call.request.transfers.map((_, index) => ({ index, code: CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_OK, timestamp: BigInt(index + 1) })) });

  it('calls that each fit in a message are not merged into a request larger than the 32 MB the ledger accepts', async () => {
    const sizes: number[] = [];
    const client = await standIn({
      createTransfers: (call: ServerUnaryCall<CreateTransfersRequest, CreateTransfersResponse>, done: sendUnaryData<CreateTransfersResponse>) => {
        sizes.push(call.request.transfers.length);
        allOk(call, done);
      },
    });
    // The most metadata the ledger accepts: 16 entries of 64 + 512 three-byte characters, about 27 KB a transfer.
    const metadata = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`${i}`.padEnd(64, '€'), '€'.repeat(512)]));
    const call = () => Array.from({ length: 400 }, () => newTransfer({ id: randomUUID(), debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n, ledger: 978, code: 1, metadata }));
    // Four callers of about 11 MB each: each alone is well within the limit, the four together are not.
    const results = await Promise.allSettled([call(), call(), call(), call()].map((transfers) => client.createTransfers(transfers)));
    assert.deepEqual(
      results.map((r) => (r.status === 'fulfilled' ? r.value.length : String(r.reason))),
      [400, 400, 400, 400],
    );
    assert.equal(sizes.reduce((a, b) => a + b, 0), 1600);
  });

  it('a call that waited in the queue past its deadline is answered DEADLINE_EXCEEDED, not sent after it', async () => {
    let requests = 0;
    const client = await standIn(
      {
        createTransfers: (call: ServerUnaryCall<CreateTransfersRequest, CreateTransfersResponse>, done: sendUnaryData<CreateTransfersResponse>) => {
          // The first request is never answered (a stuck ledger): its caller's deadline ends it.
          if (++requests > 1) allOk(call, done);
        },
      },
      { maxInFlight: 1, deadlineMs: 500 },
    );
    const t = (linked = false) => newTransfer({ id: randomUUID(), debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n, ledger: 978, code: 1, flags: { linked } });
    // Two calls of one turn: the first (an open chain, never merged) takes the one request slot, the second waits.
    const [first, second] = await Promise.allSettled([client.createTransfers([t(true)]), client.createTransfers([t()])]);
    assert.equal(first.status === 'rejected' && (first.reason as ServiceError).code, status.DEADLINE_EXCEEDED);
    assert.equal(second.status === 'rejected' && (second.reason as ServiceError).code, status.DEADLINE_EXCEEDED, `the second call was answered ${JSON.stringify(second.status === 'fulfilled' ? second.value.map((r) => r.code) : String(second.reason))}`);
    assert.equal(requests, 1, 'the expired call was still sent (and its transfer written) after its caller had given up');
  });

  it('a merged request refused as malformed is not sent again for a caller whose deadline passed meanwhile', async () => {
    const received: string[][] = [];
    const client = await standIn({
      createTransfers: (call: ServerUnaryCall<CreateTransfersRequest, CreateTransfersResponse>, done: sendUnaryData<CreateTransfersResponse>) => {
        const ids = call.request.transfers.map((t) => t.id);
        received.push(ids);
        // The merged request is refused (one caller's events are malformed), after the short caller's deadline.
        if (ids.length > 1) setTimeout(() => done({ code: status.INVALID_ARGUMENT, details: 'transfers.1.id: malformed' }), 300);
        else allOk(call, done);
      },
    });
    const t = () => newTransfer({ id: randomUUID(), debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n, ledger: 978, code: 1 });
    const [short, long] = [t(), t()];
    const [shortOutcome, longOutcome] = await Promise.allSettled([client.createTransfers([short], { deadlineMs: 100 }), client.createTransfers([long], { deadlineMs: 5_000 })]);
    assert.equal(shortOutcome.status === 'rejected' && (shortOutcome.reason as ServiceError).code, status.DEADLINE_EXCEEDED);
    assert.equal(longOutcome.status, 'fulfilled');
    // Give a request sent for the short call time to arrive.
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(received, [[short.id, long.id], [long.id]], 'the call answered DEADLINE_EXCEEDED was sent again after its caller had given up');
  });
});
