import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { observeRelay, type OutboxRelay } from '../ledger/relay.js';
import { observeConsumer, type EventConsumer } from '../lib/consumer.js';
import { freePort } from '../test/ledger-process.js';
import { startMetrics } from './metrics.js';

describe('metrics of a consumer (observeConsumer)', () => {
  it('its counters are exported while its lag cannot be read (NATS reconnecting, a JetStream leader election, a replay re-creating it)', async () => {
    const metrics = await startMetrics('consumer-test', await freePort());
    try {
      const consumer = {
        stats: { messages: 3, events: 5, duplicates: 1, redeliveries: 2, deadLettered: 1 },
        lag: () => Promise.reject(new Error('TimeoutError: timeout')),
      } as unknown as EventConsumer;
      observeConsumer(metrics.meter, consumer, 'settlement');
      const text = await (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
      for (const [name, value] of [
        ['events_consumer_applied_total', 5],
        ['events_consumer_duplicates_total', 1],
        ['events_consumer_retries_total', 2],
        ['events_consumer_dead_lettered_total', 1],
      ] as const) {
        assert.match(text, new RegExp(`^${name}\\{consumer="settlement"[^}]*\\} ${value}$`, 'm'), `${name} in:\n${text}`);
      }
      assert.doesNotMatch(text, /^events_consumer_lag_messages\{/m, 'no lag sample when it is not known');
    } finally {
      await metrics.shutdown();
    }
  });
});

describe('metrics of the outbox relay (observeRelay)', () => {
  it('its published count is exported while the outbox lag cannot be read (the database unreachable)', async () => {
    const metrics = await startMetrics('relay-test', await freePort());
    try {
      const relay = { publishedCount: 7, lag: () => Promise.reject(new Error('connect ECONNREFUSED')) } as unknown as OutboxRelay;
      observeRelay(metrics.meter, relay);
      const text = await (await fetch(`http://127.0.0.1:${metrics.port}/metrics`)).text();
      assert.match(text, /^ledger_outbox_published_total(\{[^}]*\})? 7$/m, text);
      assert.doesNotMatch(text, /^ledger_outbox_lag_(rows|seconds)[{ ]/m, 'no lag sample when it is not known');
    } finally {
      await metrics.shutdown();
    }
  });
});
