import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { Coalescer } from './coalesce.js';

describe('Coalescer (group commit of one event-loop turn)', () => {
  it('gives the callers of one turn one flush, each its own result, in order', async () => {
    const flushes: number[][] = [];
    const doubled = new Coalescer(async (items: number[]) => {
      flushes.push(items);
      return items.map((i) => i * 2);
    });
    assert.deepEqual(await Promise.all([1, 2, 3].map((i) => doubled.add(i))), [2, 4, 6]);
    assert.deepEqual(flushes, [[1, 2, 3]]);
  });

  it('a flush that throws at once fails its callers and frees its slot: later callers are still served', async () => {
    let calls = 0;
    const coalescer = new Coalescer(
      (items: number[]) => {
        calls++;
        if (calls === 1) throw new Error('broken at once');
        return Promise.resolve(items);
      },
      1_000,
      1,
    );
    await assert.rejects(coalescer.add(1), /broken at once/);
    assert.equal(await coalescer.add(2), 2);
  });
});
