import { backoffDelay, sleep } from '../../lib/retry.js';

/** The last answer of a request sent until it got a final one, and what it took. */
export interface Settled {
  status: number;
  // Parsed JSON: the scenarios read fields freely.
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  attempts: number;
  /** Attempts that got no answer at all (connection refused or reset, timeout). */
  unanswered: number;
}

/** Answers after which the same request is sent again: the server said so, or could not decide. */
const RETRYABLE = new Set([409, 429, 500, 502, 503, 504]);

/**
 * A client as the API asks merchants to write one: every POST carries an Idempotency-Key, and a request that
 * got no answer, a 5xx, a 429 or a 409 (the same key still in flight) is sent again, identical, after
 * Retry-After or a jittered backoff, until a final answer or `giveUpAt` (then undefined: the suite reports it).
 */
export async function sendUntilSettled(
  url: string,
  key: string,
  path: string,
  options: { body?: unknown; idempotencyKey?: string; giveUpAt: number; timeoutMs?: number },
): Promise<Settled | undefined> {
  const headers: Record<string, string> = { authorization: `Bearer ${key}` };
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  if (options.idempotencyKey) headers['idempotency-key'] = options.idempotencyKey;
  let unanswered = 0;
  for (let attempt = 1; Date.now() < options.giveUpAt; attempt++) {
    let waitMs = backoffDelay(attempt, 50, 2_000);
    try {
      const response = await fetch(url + path, {
        method: options.body === undefined ? 'GET' : 'POST',
        headers,
        body: options.body === undefined ? undefined : JSON.stringify(options.body),
        signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
      });
      const text = await response.text();
      if (!RETRYABLE.has(response.status)) return { status: response.status, body: text ? JSON.parse(text) : undefined, attempts: attempt, unanswered };
      const retryAfter = Number(response.headers.get('retry-after'));
      if (retryAfter > 0) waitMs = Math.min(retryAfter * 1000, 2_000) * (0.5 + Math.random() / 2);
    } catch {
      unanswered++;
    }
    await sleep(waitMs);
  }
  return undefined;
}
