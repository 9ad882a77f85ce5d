import { strict as assert } from 'node:assert';
import { loadMigrations } from './migrate.js';
import { FORBIDDEN_CONSTRUCTS, findDialectViolations } from './sql-dialect.js';

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
  };

  for (const rule of FORBIDDEN_CONSTRUCTS) {
    it(`detects ${rule.name}`, () => {
      const sql = samples[rule.name];
      assert.ok(sql, `no sample for ${rule.name}`);
      assert.ok(findDialectViolations(`-- header\n${sql}`).some((v) => v.rule === rule.name && v.line === 2));
    });
  }

  it('ignores constructs named only in comments and string literals', () => {
    assert.deepEqual(findDialectViolations("-- no SERIAL here\n/* nor a TRIGGER */ SELECT 'LISTEN x';"), []);
  });
});
