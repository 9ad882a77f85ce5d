import { randomUUID } from 'node:crypto';
import autocannon from 'autocannon';
import { sleep } from '../../lib/retry.js';
import { sendUntilSettled } from './client.js';
import type { ScenarioReport } from './report.js';
import { newMerchant, setUp } from './setup.js';
import type { ChaosStack } from './stack.js';

/**
 * Overload: the sustainable rate of POST /v1/transfers is measured first (closed loop, autocannon), then
 * `factor` times that rate is offered open-loop for `seconds`. Promises checked:
 * - what is not admitted is refused at once with 429 or 503 and Retry-After (never a hang, never a 5xx
 *   without Retry-After);
 * - admitted requests keep a bounded latency: a probe sending one request every 100 ms beside the flood gets
 *   its 2xx answers within the gateway's gRPC deadline plus a second;
 * - memory stays bounded (peak RSS of the gateway and ledger reported);
 * - every acknowledged transfer is in the ledger;
 * - the system recovers by itself: a request succeeds soon after the flood ends.
 */
export interface OverloadOptions {
  seconds: number;
  factor: number;
  /** Closed-loop measurement of the sustainable rate. */
  measureSeconds?: number;
}

export async function runOverload(stack: ChaosStack, options: OverloadOptions): Promise<ScenarioReport> {
  const violations: string[] = [];
  const url = stack.gatewayUrl;
  const { key } = await newMerchant(stack, 'overload');
  const account = async () => (await setUp(stack, key, '/v1/accounts', { currency: 'USD' })).id as string;
  const [source, measured, flooded] = [await account(), await account(), await account()];
  const transferTo = (credit: string) => () => JSON.stringify({ id: randomUUID(), debit_account_id: source, credit_account_id: credit, amount: 1, currency: 'USD' });
  const request = (credit: string) => ({
    method: 'POST' as const,
    path: '/v1/transfers',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    setupRequest: (r: autocannon.Request) => ({ ...r, body: transferTo(credit)() }),
  });

  const baseline = await autocannon({ url, connections: 32, duration: options.measureSeconds ?? 4, requests: [request(measured)] });
  const sustainable = baseline['2xx'] / (options.measureSeconds ?? 4);
  if (sustainable <= 0) throw new Error(`no transfer succeeded while measuring the sustainable rate: ${JSON.stringify(baseline.statusCodeStats)}`);

  // The flood, with a probe beside it.
  const acknowledged: string[] = [];
  const statuses = new Map<number, number>();
  let withoutRetryAfter = 0;
  let shedByGateway = 0;
  const flood = autocannon({
    url,
    connections: 1_000,
    overallRate: Math.ceil(sustainable * options.factor),
    duration: options.seconds,
    timeout: 30,
    requests: [
      {
        ...request(flooded),
        onResponse: (status: number, body: string, _context: object, headers: Record<string, unknown> | undefined) => {
          statuses.set(status, (statuses.get(status) ?? 0) + 1);
          if (status === 201) acknowledged.push(JSON.parse(body).id);
          else if (status === 429 || status === 503) {
            if (status === 503 && JSON.parse(body).error?.code === 'overloaded') shedByGateway++;
            if (!Object.keys(headers ?? {}).some((name) => name.toLowerCase() === 'retry-after')) withoutRetryAfter++;
          }
        },
      },
    ],
  });
  const probeLatencies: number[] = [];
  /** Probe requests that got no answer within 30 s: a hang, which shedding exists to prevent. */
  let probeHangs = 0;
  let probing = true;
  const probe = (async () => {
    while (probing) {
      const started = performance.now();
      try {
        const r = await fetch(`${url}/v1/transfers`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: transferTo(flooded)(),
          signal: AbortSignal.timeout(30_000),
        });
        const text = await r.text();
        if (r.status === 201) {
          probeLatencies.push(performance.now() - started);
          acknowledged.push(JSON.parse(text).id);
        }
      } catch {
        probeHangs++;
      }
      await sleep(100);
    }
  })();
  const result = await flood;
  probing = false;
  await probe;

  // Recovery: the first request to succeed after the flood, without outside help.
  const floodEnded = performance.now();
  const recovered = await sendUntilSettled(url, key, '/v1/transfers', { body: JSON.parse(transferTo(flooded)()), idempotencyKey: randomUUID(), giveUpAt: Date.now() + 30_000 });
  const recoverySeconds = (performance.now() - floodEnded) / 1000;
  if (recovered?.status !== 201) violations.push(`not recovered 30 s after the flood: ${recovered?.status ?? 'no answer'}`);

  const stored = await stack.pool.query('SELECT count(*)::int AS n FROM transfers WHERE id = ANY($1::uuid[])', [acknowledged]);
  const lost = acknowledged.length - stored.rows[0].n;
  if (lost !== 0) violations.push(`${lost} acknowledged transfers are not in the ledger`);
  if (withoutRetryAfter > 0) violations.push(`${withoutRetryAfter} refusals (429/503) without Retry-After`);
  if (result.errors > 0) violations.push(`${result.errors} flood requests got no answer (errors and timeouts of 30 s)`);
  if (probeHangs > 0) violations.push(`${probeHangs} probe requests got no answer within 30 s`);
  const refusedOtherwise = [...statuses].filter(([status]) => ![201, 429, 503].includes(status));
  for (const [status, n] of refusedOtherwise) violations.push(`${n} answers with status ${status} (only 201, 429 and 503 expected)`);
  probeLatencies.sort((a, b) => a - b);
  const quantile = (q: number) => probeLatencies[Math.min(probeLatencies.length - 1, Math.floor(q * probeLatencies.length))] ?? NaN;
  const bound = Number(stack.envOf('gateway')['GATEWAY_GRPC_DEADLINE_MS'] ?? 5_000) + 1_000;
  if (quantile(1) > bound) violations.push(`an admitted probe request took ${quantile(1).toFixed(0)} ms (bound ${bound} ms)`);
  if (probeLatencies.length === 0) violations.push('no probe request was admitted during the flood');

  return {
    counts: {
      'sustainable transfers/s (closed loop)': sustainable,
      'offered requests/s': Math.ceil(sustainable * options.factor),
      'sent during the flood': result.requests.sent,
      'answered during the flood': [...statuses.values()].reduce((a, b) => a + b, 0),
      '201 acknowledged': statuses.get(201) ?? 0,
      '429 rate limited': statuses.get(429) ?? 0,
      '503 overloaded (shed by the gateway)': shedByGateway,
      '503 other (backend unavailable)': (statuses.get(503) ?? 0) - shedByGateway,
      'no answer (errors, timeouts)': result.errors,
      'probe requests without an answer': probeHangs,
      'admitted probe p50 ms': quantile(0.5),
      'admitted probe p99 ms': quantile(0.99),
      'admitted probe max ms': quantile(1),
      'gateway peak RSS MiB': stack.peakRssMiB('gateway'),
      'ledger peak RSS MiB': stack.peakRssMiB('ledger'),
      'seconds to recover': recoverySeconds,
      lost,
    },
    violations,
  };
}
