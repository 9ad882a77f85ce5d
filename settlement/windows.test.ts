import assert from 'node:assert/strict';
import { describe, it } from 'mocha';
import { formatMajor, currencyOf } from '../lib/currency.js';
import { ValidationError } from '../lib/errors.js';
import { rfc3339Nanos } from './report.js';
import { describeSchedule, parseSchedule, windowContaining } from './windows.js';

const ns = (iso: string) => BigInt(Date.parse(iso)) * 1_000_000n;
const iso = (t: bigint) => new Date(Number(t / 1_000_000n)).toISOString();

describe('settlement windows', () => {
  it('daily windows end at the local cut-off; an instant exactly at the cut-off opens the next window', () => {
    const paris = parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '17:00' });
    // 17:00 in Paris is 16:00 UTC in winter.
    const cut = ns('2026-11-24T16:00:00.000Z');
    const before = windowContaining(paris, cut - 1n);
    assert.deepEqual([iso(before.start), iso(before.end)], ['2026-11-23T16:00:00.000Z', '2026-11-24T16:00:00.000Z']);
    const at = windowContaining(paris, cut);
    assert.deepEqual([iso(at.start), iso(at.end)], ['2026-11-24T16:00:00.000Z', '2026-11-25T16:00:00.000Z']);
    assert.equal(windowContaining(paris, cut + 1n).start, cut);
    // The same instant is in another window for a merchant in New York (17:00 there is 22:00 UTC).
    const newYork = parseSchedule({ kind: 'daily', timeZone: 'America/New_York', cutoff: '17:00' });
    assert.equal(iso(windowContaining(newYork, cut).end), '2026-11-24T22:00:00.000Z');
  });

  it('a daily window is 25 hours when the clocks go back and 23 when they go forward', () => {
    const paris = parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '12:00' });
    const autumn = windowContaining(paris, ns('2026-10-25T06:00:00Z'));
    assert.equal(autumn.end - autumn.start, 25n * 3_600_000_000_000n);
    const spring = windowContaining(paris, ns('2026-03-29T06:00:00Z'));
    assert.equal(spring.end - spring.start, 23n * 3_600_000_000_000n);
  });

  it('on a daylight-saving day the cut-off is the local wall-clock time, not that many hours after midnight', () => {
    const paris = parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '12:00' });
    // Spring forward (2026-03-29, 02:00 CET -> 03:00 CEST): 12:00 CEST is 10:00Z (not 13:00 CEST, 11:00Z).
    const spring = windowContaining(paris, ns('2026-03-29T06:00:00Z'));
    assert.deepEqual([iso(spring.start), iso(spring.end)], ['2026-03-28T11:00:00.000Z', '2026-03-29T10:00:00.000Z']);
    // Autumn (2026-10-25, 03:00 CEST -> 02:00 CET): 12:00 CET is 11:00Z (not 11:00 CET, 10:00Z).
    const autumn = windowContaining(paris, ns('2026-10-25T06:00:00Z'));
    assert.deepEqual([iso(autumn.start), iso(autumn.end)], ['2026-10-24T10:00:00.000Z', '2026-10-25T11:00:00.000Z']);
    // An instant just before / at the cut-off on those days is in the window ending / starting there.
    assert.equal(windowContaining(paris, ns('2026-03-29T10:00:00Z') - 1n).end, ns('2026-03-29T10:00:00Z'));
    assert.equal(windowContaining(paris, ns('2026-03-29T10:00:00Z')).start, ns('2026-03-29T10:00:00Z'));
    assert.equal(windowContaining(paris, ns('2026-10-25T11:00:00Z')).start, ns('2026-10-25T11:00:00Z'));
  });

  it('daily windows tile time across both changes: each starts where the previous ended, 23, 24 or 25 hours long', () => {
    const paris = parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '12:00' });
    for (const [from, expected] of [
      ['2026-03-27T11:00:00Z', ['2026-03-28T11:00:00.000Z', '2026-03-29T10:00:00.000Z', '2026-03-30T10:00:00.000Z', '2026-03-31T10:00:00.000Z']],
      ['2026-10-23T10:00:00Z', ['2026-10-24T10:00:00.000Z', '2026-10-25T11:00:00.000Z', '2026-10-26T11:00:00.000Z', '2026-10-27T11:00:00.000Z']],
    ] as const) {
      let closedThrough = ns(from);
      const ends: string[] = [];
      for (let i = 0; i < expected.length; i++) {
        const w = windowContaining(paris, closedThrough);
        assert.equal(iso(w.start), iso(closedThrough), `the window after one ending at ${iso(closedThrough)} starts there`);
        const hours = Number((w.end - w.start) / 3_600_000_000_000n);
        assert.ok(hours >= 23 && hours <= 25, `window ${iso(w.start)}..${iso(w.end)} is ${hours} h`);
        ends.push(iso(w.end));
        closedThrough = w.end;
      }
      assert.deepEqual(ends, expected);
    }
  });

  it('a cut-off the clocks skip is the instant they jump; one that occurs twice is its first occurrence', () => {
    const paris = parseSchedule({ kind: 'daily', timeZone: 'Europe/Paris', cutoff: '02:30' });
    // 2026-03-29 has no 02:30 in Paris (02:00 CET = 01:00Z jumps to 03:00 CEST): the cut-off is 01:00Z.
    const skipped = windowContaining(paris, ns('2026-03-29T00:30:00Z'));
    assert.deepEqual([iso(skipped.start), iso(skipped.end)], ['2026-03-28T01:30:00.000Z', '2026-03-29T01:00:00.000Z']);
    assert.equal(iso(windowContaining(paris, skipped.end).end), '2026-03-30T00:30:00.000Z');
    // 2026-10-25 has 02:30 twice (00:30Z in CEST, 01:30Z in CET): the cut-off is the first, the window 25 hours.
    const twice = windowContaining(paris, ns('2026-10-25T00:00:00Z'));
    assert.equal(iso(twice.end), '2026-10-25T00:30:00.000Z');
    const after = windowContaining(paris, twice.end);
    assert.deepEqual([iso(after.start), iso(after.end)], ['2026-10-25T00:30:00.000Z', '2026-10-26T01:30:00.000Z']);
    assert.equal(windowContaining(paris, ns('2026-10-25T01:30:00Z')).start, twice.end, 'the second 02:30 is inside the window');
    // Midnight in Havana on 2026-03-08 does not exist (00:00 CST = 05:00Z jumps to 01:00 CDT).
    const havana = parseSchedule({ kind: 'daily', timeZone: 'America/Havana', cutoff: '00:00' });
    const w = windowContaining(havana, ns('2026-03-08T12:00:00Z'));
    assert.deepEqual([iso(w.start), iso(w.end)], ['2026-03-08T05:00:00.000Z', '2026-03-09T04:00:00.000Z']);
  });

  it('interval windows are aligned to the epoch, so every instance agrees on them', () => {
    const every15 = parseSchedule({ kind: 'interval', intervalMinutes: 15 });
    const w = windowContaining(every15, ns('2026-11-24T10:07:13.5Z'));
    assert.deepEqual([iso(w.start), iso(w.end)], ['2026-11-24T10:00:00.000Z', '2026-11-24T10:15:00.000Z']);
    assert.equal(windowContaining(every15, w.end).start, w.end);
    assert.equal(describeSchedule(every15), 'every 15 minutes');
    assert.equal(describeSchedule(parseSchedule({ kind: 'daily', timeZone: 'Asia/Tokyo', cutoff: '09:30' })), 'daily at 09:30 Asia/Tokyo');
  });

  it('refuses unknown time zones, bad cut-offs and intervals, naming the field', () => {
    const field = (f: () => unknown) => {
      try {
        f();
      } catch (error) {
        assert.ok(error instanceof ValidationError);
        return error.details.field;
      }
      assert.fail('accepted');
    };
    assert.equal(field(() => parseSchedule({ kind: 'daily', timeZone: 'Mars/Olympus', cutoff: '17:00' })), 'time_zone');
    assert.equal(field(() => parseSchedule({ kind: 'daily', timeZone: 'UTC', cutoff: '24:00' })), 'cutoff');
    assert.equal(field(() => parseSchedule({ kind: 'interval', intervalMinutes: 0 })), 'interval_minutes');
    assert.equal(field(() => parseSchedule({ kind: 'interval', intervalMinutes: 1.5 })), 'interval_minutes');
    assert.equal(field(() => parseSchedule({ kind: 'weekly' })), 'kind');
  });

  it('amounts in major units and nanosecond times are exact', () => {
    assert.equal(formatMajor(1234n, currencyOf('USD')), '12.34');
    assert.equal(formatMajor(5n, currencyOf('USD')), '0.05');
    assert.equal(formatMajor(-5n, currencyOf('EUR')), '-0.05');
    assert.equal(formatMajor(1234n, currencyOf('JPY')), '1234');
    assert.equal(formatMajor(1234n, currencyOf('KWD')), '1.234');
    assert.equal(formatMajor(9_223_372_036_854_775_807n, currencyOf('USD')), '92233720368547758.07');
    assert.equal(rfc3339Nanos(ns('2026-11-24T16:00:00Z') + 123_456_789n), '2026-11-24T16:00:00.123456789Z');
  });
});
