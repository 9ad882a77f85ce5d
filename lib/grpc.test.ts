import { strict as assert } from 'node:assert';
import { Metadata, Server, credentials, status, type ServiceError } from '@grpc/grpc-js';
import { Decision, RiskServiceClient, RiskServiceService, type ScoreRequest, type ScoreResponse } from '../proto/gen/risk/v1/risk.js';
import { ERROR_CODE_KEY, ERROR_FIELD_KEY, callUnary, fromServiceError, headerSafe, shutdownGrpcServer, unary } from './grpc.js';
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

describe('gRPC errors received from another service', () => {
  function received(code: string, field: string): ServiceError {
    const metadata = new Metadata();
    metadata.set(ERROR_CODE_KEY, code);
    metadata.set(ERROR_FIELD_KEY, field);
    return Object.assign(new Error('refused'), { code: status.INVALID_ARGUMENT, details: 'refused', metadata });
  }

  it('gives back the code and field that headerSafe encoded', () => {
    const error = fromServiceError(received('invalid_field', headerSafe('metadata.ключ%')));
    assert.equal(error.code, 'invalid_field');
    assert.equal(error.details.field, 'metadata.ключ%');
  });

  it('keeps a field that does not percent-decode as it came, instead of throwing', () => {
    const error = fromServiceError(received('invalid_field', 'metadata.%E0%A4%A'));
    assert.equal(error.kind, 'invalid_argument');
    assert.equal(error.details.field, 'metadata.%E0%A4%A');
  });
});
