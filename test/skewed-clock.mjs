// Test-only preload: shifts the process's wall clock by CLOCK_SKEW_MS (positive: ahead), as on a host whose
// clock is badly synchronised. Loaded with `--import` (spawnLedger's nodeArgs); worker threads inherit the
// execArgv and the environment, so piscina workers, where ledger batches take their timestamps, load it too.
// Plain JavaScript: in a worker thread, tsx's loader is not registered yet when preloads run.
// Date.now(), new Date() and Date() are shifted; monotonic clocks (performance.now, process.hrtime) are not,
// as on a real host whose wall clock is wrong.
import process from 'node:process';

const skewMs = Number(process.env['CLOCK_SKEW_MS'] ?? 0);
if (!Number.isInteger(skewMs)) throw new Error(`CLOCK_SKEW_MS must be an integer of milliseconds, not ${process.env['CLOCK_SKEW_MS']}`);

const RealDate = Date;
const skewedNow = () => RealDate.now() + skewMs;

globalThis.Date = new Proxy(RealDate, {
  // new Date() is "now"; a Date of a given time or of given parts is that time, whatever the clock.
  construct: (target, args, newTarget) => Reflect.construct(target, args.length === 0 ? [skewedNow()] : args, newTarget),
  // Date() called as a function is "now" as a string.
  apply: () => new RealDate(skewedNow()).toString(),
  get: (target, property, receiver) => (property === 'now' ? skewedNow : Reflect.get(target, property, receiver)),
});
