import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';

/**
 * Answers that carry a secret shown once (a new merchant's secret key) are kept for idempotent replay only
 * sealed: AES-256-GCM under a key derived (HKDF-SHA256) from the caller's own API key and the Idempotency-Key.
 * The database holds ciphertext; only the caller who made the request, presenting the same key again, can have
 * the answer replayed. Stored as `sealed:v1:<base64 of iv | tag | ciphertext>`.
 */
const PREFIX = 'sealed:v1:';
const IV_BYTES = 12;
const TAG_BYTES = 16;

function keyOf(callerKey: string, idempotencyKey: string): Buffer {
  return Buffer.from(hkdfSync('sha256', callerKey, idempotencyKey, 'ledgerline idempotent answer v1', 32));
}

export function seal(answer: string, callerKey: string, idempotencyKey: string): string {
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', keyOf(callerKey, idempotencyKey), iv, { authTagLength: TAG_BYTES });
  const sealed = Buffer.concat([cipher.update(answer, 'utf8'), cipher.final()]);
  return PREFIX + Buffer.concat([iv, cipher.getAuthTag(), sealed]).toString('base64');
}

export function isSealed(stored: string): boolean {
  return stored.startsWith(PREFIX);
}

/** The answer, or undefined when it was sealed for another caller key (a rotated admin key), cut short or altered. */
export function unseal(stored: string, callerKey: string, idempotencyKey: string): string | undefined {
  const bytes = Buffer.from(stored.slice(PREFIX.length), 'base64');
  if (bytes.length < IV_BYTES + TAG_BYTES) return undefined;
  try {
    const decipher = createDecipheriv('aes-256-gcm', keyOf(callerKey, idempotencyKey), bytes.subarray(0, IV_BYTES), { authTagLength: TAG_BYTES });
    decipher.setAuthTag(bytes.subarray(IV_BYTES, IV_BYTES + TAG_BYTES));
    return Buffer.concat([decipher.update(bytes.subarray(IV_BYTES + TAG_BYTES)), decipher.final()]).toString('utf8');
  } catch {
    return undefined;
  }
}
