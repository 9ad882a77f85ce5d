import { strict as assert } from 'node:assert';
import os from 'node:os';
import { amountsByCurrency, loadConfig, ownedShards, shardOwners } from './config.js';
import { ConfigError } from './errors.js';

describe('config', () => {
  it('has working defaults for a developer machine', () => {
    const config = loadConfig({});
    assert.equal(config.DATABASE_URL, 'postgres://postgres@127.0.0.1:5432/ledgerline');
    assert.equal(config.NATS_URL, 'nats://127.0.0.1:4222');
    assert.equal(config.LEDGER_SHARDS, 4);
    assert.equal(config.LEDGER_GRPC_LISTEN, '0.0.0.0:50051');
  });

  it('parses numbers and treats empty strings as unset', () => {
    const config = loadConfig({ LEDGER_SHARDS: '16', LEDGER_WORKERS: '', LEDGER_BATCH_MAX: '100', LEDGER_MAX_QUEUED_EVENTS: '100' });
    assert.equal(config.LEDGER_SHARDS, 16);
    assert.equal(config.LEDGER_WORKERS, Math.max(1, os.availableParallelism() - 1), 'one worker per core but one');
    assert.equal(config.LEDGER_BATCH_MAX, 100);
  });

  it('rejects bad values naming every variable and value', () => {
    assert.throws(
      () => loadConfig({ LEDGER_SHARDS: 'many', LEDGER_GRPC_LISTEN: 'localhost', DATABASE_URL: 'mysql://x', LEDGER_BATCH_MAX: '8191' }),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        const text = error.message;
        for (const expected of ['LEDGER_SHARDS="many"', 'LEDGER_GRPC_LISTEN="localhost"', 'DATABASE_URL="mysql://x"', 'LEDGER_BATCH_MAX="8191"']) {
          assert.ok(text.includes(expected), `${expected} missing from: ${text}`);
        }
        assert.equal(error.problems.length, 4);
        return true;
      },
    );
  });

  it('names a rejected secret without showing it: the admin key, and the password in a URL', () => {
    const adminKey = 'too-short-but-still-secret-key';
    assert.throws(
      () => loadConfig({ ADMIN_API_KEY: adminKey, DATABASE_URL: 'postgresql+psycopg://ledger:db-pa55word@db:5432/ledgerline', NATS_URL: 'natss://svc:nats-pa55word@nats:4222' }),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        const text = error.message;
        for (const secret of [adminKey, 'db-pa55word', 'nats-pa55word']) assert.ok(!text.includes(secret), `the configuration error shows a secret: ${text}`);
        for (const expected of ['ADMIN_API_KEY=[redacted]: at least 32 characters', 'DATABASE_URL="postgresql+psycopg://ledger:[redacted]@db:5432/ledgerline"']) {
          assert.ok(text.includes(expected), `${expected} missing from: ${text}`);
        }
        return true;
      },
    );
  });

  it('rejects an unknown log level and a malformed shard list', () => {
    assert.throws(() => loadConfig({ LOG_LEVEL: 'loud' }), /LOG_LEVEL="loud"/);
    assert.throws(() => loadConfig({ LEDGER_OWNED_SHARDS: '1-' }), /LEDGER_OWNED_SHARDS/);
  });

  it('checks settings against each other', () => {
    assert.throws(() => loadConfig({ LEDGER_MAX_QUEUED_EVENTS: '100' }), /LEDGER_MAX_QUEUED_EVENTS=100: must be at least LEDGER_BATCH_MAX/);
    assert.equal(loadConfig({ LEDGER_MAX_QUEUED_EVENTS: '100', LEDGER_BATCH_MAX: '100' }).LEDGER_MAX_QUEUED_EVENTS, 100);
    assert.throws(() => loadConfig({ CONSUMER_INBOX_RETENTION_HOURS: '24' }), /CONSUMER_INBOX_RETENTION_HOURS=24: must be at least EVENTS_MAX_AGE_HOURS \(168\)/);
    assert.equal(loadConfig({ CONSUMER_INBOX_RETENTION_HOURS: '24', EVENTS_MAX_AGE_HOURS: '24' }).CONSUMER_INBOX_RETENTION_HOURS, 24);
  });

  it('per-currency amounts: ISO 4217 codes, each once, whole minor units', () => {
    const config = loadConfig({ RISK_RULES_MAX_AMOUNT_BY_CURRENCY: 'JPY=1500000,IDR=15000000000' });
    assert.deepEqual([...amountsByCurrency(config.RISK_RULES_MAX_AMOUNT_BY_CURRENCY, 'RISK_RULES_MAX_AMOUNT_BY_CURRENCY')], [['JPY', 1_500_000n], ['IDR', 15_000_000_000n]]);
    assert.deepEqual([...amountsByCurrency(loadConfig({}).RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY, 'x')], []);
    assert.throws(() => loadConfig({ RISK_RULES_MAX_AMOUNT_BY_CURRENCY: 'XXY=5' }), /RISK_RULES_MAX_AMOUNT_BY_CURRENCY="XXY=5": XXY is not an ISO 4217 currency code/);
    assert.throws(() => loadConfig({ RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY: 'JPY=5,JPY=6' }), /JPY is named twice/);
    assert.throws(() => loadConfig({ RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY: 'jpy=5' }), /RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY.*expected CUR=amount pairs/);
    assert.throws(() => loadConfig({ RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY: 'JPY=1.5' }), /expected CUR=amount pairs/);
  });

  it('refuses a duplicate window longer than the events\' max age: JetStream would refuse the stream, and no event would ever be published', () => {
    assert.throws(
      () => loadConfig({ EVENTS_MAX_AGE_HOURS: '1', CONSUMER_INBOX_RETENTION_HOURS: '1', EVENTS_DUPLICATE_WINDOW_SECONDS: '7200' }),
      /EVENTS_DUPLICATE_WINDOW_SECONDS=7200: must not exceed EVENTS_MAX_AGE_HOURS \(1 h = 3600 s\)/,
    );
    assert.equal(loadConfig({ EVENTS_MAX_AGE_HOURS: '1', CONSUMER_INBOX_RETENTION_HOURS: '1', EVENTS_DUPLICATE_WINDOW_SECONDS: '3600' }).EVENTS_DUPLICATE_WINDOW_SECONDS, 3600);
  });

  it('gRPC TLS: all three files or none; a partial setting names what is missing', () => {
    const files = { GRPC_TLS_CA: '/etc/ledgerline/ca.pem', GRPC_TLS_CERT: '/etc/ledgerline/ledger.pem', GRPC_TLS_KEY: '/etc/ledgerline/ledger.key' };
    assert.equal(loadConfig({}).GRPC_TLS_CA, undefined);
    const loaded = loadConfig(files);
    assert.deepEqual([loaded.GRPC_TLS_CA, loaded.GRPC_TLS_CERT, loaded.GRPC_TLS_KEY], Object.values(files));
    assert.equal(loadConfig({ ...files, GRPC_TLS_SERVER_NAME: 'ledger.internal' }).GRPC_TLS_SERVER_NAME, 'ledger.internal');
    assert.throws(
      () => loadConfig({ GRPC_TLS_CERT: files.GRPC_TLS_CERT }),
      (error: unknown) => {
        assert.ok(error instanceof ConfigError);
        assert.deepEqual(error.problems, [
          'GRPC_TLS_CERT="/etc/ledgerline/ledger.pem": gRPC TLS also needs GRPC_TLS_CA and GRPC_TLS_KEY (set all of GRPC_TLS_CA, GRPC_TLS_CERT, GRPC_TLS_KEY, or none)',
        ]);
        return true;
      },
    );
    assert.throws(() => loadConfig({ GRPC_TLS_CA: files.GRPC_TLS_CA, GRPC_TLS_CERT: files.GRPC_TLS_CERT }), /GRPC_TLS_CA=.*, GRPC_TLS_CERT=.*: gRPC TLS also needs GRPC_TLS_KEY \(/);
    assert.throws(() => loadConfig({ GRPC_TLS_KEY: files.GRPC_TLS_KEY, GRPC_TLS_CA: '' }), /GRPC_TLS_KEY=.*: gRPC TLS also needs GRPC_TLS_CA and GRPC_TLS_CERT/);
    assert.throws(() => loadConfig({ GRPC_TLS_SERVER_NAME: 'ledger.internal' }), /GRPC_TLS_SERVER_NAME="ledger.internal": needs GRPC_TLS_CA, GRPC_TLS_CERT, GRPC_TLS_KEY/);
    assert.throws(() => loadConfig({ ...files, GRPC_TLS_SERVER_NAME: 'https://ledger' }), /GRPC_TLS_SERVER_NAME="https:\/\/ledger": expected a host name/);
    assert.throws(() => loadConfig({ GRPC_TLS_ALLOWED_CLIENTS: 'gateway' }), /GRPC_TLS_ALLOWED_CLIENTS="gateway": needs GRPC_TLS_CA, GRPC_TLS_CERT, GRPC_TLS_KEY/);
    assert.throws(() => loadConfig({ ...files, GRPC_TLS_ALLOWED_CLIENTS: 'gateway, risk' }), /GRPC_TLS_ALLOWED_CLIENTS.*expected common names separated by commas/);
    assert.equal(loadConfig({ ...files, GRPC_TLS_ALLOWED_CLIENTS: 'gateway,settlement' }).GRPC_TLS_ALLOWED_CLIENTS, 'gateway,settlement');
  });

  it('maps the other instances\' shards to their addresses', () => {
    assert.deepEqual([...shardOwners('0-1,3=ledger-a:50051;2=ledger-b:50052', 4)].sort(), [
      [0, 'ledger-a:50051'],
      [1, 'ledger-a:50051'],
      [2, 'ledger-b:50052'],
      [3, 'ledger-a:50051'],
    ]);
    assert.throws(() => loadConfig({ LEDGER_SHARD_OWNERS: '0-3=ledger-a' }), /LEDGER_SHARD_OWNERS/);
    assert.throws(() => loadConfig({ LEDGER_SHARDS: '4', LEDGER_SHARD_OWNERS: '0-9=ledger-a:1' }), /outside 0-3/);
    assert.throws(() => loadConfig({ LEDGER_SHARDS: '4', LEDGER_OWNED_SHARDS: '5' }), /outside 0-3/);
  });

  it('expands shard ownership and checks it against the shard count', () => {
    assert.deepEqual(ownedShards('all', 4), [0, 1, 2, 3]);
    assert.deepEqual(ownedShards('5,0-2,2', 8), [0, 1, 2, 5]);
    assert.throws(() => ownedShards('0-8', 8), /outside 0-7/);
    assert.throws(() => ownedShards('3-1', 8), ConfigError);
  });
});
