/**
 * CPU time spent by processes, from /proc (Linux only): what each part of a benchmark spent, read before and
 * after the measured run, whatever the machine ran meanwhile.
 */
import { readdirSync, readFileSync } from 'node:fs';

/** Linux's USER_HZ: /proc counts CPU time in ticks of 1/100 s. */
const TICK_SECONDS = 0.01;

/** Whether this machine has /proc to read. */
export const hasProcfs = (() => {
  try {
    readFileSync('/proc/self/stat');
    return true;
  } catch {
    return false;
  }
})();

/** CPU seconds (user and system) a process has used so far; 0 once it has gone. */
export function processCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // After the command name in parentheses (which may itself hold ") "): utime and stime, stat's 14th and 15th fields.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) * TICK_SECONDS;
  } catch {
    return 0;
  }
}

/** CPU seconds of every process named `command` (all of PostgreSQL's backends and workers, say). */
export function commandCpuSeconds(command: string): number {
  let seconds = 0;
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let name: string;
    try {
      name = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      continue; // the process ended meanwhile
    }
    if (name === command) seconds += processCpuSeconds(Number(pid));
  }
  return seconds;
}
