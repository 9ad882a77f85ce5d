import { strict as assert } from 'node:assert';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { loadMigrations } from './migrate.js';
import { FORBIDDEN_CONSTRUCTS, findDialectViolations } from './sql-dialect.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Where the services' code lives (tests, benchmarks and test tooling run on PostgreSQL only). */
const SERVICE_DIRS = ['lib', 'ledger', 'gateway', 'risk', 'settlement', 'observability', 'scripts'];

/**
 * The string and template literals of a TypeScript source that hold a SQL statement, with the line each starts on;
 * a template's substitutions become `$0` (a value or a fragment built elsewhere, itself a literal scanned on its own).
 */
function sqlLiterals(file: string, source: string): { line: number; sql: string }[] {
  const found: { line: number; sql: string }[] = [];
  const visit = (node: ts.Node): void => {
    let sql: string | undefined;
    if (ts.isStringLiteral(node) || ts.isNoSubstitutionTemplateLiteral(node)) sql = node.text;
    else if (ts.isTemplateExpression(node)) sql = node.head.text + node.templateSpans.map((span) => `$0${span.literal.text}`).join('');
    if (sql !== undefined && /^\s*(select|insert|update|delete|upsert|with|create|alter|drop|listen|notify)\s/i.test(sql)) {
      found.push({ line: tree.getLineAndCharacterOfPosition(node.getStart(tree)).line + 1, sql });
    }
    ts.forEachChild(node, visit);
  };
  const tree = ts.createSourceFile(file, source, ts.ScriptTarget.Latest, true);
  visit(tree);
  return found;
}

describe('SQL dialect rules (CockroachDB compatibility)', () => {
  it('every migration of the project is free of forbidden constructs', async () => {
    const migrations = await loadMigrations();
    assert.ok(migrations.length > 0, 'no migrations found');
    for (const m of migrations) {
      assert.deepEqual(findDialectViolations(m.sql), [], `${m.file} uses a forbidden construct`);
    }
  });

  const samples: Record<string, string> = {
    serial: 'CREATE TABLE t (id BIGSERIAL PRIMARY KEY);',
    sequence: "SELECT nextval('s');",
    identity: 'CREATE TABLE t (id INT GENERATED ALWAYS AS IDENTITY);',
    'advisory-lock': 'SELECT pg_advisory_xact_lock(1);',
    'listen-notify': 'NOTIFY outbox;',
    trigger: 'CREATE TRIGGER t BEFORE INSERT ON x FOR EACH ROW EXECUTE FUNCTION f();',
    plpgsql: 'CREATE OR REPLACE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;',
    unlogged: 'CREATE UNLOGGED TABLE t (id UUID);',
    inherits: 'CREATE TABLE t () INHERITS (u);',
    exclusion: 'CREATE TABLE t (r tsrange, EXCLUDE USING gist (r WITH &&));',
    'int-width': 'SELECT count(*)::int AS n FROM t;',
    division: 'SELECT amount * fee_bps / 10000 AS fee FROM payments;',
  };

  for (const rule of FORBIDDEN_CONSTRUCTS) {
    it(`detects ${rule.name}`, () => {
      const sql = samples[rule.name];
      assert.ok(sql, `no sample for ${rule.name}`);
      assert.ok(findDialectViolations(`-- header\n${sql}`).some((v) => v.rule === rule.name && v.line === 2));
    });
  }

  // The services' own statements run on CockroachDB as much as the migrations do.
  it('every SQL statement in the services\' code is free of forbidden constructs', async () => {
    const files: string[] = [];
    for (const dir of SERVICE_DIRS) {
      const names = await readdir(path.join(ROOT, dir), { recursive: true });
      files.push(...names.filter((f) => f.endsWith('.ts') && !f.endsWith('.test.ts')).map((f) => path.join(dir, f)));
    }
    assert.ok(files.length > 20, `too few sources found: ${files.length}`);
    const found: string[] = [];
    for (const file of files) {
      for (const { line, sql } of sqlLiterals(file, await readFile(path.join(ROOT, file), 'utf8'))) {
        for (const v of findDialectViolations(sql)) found.push(`${file}:${line + v.line - 1} ${v.rule}: ${v.text}`);
      }
    }
    assert.deepEqual(found, []);
  });

  it('ignores constructs named only in comments and string literals', () => {
    assert.deepEqual(findDialectViolations("-- no SERIAL here\n/* nor a TRIGGER */ SELECT 'LISTEN x';"), []);
  });
});
