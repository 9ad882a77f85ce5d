import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { derivedId } from './derived-id.js';

describe('derived ids', () => {
  it('are the ids stored so far: the same inputs give the same UUID in every version (values fixed when written)', () => {
    // Stored rows (payments, operations, ledger transfers, platform accounts) carry these ids: any change of the
    // derivation would make a retry post a second time under a new id.
    assert.equal(derivedId('platform', 'fee_revenue:USD'), '9dcdacf4-198d-8a90-a99e-c1e80d119bc7');
    assert.equal(derivedId('payment:merchant-ü', 'clé-€'), '839ed23d-de39-8ce9-be1a-b645364ff2fe');
    assert.match(derivedId('a', 'b'), /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    assert.notEqual(derivedId('ab', 'c'), derivedId('a', 'bc'), 'namespace and name are kept apart');
  });
});
