import { strict as assert } from 'node:assert';
import { backoffDelay, retry } from './retry.js';

describe('retry', () => {
  it('retries retryable errors until success', async () => {
    let calls = 0;
    const delays: number[] = [];
    const value = await retry(
      async () => {
        calls++;
        if (calls < 4) throw new Error('transient');
        return 'done';
      },
      { attempts: 5, baseDelayMs: 1, maxDelayMs: 4, isRetryable: () => true, onRetry: (_e, _a, d) => delays.push(d) },
    );
    assert.equal(value, 'done');
    assert.equal(calls, 4);
    assert.equal(delays.length, 3);
  });

  it('rethrows non-retryable errors at once and gives up after the last attempt', async () => {
    let calls = 0;
    await assert.rejects(retry(async () => { calls++; throw new Error('fatal'); }, { attempts: 5, baseDelayMs: 1, maxDelayMs: 1, isRetryable: () => false }), /fatal/);
    assert.equal(calls, 1);
    calls = 0;
    await assert.rejects(retry(async () => { calls++; throw new Error('again'); }, { attempts: 3, baseDelayMs: 0, maxDelayMs: 0, isRetryable: () => true }), /again/);
    assert.equal(calls, 3);
  });

  it('draws the delay with full jitter under an exponential cap', () => {
    assert.equal(backoffDelay(0, 10, 1000, () => 0.999), 9);
    assert.equal(backoffDelay(3, 10, 1000, () => 0.5), 40);
    assert.equal(backoffDelay(20, 10, 1000, () => 0.5), 500);
    assert.equal(backoffDelay(5, 10, 1000, () => 0), 0);
  });

  it('an abort during the backoff ends the retries: no attempt after it, the last error thrown', async () => {
    const controller = new AbortController();
    let calls = 0;
    await assert.rejects(
      retry(
        async () => {
          calls++;
          throw new Error(`transient ${calls}`);
        },
        { attempts: 5, baseDelayMs: 60_000, maxDelayMs: 60_000, random: () => 1, isRetryable: () => true, signal: controller.signal, onRetry: () => setImmediate(() => controller.abort()) },
      ),
      /transient 1/,
    );
    assert.equal(calls, 1, 'an attempt was made after the abort');
  });
});
