import { randomUUID } from 'node:crypto';
import { sendUntilSettled } from './client.js';
import type { ChaosStack } from './stack.js';

/** A POST of a scenario's set-up (before any fault): retried like the clients', and it must succeed. */
export async function setUp(stack: ChaosStack, key: string, path: string, body: unknown, idempotent = true): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const answer = await sendUntilSettled(stack.gatewayUrl, key, path, { body, ...(idempotent ? { idempotencyKey: randomUUID() } : {}), giveUpAt: Date.now() + 60_000 });
  if (!answer || answer.status >= 300) throw new Error(`set-up ${path}: ${answer?.status} ${JSON.stringify(answer?.body)}`);
  return answer.body;
}

/** A new merchant of the scenario's own; its secret key. (Creating a merchant takes no Idempotency-Key: its answer holds the key.) */
export async function newMerchant(stack: ChaosStack, scenario: string): Promise<{ id: string; key: string }> {
  const merchant = await setUp(stack, stack.adminKey, '/v1/merchants', { name: `chaos ${scenario} ${randomUUID().slice(0, 8)}` }, false);
  return { id: merchant.id, key: merchant.secret_key };
}
