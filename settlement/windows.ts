import { DateTime, IANAZone } from 'luxon';
import { ValidationError } from '../lib/errors.js';

/**
 * Settlement windows. A window is [start, end) in nanoseconds since the Unix epoch: a movement at exactly a
 * cut-off belongs to the window that begins there. Daily windows end at a local time of day in the merchant's
 * time zone (so a window is 23 or 25 hours long across a daylight-saving change); interval windows are N
 * minutes long and aligned to the epoch, so every instance computes the same boundaries.
 */
export type Schedule = { kind: 'daily'; timeZone: string; cutoffMinute: number } | { kind: 'interval'; minutes: number };

export interface Window {
  start: bigint;
  end: bigint;
}

const NS_PER_MS = 1_000_000n;
const NS_PER_MINUTE = 60_000n * NS_PER_MS;

/** The window of `schedule` that contains the instant `at`. */
export function windowContaining(schedule: Schedule, at: bigint): Window {
  if (schedule.kind === 'interval') {
    const length = BigInt(schedule.minutes) * NS_PER_MINUTE;
    const start = floorDiv(at, length) * length;
    return { start, end: start + length };
  }
  // Milliseconds are enough to place a boundary: cut-offs fall on whole minutes, and flooring keeps an instant
  // a few nanoseconds before a cut-off before it.
  const local = DateTime.fromMillis(Number(floorDiv(at, NS_PER_MS)), { zone: schedule.timeZone });
  let end = local.startOf('day').plus({ minutes: schedule.cutoffMinute });
  if (end <= local) end = end.plus({ days: 1 });
  const start = end.minus({ days: 1 });
  return { start: BigInt(start.toMillis()) * NS_PER_MS, end: BigInt(end.toMillis()) * NS_PER_MS };
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
