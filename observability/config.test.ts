import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'mocha';

/** The shipped monitoring configuration (alerts.yml, prometheus.yml) against what it is meant to catch. */
describe('monitoring configuration', () => {
  it('the alerting rules fire on the conditions of their unit tests (promtool test rules)', () => {
    const run = spawnSync('promtool', ['test', 'rules', 'observability/alerts-tests.yml'], { encoding: 'utf8' });
    assert.equal(run.error, undefined, 'promtool is installed by scripts/ensure-tools.sh');
    assert.equal(run.status, 0, run.stdout + run.stderr);
  });
});
