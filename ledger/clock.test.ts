import { strict as assert } from 'node:assert';
import { CommitHorizon, MAX_CLOCK_LEAD_NANOS, MonotonicClock } from './clock.js';

describe('ledger clock', () => {
  it('never repeats nor goes back when the wall clock steps back', () => {
    let wall = 1_000_000n;
    const clock = new MonotonicClock(() => wall);
    const a = clock.now();
    wall -= 500_000n;
    const b = clock.now();
    const c = clock.now();
    assert.ok(a < b && b < c, `${a} ${b} ${c}`);
  });

  it('stays above what it observed, but no further than MAX_CLOCK_LEAD_NANOS ahead of the wall clock', () => {
    const wall = 1_000_000_000n;
    const clock = new MonotonicClock(() => wall);
    clock.observe(wall + 5n);
    assert.equal(clock.now(), wall + 6n);
    clock.observe(wall + 60_000_000_000n);
    assert.equal(clock.now(), wall + MAX_CLOCK_LEAD_NANOS + 1n);
  });

  it('a horizon is below every write still open, and waits for those open when asked', async () => {
    const commits = new CommitHorizon();
    const quick = commits.begin();
    const stuck = commits.begin();
    setTimeout(() => commits.end(quick), 20);
    const horizon = await commits.horizon(200);
    assert.equal(horizon, stuck.timestamp - 1n, 'not lowered for the write that ended within the wait');
    commits.end(stuck);
    assert.ok((await commits.horizon(0)) > stuck.timestamp);
    const later = commits.begin();
    assert.ok(later.timestamp > horizon, 'a write begun after a horizon is stamped above it');
    commits.end(later);
  });

  it('a scoped horizon neither waits for nor is lowered by an open write of another scope', async () => {
    const commits = new CommitHorizon();
    const others = commits.begin('other merchant');
    const mine = commits.begin('merchant');
    commits.end(mine);
    const started = Date.now();
    const horizon = await commits.horizon(1_000, { scope: 'merchant' });
    assert.ok(Date.now() - started < 500, 'waited for another scope');
    assert.ok(horizon > mine.timestamp, `${horizon} ${mine.timestamp}`);
    assert.equal(await commits.horizon(0), others.timestamp - 1n, 'unscoped, every open write counts');
    commits.end(others);
  });

  it('a horizon for a listing that reads up to a timestamp neither waits for nor is lowered by writes stamped above it', async () => {
    const commits = new CommitHorizon();
    const before = commits.begin();
    commits.end(before);
    const readsUpTo = commits.clock.now();
    const running = commits.begin();
    const started = Date.now();
    const horizon = await commits.horizon(1_000, { readsUpTo });
    assert.ok(Date.now() - started < 500, 'waited for a write stamped above what the listing reads');
    assert.ok(horizon >= readsUpTo, `${horizon} is below ${readsUpTo}`);
    assert.equal(await commits.horizon(0, { readsUpTo: running.timestamp }), running.timestamp - 1n, 'a write stamped within what it reads counts');
    commits.end(running);
  });
});
