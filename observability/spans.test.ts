import assert from 'node:assert/strict';
import { context, propagation, SpanStatusCode, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { after, before, describe, it } from 'mocha';
import { createPool, withTransaction } from '../lib/db.js';
import { freePort } from '../test/ledger-process.js';
import { testConfig } from '../test/support.js';
import { startTracing, tracer, type Tracing } from './tracing.js';

/** Spans of the shared layers on their failure paths: every span started is ended, with the error. */
describe('spans on failure paths (ended, with the error)', () => {
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
});
