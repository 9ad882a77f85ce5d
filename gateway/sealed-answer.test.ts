import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { isSealed, seal, unseal } from './sealed-answer.js';

describe('sealed idempotent answers (answers that carry a secret)', () => {
  const answer = '{"id":"m_1","object":"merchant","secret_key":"sk_test_0123456789"}';

  it('opens only with the caller key and Idempotency-Key it was sealed under; the stored form shows nothing of it', () => {
    const stored = seal(answer, 'admin_key_1', 'order-1');
    assert.ok(isSealed(stored));
    assert.ok(!stored.includes('sk_test') && !stored.includes('m_1'));
    assert.equal(unseal(stored, 'admin_key_1', 'order-1'), answer);
    assert.equal(unseal(stored, 'admin_key_2', 'order-1'), undefined, 'another caller key');
    assert.equal(unseal(stored, 'admin_key_1', 'order-2'), undefined, 'another Idempotency-Key');
    assert.notEqual(seal(answer, 'admin_key_1', 'order-1'), stored, 'a fresh IV each time');
  });

  it('an altered stored answer does not open', () => {
    const stored = seal(answer, 'admin_key_1', 'order-1');
    const bytes = Buffer.from(stored.slice('sealed:v1:'.length), 'base64');
    bytes[bytes.length - 1]! ^= 1;
    assert.equal(unseal(`sealed:v1:${bytes.toString('base64')}`, 'admin_key_1', 'order-1'), undefined);
    assert.ok(!isSealed(answer));
    assert.equal(unseal('sealed:v1:AAAA', 'admin_key_1', 'order-1'), undefined, 'cut short');
    assert.equal(unseal(stored.slice(0, -8), 'admin_key_1', 'order-1'), undefined, 'a shortened tag or body');
  });
});
