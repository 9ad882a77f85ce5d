import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { Server, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { after, before, describe, it } from 'mocha';
import { LedgerClient, newTransfer } from '../ledger/client.js';
import { Coalescer } from '../lib/coalesce.js';
import { createPool, withTransaction } from '../lib/db.js';
import { CreateTransferResultCode, LedgerServiceService, type CreateTransfersRequest, type CreateTransfersResponse } from '../proto/gen/ledger/v1/ledger.js';
import { freePort } from '../test/ledger-process.js';
import { listenForTest, testConfig } from '../test/support.js';
import { startTracing, tracer, type Tracing } from './tracing.js';

/** Spans of the shared layers: ended on their failure paths (with the error), and in their callers' traces. */
describe("spans of the shared layers: ended on failure paths, in their callers' traces", () => {
  const spans = new InMemorySpanExporter();
  let tracing: Tracing;

  before(() => {
    tracing = startTracing({ service: 'spans-test', version: 'test', exporter: 'none', samplingRatio: 1 }, [new SimpleSpanProcessor(spans)]);
  });

  after(async () => {
    await tracing?.shutdown();
    // Later test files run untraced, as before this one.
    trace.disable();
    context.disable();
    propagation.disable();
  });

  it('a transaction that cannot begin (no connection to be had) ends its db.transaction span as an error', async () => {
    // Nothing listens there: the connection is refused, as in a database outage.
    const pool = createPool(testConfig({ DATABASE_URL: `postgres://postgres@127.0.0.1:${await freePort()}/none` }), { max: 1 });
    spans.reset();
    const caller = tracer('test').startSpan('caller');
    try {
      await assert.rejects(
        context.with(trace.setSpan(context.active(), caller), () => withTransaction(pool, (client) => client.query('SELECT 1'))),
        (error: Error) => error.message === 'database unavailable',
      );
    } finally {
      caller.end();
      await pool.end();
    }
    const transaction = spans.getFinishedSpans().filter((s) => s.name === 'db.transaction');
    assert.equal(transaction.length, 1, `spans ended: ${spans.getFinishedSpans().map((s) => s.name).join(', ')}`);
    assert.equal(transaction[0]!.parentSpanContext?.spanId, caller.spanContext().spanId);
    assert.equal(transaction[0]!.status.code, SpanStatusCode.ERROR);
  });

  it("the auto-batching ledger client's calls stay in their callers' traces: a merged request is a root linked to each caller, a lone one its caller's child", async () => {
    // A stand-in ledger that holds its first request until told, so that a third call queues behind it.
    let received!: () => void;
    const firstReceived = new Promise<void>((resolve) => (received = resolve));
    let answerFirst: (() => void) | undefined;
    const server = new Server();
    server.addService(LedgerServiceService, {
      createTransfers: (call: ServerUnaryCall<CreateTransfersRequest, CreateTransfersResponse>, done: sendUnaryData<CreateTransfersResponse>) => {
        const answer = () => done(null, { results: call.request.transfers.map((_, index) => ({ index, code: CreateTransferResultCode.CREATE_TRANSFER_RESULT_CODE_OK, timestamp: 1n })) });
        if (answerFirst !== undefined || call.request.transfers.length === 1) return answer();
        answerFirst = answer;
        received();
      },
    });
    const client = new LedgerClient(await listenForTest(server), { maxInFlight: 1 });
    const transfer = () => newTransfer({ id: randomUUID(), debitAccountId: randomUUID(), creditAccountId: randomUUID(), amount: 1n, ledger: 978, code: 1 });
    const callers = ['a', 'b', 'c'].map((name) => tracer('test').startSpan(`caller ${name}`, {}, ROOT_CONTEXT));
    const inTraceOf = (caller: Span) => context.with(trace.setSpan(ROOT_CONTEXT, caller), () => client.createTransfers([transfer()]));
    spans.reset();
    try {
      // a and b in one turn: one merged request. c while it is in flight: sent alone after it.
      const merged = [inTraceOf(callers[0]!), inTraceOf(callers[1]!)];
      await firstReceived;
      const alone = inTraceOf(callers[2]!);
      answerFirst!();
      await Promise.all([...merged, alone]);
    } finally {
      client.close();
      server.forceShutdown();
      for (const c of callers) c.end();
    }
    const [mergedSpan, aloneSpan] = spans
      .getFinishedSpans()
      .filter((s) => s.kind === SpanKind.CLIENT && s.name === 'ledger.v1.LedgerService/CreateTransfers')
      .sort((x, y) => x.startTime[0] - y.startTime[0] || x.startTime[1] - y.startTime[1]);
    const id = (s: Span) => s.spanContext().spanId;
    assert.ok(mergedSpan && aloneSpan, 'two requests sent');
    assert.equal(mergedSpan.parentSpanContext, undefined, `the merged request is in the trace of caller ${mergedSpan.parentSpanContext?.spanId === id(callers[0]!) ? 'a' : '?'} only`);
    assert.deepEqual(mergedSpan.links.map((l) => l.context.spanId), [id(callers[0]!), id(callers[1]!)]);
    assert.equal(aloneSpan.parentSpanContext?.spanId, id(callers[2]!), "c's request is in c's trace");
  });

  it("a group commit (Coalescer) runs in the trace of its batch's first caller, not in that of whichever batch came before it", async () => {
    // One batch at a time (as the payment steps' completions): b is added while a's batch is being flushed.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    const seenBy: string[][] = [];
    const coalescer = new Coalescer(
      async (items: string[]) => {
        seenBy.push([...items, trace.getSpan(context.active())?.spanContext().spanId ?? 'none']);
        if (items.includes('a')) await held;
        return items;
      },
      1_000,
      1,
    );
    const [a, b] = ['a', 'b'].map((name) => tracer('test').startSpan(`caller ${name}`, {}, ROOT_CONTEXT)) as [Span, Span];
    try {
      const first = context.with(trace.setSpan(ROOT_CONTEXT, a), () => coalescer.add('a'));
      while (seenBy.length === 0) await new Promise((resolve) => setImmediate(resolve));
      const second = context.with(trace.setSpan(ROOT_CONTEXT, b), () => coalescer.add('b'));
      release();
      await Promise.all([first, second]);
    } finally {
      a.end();
      b.end();
    }
    assert.deepEqual(seenBy, [
      ['a', a.spanContext().spanId],
      ['b', b.spanContext().spanId],
    ]);
  });
});
