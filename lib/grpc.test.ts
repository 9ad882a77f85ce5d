import { strict as assert } from 'node:assert';
import { Server, credentials, status, type ServiceError } from '@grpc/grpc-js';
import { Decision, RiskServiceClient, RiskServiceService, type ScoreRequest, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';
import { callUnary, shutdownGrpcServer, unary } from './grpc.js';
import { createLogger } from './logger.js';
import { listenForTest } from '../test/support.js';

/** A gRPC server at shutdown (shutdownGrpcServer, used by every service's close). */
describe('gRPC server shutdown', () => {
  const answer: ScoreResponse = { scorePpm: 0, decision: Decision.DECISION_APPROVE, reasons: [], modelVersion: 'test' };

  /** A server whose Score handler finishes when the test releases it. */
  async function serverWithHeldHandler(): Promise<{ server: Server; client: RiskServiceClient; release: () => void; events: string[] }> {
    const events: string[] = [];
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const server = new Server();
    server.addService(RiskServiceService, {
      score: unary(createLogger('grpc-test', 'silent'), 'Score', async () => {
        await held;
        events.push('handler finished');
        return answer;
      }),
      scoreBatch: unary(createLogger('grpc-test', 'silent'), 'ScoreBatch', async () => ({ responses: [] })),
    });
    const address = await listenForTest(server);
    return { server, client: new RiskServiceClient(address, credentials.createInsecure()), release, events };
  }
  const request = { amount: 1n, currency: 'EUR', merchantId: '11111111-1111-4111-8111-111111111111' } as ScoreRequest;

  it('waits for the handler of a call whose client gave up (grpc-js no longer counts it) before it returns', async () => {
    const { server, client, release, events } = await serverWithHeldHandler();
    try {
      await assert.rejects(callUnary(client, client.score, request, 100), (e: ServiceError) => e.code === status.DEADLINE_EXCEEDED);
      const shutdown = shutdownGrpcServer(server, 30_000).then(() => events.push('shutdown returned'));
      await new Promise((resolve) => setTimeout(resolve, 50)); // let shutdown start: it must still be waiting
      release();
      await shutdown;
      assert.deepEqual(events, ['handler finished', 'shutdown returned']);
    } finally {
      client.close();
    }
  });

  it('cuts calls still running after its timeout: it returns, and their clients get an error', async () => {
    const { server, client, release, events } = await serverWithHeldHandler();
    try {
      const call = callUnary(client, client.score, request, 30_000).then(
        () => 'answered',
        (e: ServiceError) => e.code,
      );
      await new Promise((resolve) => setTimeout(resolve, 50)); // the call reaches the handler
      await shutdownGrpcServer(server, 300);
      assert.notEqual(await call, 'answered');
      assert.deepEqual(events, [], 'the handler is still held');
    } finally {
      release();
      client.close();
    }
  });
});
