import { IANAZone } from 'luxon';
import { ValidationError } from '../lib/errors.js';

/**
 * Settlement windows. A window is [start, end) in nanoseconds since the Unix epoch: a movement at exactly a
 * cut-off belongs to the window that begins there. Daily windows end at a local time of day (wall-clock time)
 * in the merchant's time zone, so a window is 23 or 25 hours long across a daylight-saving change; each daily
 * window starts at the previous day's cut-off, so windows tile time with no gap and no overlap. The cut-off of
 * a day is the first instant of that day at which the local clock reads the cut-off time or later: when the
 * clocks go back and the time occurs twice, its first occurrence; when they go forward over it (e.g. 02:30 on
 * a day that skips from 02:00 to 03:00), the instant the clocks jump (03:00 local). Interval windows are N
 * minutes long and aligned to the epoch, so every instance computes the same boundaries.
 */
export type Schedule = { kind: 'daily'; timeZone: string; cutoffMinute: number } | { kind: 'interval'; minutes: number };

export interface Window {
  start: bigint;
  end: bigint;
}

const NS_PER_MS = 1_000_000n;
const NS_PER_MINUTE = 60_000n * NS_PER_MS;
const MS_PER_MINUTE = 60_000;
const MS_PER_DAY = 86_400_000;

/** The window of `schedule` that contains the instant `at`. */
export function windowContaining(schedule: Schedule, at: bigint): Window {
  if (schedule.kind === 'interval') {
    const length = BigInt(schedule.minutes) * NS_PER_MINUTE;
    const start = floorDiv(at, length) * length;
    return { start, end: start + length };
  }
  // Milliseconds are enough to place a boundary: cut-offs fall on whole minutes (or on a daylight-saving
  // transition, a whole second), and flooring keeps an instant a few nanoseconds before a cut-off before it.
  const zone = IANAZone.create(schedule.timeZone);
  const atMs = Number(floorDiv(at, NS_PER_MS));
  // The local calendar day of `at`, as the UTC midnight of that date (days are then plain arithmetic).
  let day = Math.floor((atMs + zone.offset(atMs) * MS_PER_MINUTE) / MS_PER_DAY) * MS_PER_DAY;
  let end = cutoffOn(zone, day, schedule.cutoffMinute);
  while (end <= atMs) {
    day += MS_PER_DAY;
    end = cutoffOn(zone, day, schedule.cutoffMinute);
  }
  let start = cutoffOn(zone, day - MS_PER_DAY, schedule.cutoffMinute);
  while (start > atMs) {
    day -= MS_PER_DAY;
    end = start;
    start = cutoffOn(zone, day - MS_PER_DAY, schedule.cutoffMinute);
  }
  return { start: BigInt(start) * NS_PER_MS, end: BigInt(end) * NS_PER_MS };
}

/**
 * The instant (epoch milliseconds) of the cut-off on a local date (given as the UTC midnight of that date): the
 * first instant at which the zone's clock reads that date and `cutoffMinute` or later. A time that occurs twice
 * (clocks going back) is its first occurrence; a time the clocks skip is the instant they jump over it.
 */
function cutoffOn(zone: IANAZone, date: number, cutoffMinute: number): number {
  const wall = date + cutoffMinute * MS_PER_MINUTE;
  // The local time is within a day of UTC, so the offsets a day either side cover every candidate.
  const offsets = [...new Set([zone.offset(wall - MS_PER_DAY), zone.offset(wall), zone.offset(wall + MS_PER_DAY)])];
  const valid = offsets.map((o) => wall - o * MS_PER_MINUTE).filter((t) => zone.offset(t) * MS_PER_MINUTE === wall - t);
  if (valid.length > 0) return Math.min(...valid);
  // In a gap: the clock reads before the cut-off at `lo` and after it at `hi`; the jump is in between.
  const localAt = (t: number) => t + zone.offset(t) * MS_PER_MINUTE;
  let lo = wall - Math.max(...offsets) * MS_PER_MINUTE;
  let hi = wall - Math.min(...offsets) * MS_PER_MINUTE;
  while (hi - lo > 1) {
    const mid = lo + Math.floor((hi - lo) / 2);
    if (localAt(mid) >= wall) hi = mid;
    else lo = mid;
  }
  return hi;
}

/** A schedule from its parts, validated (an unknown time zone or an out-of-range time is a ValidationError). */
export function parseSchedule(input: { kind: string; timeZone?: string; cutoff?: string; intervalMinutes?: number }): Schedule {
  if (input.kind === 'interval') {
    const minutes = input.intervalMinutes ?? 0;
    if (!Number.isInteger(minutes) || minutes < 1 || minutes > 10_080) throw new ValidationError('interval_minutes', 'must be a whole number of minutes from 1 to 10080 (a week)', 'invalid_interval');
    return { kind: 'interval', minutes };
  }
  if (input.kind !== 'daily') throw new ValidationError('kind', 'must be daily or interval', 'invalid_schedule');
  const timeZone = input.timeZone ?? 'UTC';
  if (!IANAZone.isValidZone(timeZone)) throw new ValidationError('time_zone', `${JSON.stringify(timeZone)} is not an IANA time zone`, 'invalid_time_zone');
  const match = /^([01]\d|2[0-3]):([0-5]\d)$/.exec(input.cutoff ?? '00:00');
  if (!match) throw new ValidationError('cutoff', 'must be a local time HH:MM', 'invalid_cutoff');
  return { kind: 'daily', timeZone, cutoffMinute: Number(match[1]) * 60 + Number(match[2]) };
}

/** The schedule in words, as the CLI and the logs show it. */
export function describeSchedule(schedule: Schedule): string {
  if (schedule.kind === 'interval') return `every ${schedule.minutes} minutes`;
  const hh = String(Math.floor(schedule.cutoffMinute / 60)).padStart(2, '0');
  const mm = String(schedule.cutoffMinute % 60).padStart(2, '0');
  return `daily at ${hh}:${mm} ${schedule.timeZone}`;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && a < 0n ? q - 1n : q;
}
