/**
 * The SQL dialect rules of the project, in one place: every statement must run on PostgreSQL (local, tests)
 * and CockroachDB (production). These constructs either do not exist on CockroachDB, mean something else there, or
 * defeat its distribution (a sequence or SERIAL is a single hot range; advisory locks and LISTEN/NOTIFY are unsupported;
 * triggers and stored procedures hide writes from the code that reasons about them).
 */
export interface DialectRule {
  name: string;
  pattern: RegExp;
  why: string;
}

export const FORBIDDEN_CONSTRUCTS: readonly DialectRule[] = [
  { name: 'serial', pattern: /\b(small|big)?serial\d*\b/i, why: 'use UUID keys; serial columns are a hot sequence' },
  { name: 'sequence', pattern: /\bcreate\s+sequence\b|\bnextval\s*\(/i, why: 'no sequences on CockroachDB hot paths' },
  { name: 'identity', pattern: /\bgenerated\s+(always|by\s+default)\s+as\s+identity\b/i, why: 'identity columns are sequences' },
  { name: 'advisory-lock', pattern: /\bpg_(try_)?advisory_(xact_)?lock/i, why: 'advisory locks do not exist on CockroachDB' },
  { name: 'listen-notify', pattern: /\b(listen|notify|unlisten)\s+\w+|\bpg_notify\s*\(/i, why: 'LISTEN/NOTIFY does not exist on CockroachDB' },
  { name: 'trigger', pattern: /\bcreate\s+(or\s+replace\s+)?(constraint\s+)?trigger\b/i, why: 'no triggers: writes stay visible in code' },
  { name: 'plpgsql', pattern: /\blanguage\s+plpgsql\b|\bcreate\s+(or\s+replace\s+)?(function|procedure)\b/i, why: 'no stored procedures' },
  { name: 'unlogged', pattern: /\bunlogged\b/i, why: 'unlogged tables lose data on crash' },
  { name: 'inherits', pattern: /\binherits\s*\(/i, why: 'table inheritance does not exist on CockroachDB' },
  { name: 'exclusion', pattern: /\bexclude\s+using\b/i, why: 'exclusion constraints do not exist on CockroachDB' },
  // Runs on both, differently: a column or cast the code reads as a JS number on PostgreSQL comes back from
  // CockroachDB as INT8, which lib/db.ts parses to a bigint (a metric then drops it, arithmetic with numbers throws).
  { name: 'int-width', pattern: /\b(int|integer)\b/i, why: 'INT is INT8 on CockroachDB but INT4 on PostgreSQL: write INT4 or INT8' },
  // Integers divided give a truncated integer on PostgreSQL and a DECIMAL on CockroachDB (which has // for the
  // former, unknown to PostgreSQL): the same statement would compute different amounts.
  { name: 'division', pattern: /\//, why: 'INT / INT is an integer on PostgreSQL, a DECIMAL on CockroachDB: divide in code' },
];

export interface DialectViolation {
  rule: string;
  line: number;
  text: string;
  why: string;
}

/** Strips comments and string literals so that prose about a construct is not mistaken for its use. */
export function stripCommentsAndStrings(sql: string): string {
  return sql
    .replace(/\/\*[\s\S]*?\*\//g, (m) => m.replace(/[^\n]/g, ' '))
    .replace(/--[^\n]*/g, '')
    .replace(/'(?:[^']|'')*'/g, "''");
}

export function findDialectViolations(sql: string): DialectViolation[] {
  const lines = stripCommentsAndStrings(sql).split('\n');
  const violations: DialectViolation[] = [];
  lines.forEach((text, index) => {
    for (const rule of FORBIDDEN_CONSTRUCTS) {
      if (rule.pattern.test(text)) violations.push({ rule: rule.name, line: index + 1, text: text.trim(), why: rule.why });
    }
  });
  return violations;
}
