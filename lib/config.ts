import os from 'node:os';
import { isValidIBAN } from 'ibantools';
import { IANAZone } from 'luxon';
import { z } from 'zod';
import { isCurrencyCode } from './currency.js';
import { ConfigError } from './errors.js';

/**
 * The one configuration loader. Every setting is an environment variable with a default that works on a
 * developer machine; `loadConfig` validates all of them at start-up and fails with every problem listed,
 * naming the variable, so a bad deployment stops before it serves anything.
 */

const positiveInt = z.coerce.number().int().positive();

/**
 * Batch worker threads: one core less than the machine has (at least one), since the main thread (gRPC, the
 * batchers, the relay) needs a core too; the ledger starts no more than it owns shards. On this project's
 * 2-core reference machine, where PostgreSQL shares the cores, one worker beat two in `make bench` (ledger
 * and payments alike, README). Node 20 counts the host's cores, not a container's CPU limit: set it there.
 */
export function defaultLedgerWorkers(): number {
  return Math.min(64, Math.max(1, os.availableParallelism() - 1));
}
const nonNegativeInt = z.coerce.number().int().nonnegative();
const hostPort = z.string().regex(/^[^\s:]+:\d{1,5}$/, 'expected host:port');
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');

/**
 * Amounts per currency in its minor units, `CUR=amount` separated by commas (`JPY=1500000,KRW=13000000`): a limit in
 * minor units means a different sum in every currency (1,000,000 is 10,000.00 USD, 1,000,000 JPY, 10,000.00 IDR), so
 * a deployment serving several currencies names each one's own. Read with `amountsByCurrency`.
 */
const perCurrencyAmounts = z
  .string()
  .regex(/^([A-Z]{3}=\d{1,15}(,[A-Z]{3}=\d{1,15})*)?$/, 'expected CUR=amount pairs separated by commas, e.g. JPY=1500000,KRW=13000000')
  .default('');

/** Shard ownership: `all`, or a comma-separated list of shard numbers and inclusive ranges (`0-15,32`). */
const shardList = z.string().regex(/^(all|\d+(-\d+)?(,\d+(-\d+)?)*)$/, 'expected "all" or a list like 0-15,32');

const schema = z.object({
  NODE_ENV: z.enum(['development', 'test', 'production']).default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Prometheus /metrics of the service; 0 turns the endpoint off. */
  METRICS_PORT: z.coerce.number().int().min(0).max(65535).default(9464),

  DATABASE_URL: z
    .string()
    .regex(/^postgres(ql)?:\/\//, 'expected a postgres:// URL')
    .default('postgres://postgres@127.0.0.1:5432/ledgerline'),
  /** Which server DATABASE_URL points at: the SQL is the same, a few session settings are not. */
  DATABASE_DIALECT: z.enum(['postgresql', 'cockroachdb']).default('postgresql'),
  DATABASE_POOL_MAX: positiveInt.default(10),
  DATABASE_STATEMENT_TIMEOUT_MS: positiveInt.default(30_000),
  /**
   * A session idle inside a transaction this long is ended by the database, its locks released: the defence
   * against a client that vanished mid-transaction without the database hearing of it (a middlebox kept the
   * connection open), whose locks would otherwise stop every batch of its shard.
   */
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: positiveInt.default(60_000),

  NATS_URL: z.string().regex(/^(nats|tls):\/\//, 'expected a nats:// URL').default('nats://127.0.0.1:4222'),
  NATS_STREAM_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  /** The domain-event stream and the subject prefix it captures (`<prefix>.>`). */
  EVENTS_STREAM: z.string().regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only').default('EVENTS'),
  EVENTS_SUBJECT_PREFIX: z.string().regex(/^[a-z0-9_-]+$/, 'lower-case letters, digits, _ and - only').default('events'),
  /** Retention: events older than this or beyond this size are discarded (oldest first); see README. */
  EVENTS_MAX_AGE_HOURS: positiveInt.default(168),
  EVENTS_MAX_BYTES: positiveInt.default(10 * 1024 ** 3),
  /** Retention of the DEADLETTER stream (oldest discarded first): how long an operator has to act on one. */
  DEADLETTER_MAX_AGE_DAYS: positiveInt.default(90),
  DEADLETTER_MAX_BYTES: positiveInt.default(1024 ** 3),
  /** JetStream drops a message whose Nats-Msg-Id it has seen within this window. */
  EVENTS_DUPLICATE_WINDOW_SECONDS: positiveInt.max(86_400).default(120),
  /**
   * How long a consumer remembers an applied event (its inbox row) before pruning it: at least
   * EVENTS_MAX_AGE_HOURS, so that any delivery the stream can still make of it finds it (lib/consumer.ts).
   */
  CONSUMER_INBOX_RETENTION_HOURS: positiveInt.default(336),

  /**
   * Mutual TLS on every gRPC connection between the services (lib/grpc-tls.ts): PEM files of the CA that signs
   * the services' certificates, and of this process's certificate and private key (its server certificate, and
   * its client certificate when it calls another service). All three or none: unset, gRPC is plaintext.
   */
  GRPC_TLS_CA: z.string().min(1).optional(),
  GRPC_TLS_CERT: z.string().min(1).optional(),
  GRPC_TLS_KEY: z.string().min(1).optional(),
  /** The name clients expect in the servers' certificates, when the target's host (an IP, a proxy) is not in them. */
  GRPC_TLS_SERVER_NAME: z
    .string()
    .regex(/^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/, 'expected a host name')
    .optional(),

  /**
   * The clients a gRPC server of this process accepts, by their certificate's subject common name (comma
   * separated; e.g. the ledger: gateway,settlement,operator). Unset: any certificate the CA signed. Needs TLS.
   */
  GRPC_TLS_ALLOWED_CLIENTS: z
    .string()
    .regex(/^[A-Za-z0-9._-]+(,[A-Za-z0-9._-]+)*$/, 'expected common names separated by commas')
    .optional(),

  LEDGER_GRPC_LISTEN: hostPort.default('0.0.0.0:50051'),
  LEDGER_GRPC_TARGET: hostPort.default('127.0.0.1:50051'),
  LEDGER_SHARDS: z.coerce.number().int().min(1).max(4096).default(4),
  LEDGER_OWNED_SHARDS: shardList.default('all'),
  /**
   * Where the other shards live, for answering a request that reached the wrong instance:
   * `0-3,6=ledger-a:50051;4-5,7=ledger-b:50051`. Unset: the refusal names the shard only.
   */
  LEDGER_SHARD_OWNERS: z
    .string()
    .regex(/^\d+(-\d+)?(,\d+(-\d+)?)*=[^\s:;=]+:\d{1,5}(;\d+(-\d+)?(,\d+(-\d+)?)*=[^\s:;=]+:\d{1,5})*$/, 'expected shards=host:port;shards=host:port')
    .optional(),
  LEDGER_BATCH_MAX: z.coerce.number().int().min(1).max(8190).default(8190),
  LEDGER_BATCH_WINDOW_MS: nonNegativeInt.max(1000).default(1),
  LEDGER_WORKERS: positiveInt.max(64).default(defaultLedgerWorkers()),
  LEDGER_WORKER_CONCURRENCY: positiveInt.max(32).default(4),
  /** Events waiting in all shard queues before calls are refused with RESOURCE_EXHAUSTED. */
  LEDGER_MAX_QUEUED_EVENTS: positiveInt.default(200_000),
  LEDGER_EXPIRY_SWEEP_MS: positiveInt.default(1000),
  /**
   * How long a listing of an account's transfers (a merchant's payments) waits for the shard batches (payment
   * inserts) running when it starts; those still running then hide what was stamped after they started
   * (ledger/README.md "Timestamps", "Payments").
   */
  LEDGER_LISTING_WAIT_MS: nonNegativeInt.max(60_000).default(1000),
  /** The outbox relay publishes committed batches to JetStream (off: the outbox only grows). */
  LEDGER_RELAY_ENABLED: bool.default(true),
  /** Outbox rows (messages) published per relay round; they are in flight together. */
  LEDGER_RELAY_BATCH_ROWS: positiveInt.max(4096).default(128),

  // Payments (served by the ledger process, beside LedgerService).
  /** Platform fee of a new merchant, basis points of each captured amount (a merchant's own rate is stored). */
  PAYMENTS_DEFAULT_FEE_BPS: z.coerce.number().int().min(0).max(10_000).default(250),
  /** An authorization not captured within this many seconds expires and releases the amount. */
  PAYMENTS_AUTHORIZATION_TIMEOUT_SECONDS: positiveInt.max(30 * 86_400).default(7 * 86_400),
  /** A payment step left `processing` (crash between the ledger and the payment row) is resumed after this. */
  PAYMENTS_RESUME_AFTER_MS: positiveInt.default(30_000),

  RISK_GRPC_LISTEN: hostPort.default('0.0.0.0:50052'),
  /** A model artefact (npm run risk:train) for Score; unset: the rules-only scorer. */
  RISK_MODEL_PATH: z.string().min(1).optional(),
  /** A second artefact scored beside the champion (RISK_MODEL_PATH, or the rules when unset). */
  RISK_CHALLENGER_MODEL_PATH: z.string().min(1).optional(),
  /** split: the challenger decides for this percentage of customers (by a stable hash); shadow: it never decides. */
  RISK_CHALLENGER_MODE: z.enum(['split', 'shadow']).default('shadow'),
  RISK_CHALLENGER_PERCENT: z.coerce.number().int().min(0).max(100).default(10),
  RISK_GRPC_TARGET: hostPort.default('127.0.0.1:50052'),
  /** How often a risk instance with a model checkpoints its online feature store to PostgreSQL. */
  RISK_FEATURE_CHECKPOINT_MS: positiveInt.default(60_000),
  /** Deadline of the Score call made before every authorization. */
  RISK_DEADLINE_MS: positiveInt.max(10_000).default(150),
  /**
   * When Score does not answer in time: approve below this amount, decline at or above it. In US cents: a payment in
   * another currency is compared by its approximate worth in cents (lib/currency.ts), unless named below.
   */
  RISK_FAIL_OPEN_BELOW_AMOUNT: nonNegativeInt.default(10_000),
  /** The limit per currency in its own minor units (e.g. JPY=15000), instead of the approximate conversion. */
  RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY: perCurrencyAmounts,
  /** Score (parts per million) at or above which a payment is declined, and sent to review. */
  RISK_DECLINE_THRESHOLD_PPM: z.coerce.number().int().min(0).max(1_000_000).default(800_000),
  RISK_REVIEW_THRESHOLD_PPM: z.coerce.number().int().min(0).max(1_000_000).default(500_000),
  /**
   * Rules-only scorer: single-payment amount limit (US cents; another currency by its approximate worth in cents)
   * and velocity per card or customer.
   */
  RISK_RULES_MAX_AMOUNT: positiveInt.default(1_000_000),
  /** The amount limit per currency in its own minor units (e.g. JPY=1500000), instead of the approximate conversion. */
  RISK_RULES_MAX_AMOUNT_BY_CURRENCY: perCurrencyAmounts,
  RISK_RULES_VELOCITY_MAX: positiveInt.default(20),
  RISK_RULES_VELOCITY_WINDOW_SECONDS: positiveInt.default(60),

  SETTLEMENT_GRPC_LISTEN: hostPort.default('0.0.0.0:50053'),
  SETTLEMENT_GRPC_TARGET: hostPort.default('127.0.0.1:50053'),
  /** The JetStream durable consumer (and inbox key) of settlement: keep it stable across deployments. */
  SETTLEMENT_CONSUMER: z.string().regex(/^[A-Za-z0-9_-]+$/, 'letters, digits, _ and - only').default('settlement'),
  /** Windows of merchants without a settlement profile: daily at SETTLEMENT_CUTOFF in SETTLEMENT_TIME_ZONE, or every N minutes. */
  SETTLEMENT_WINDOW: z.enum(['daily', 'interval']).default('daily'),
  SETTLEMENT_CUTOFF: z.string().regex(/^([01]\d|2[0-3]):[0-5]\d$/, 'expected HH:MM').default('00:00'),
  SETTLEMENT_TIME_ZONE: z.string().min(1).default('UTC'),
  SETTLEMENT_INTERVAL_MINUTES: positiveInt.max(10_080).default(60),
  /** How often ended windows are looked for and closed, and stuck payouts resubmitted. */
  SETTLEMENT_CLOSE_EVERY_MS: positiveInt.default(10_000),
  /** How far in the future a payment event's time may be (producers' clock skew); a later one is dead-lettered. */
  SETTLEMENT_MAX_EVENT_SKEW_MS: positiveInt.default(300_000),
  /** The platform's own bank account, the debtor of the payout files (pain.001). */
  SETTLEMENT_DEBTOR_NAME: z.string().min(1).max(140).default('Ledgerline Platform'),
  SETTLEMENT_DEBTOR_IBAN: z.string().default('DE89370400440532013000'),
  SETTLEMENT_DEBTOR_BIC: z.string().regex(/^[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?$/, 'expected a BIC').default('COBADEFFXXX'),

  /** Traces: where spans go (observability/tracing.ts). Unset: OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else none. */
  TRACES_EXPORTER: z.enum(['otlp', 'console', 'file', 'none']).optional(),
  /** OTLP/HTTP endpoint of the collector (traces to /v1/traces, metrics to /v1/metrics). */
  OTEL_EXPORTER_OTLP_ENDPOINT: z.string().regex(/^https?:\/\//, 'expected an http(s):// URL').optional(),
  /** Share of new traces recorded, 0..1 (parent-based: a sampled caller is always followed). */
  TRACES_SAMPLING_RATIO: z.coerce.number().min(0).max(1).default(1),
  /** JSON lines of spans for TRACES_EXPORTER=file (read by `npm run trace`). */
  TRACES_FILE: z.string().min(1).default('.data/traces.jsonl'),
  /** service.instance.id of the telemetry; default host name and pid. */
  SERVICE_INSTANCE_ID: z.string().min(1).optional(),

  GATEWAY_PORT: z.coerce.number().int().min(0).max(65535).default(8080),
  GATEWAY_HOST: z.string().min(1).default('0.0.0.0'),
  /** Platform admin key: may create merchants. Unset: no admin API (make dev generates one). */
  ADMIN_API_KEY: z.string().min(32, 'at least 32 characters').optional(),
  GATEWAY_BODY_LIMIT_BYTES: positiveInt.max(10 * 1024 * 1024).default(1024 * 1024),
  /** Per API key token bucket: sustained requests per second and burst size. */
  GATEWAY_RATE_LIMIT_PER_SECOND: positiveInt.default(2_000),
  GATEWAY_RATE_LIMIT_BURST: positiveInt.default(4_000),
  /**
   * Requests one gateway instance works on at once; past it, /v1 requests are shed at once with 503 and
   * Retry-After, so that under overload the admitted ones keep a bounded latency and the process bounded memory.
   */
  GATEWAY_MAX_IN_FLIGHT: positiveInt.max(100_000).default(256),
  /** Deadline of every gRPC call the gateway makes. */
  GATEWAY_GRPC_DEADLINE_MS: positiveInt.max(60_000).default(5_000),
  /**
   * The gateway's statements (key lookups, idempotency records: single rows) end after this, instead of
   * DATABASE_STATEMENT_TIMEOUT_MS (made for the ledger's batches): a database that stops answering makes requests
   * 503 after this (5 s more on a connection that went silent: lib/db.ts), not after 30 to 35 s.
   */
  GATEWAY_DATABASE_TIMEOUT_MS: positiveInt.max(60_000).default(5_000),
  /** HTTP/2 channels per backend (one channel is one TCP connection and one event-loop turn at a time). */
  GATEWAY_GRPC_CHANNELS: positiveInt.max(64).default(4),
  /**
   * What a request's W3C `traceparent` starts: `link` (a public endpoint: a new trace, sampled by
   * TRACES_SAMPLING_RATIO, linked to the caller's span) or `continue` (the caller's trace: only behind a proxy of
   * the platform's own that strips or sets the header). Continued, any client could force its requests to be
   * sampled (a sampled traceparent is always followed) and write spans into traces of its choosing.
   */
  GATEWAY_TRACE_INCOMING: z.enum(['link', 'continue']).default('link'),
  /** How long a checked secret key is remembered (0: checked in the database on every request). */
  GATEWAY_AUTH_CACHE_MS: nonNegativeInt.max(600_000).default(5_000),
  IDEMPOTENCY_TTL_HOURS: positiveInt.max(24 * 30).default(24),
});

export type Config = z.infer<typeof schema>;

/** Rules between settings, checked after each one is valid on its own. */
function crossChecks(config: Config): string[] {
  const problems: string[] = [];
  try {
    ownedShards(config.LEDGER_OWNED_SHARDS, config.LEDGER_SHARDS);
    shardOwners(config.LEDGER_SHARD_OWNERS, config.LEDGER_SHARDS);
  } catch (error) {
    problems.push(...(error instanceof ConfigError ? error.problems : [String(error)]));
  }
  if (config.LEDGER_MAX_QUEUED_EVENTS < config.LEDGER_BATCH_MAX) {
    problems.push(`LEDGER_MAX_QUEUED_EVENTS=${config.LEDGER_MAX_QUEUED_EVENTS}: must be at least LEDGER_BATCH_MAX (${config.LEDGER_BATCH_MAX}), or a full request could never be admitted`);
  }
  if (config.CONSUMER_INBOX_RETENTION_HOURS < config.EVENTS_MAX_AGE_HOURS) {
    problems.push(
      `CONSUMER_INBOX_RETENTION_HOURS=${config.CONSUMER_INBOX_RETENTION_HOURS}: must be at least EVENTS_MAX_AGE_HOURS (${config.EVENTS_MAX_AGE_HOURS}), or an event replayed from the stream could be applied twice`,
    );
  }
  if (config.EVENTS_DUPLICATE_WINDOW_SECONDS > config.EVENTS_MAX_AGE_HOURS * 3600) {
    problems.push(
      `EVENTS_DUPLICATE_WINDOW_SECONDS=${config.EVENTS_DUPLICATE_WINDOW_SECONDS}: must not exceed EVENTS_MAX_AGE_HOURS (${config.EVENTS_MAX_AGE_HOURS} h = ${config.EVENTS_MAX_AGE_HOURS * 3600} s), or JetStream refuses the events stream and nothing is ever published`,
    );
  }
  if (config.RISK_REVIEW_THRESHOLD_PPM > config.RISK_DECLINE_THRESHOLD_PPM) {
    problems.push(`RISK_REVIEW_THRESHOLD_PPM=${config.RISK_REVIEW_THRESHOLD_PPM}: must not exceed RISK_DECLINE_THRESHOLD_PPM (${config.RISK_DECLINE_THRESHOLD_PPM})`);
  }
  for (const name of ['RISK_FAIL_OPEN_BELOW_AMOUNT_BY_CURRENCY', 'RISK_RULES_MAX_AMOUNT_BY_CURRENCY'] as const) {
    try {
      amountsByCurrency(config[name], name);
    } catch (error) {
      problems.push(...(error instanceof ConfigError ? error.problems : [String(error)]));
    }
  }
  problems.push(...grpcTlsProblems(config));
  if (config.TRACES_EXPORTER === 'otlp' && !config.OTEL_EXPORTER_OTLP_ENDPOINT) problems.push('TRACES_EXPORTER=otlp: needs OTEL_EXPORTER_OTLP_ENDPOINT');
  if (!IANAZone.isValidZone(config.SETTLEMENT_TIME_ZONE)) problems.push(`SETTLEMENT_TIME_ZONE=${JSON.stringify(config.SETTLEMENT_TIME_ZONE)}: not an IANA time zone`);
  if (!isValidIBAN(config.SETTLEMENT_DEBTOR_IBAN)) problems.push(`SETTLEMENT_DEBTOR_IBAN=${JSON.stringify(config.SETTLEMENT_DEBTOR_IBAN)}: not a valid IBAN`);
  return problems;
}

/** The gRPC TLS files that make sense only together. */
const GRPC_TLS_FILES = ['GRPC_TLS_CA', 'GRPC_TLS_CERT', 'GRPC_TLS_KEY'] as const;

/**
 * A half-configured TLS would either fail at the first call or, worse, quietly stay plaintext: every one of
 * GRPC_TLS_FILES is set, or none (and then no server name either).
 */
function grpcTlsProblems(config: Config): string[] {
  const set = GRPC_TLS_FILES.filter((name) => config[name] !== undefined);
  const missing = GRPC_TLS_FILES.filter((name) => config[name] === undefined);
  const shown = set.map((name) => `${name}=${JSON.stringify(config[name])}`).join(', ');
  if (set.length > 0 && missing.length > 0) return [`${shown}: gRPC TLS also needs ${missing.join(' and ')} (set all of ${GRPC_TLS_FILES.join(', ')}, or none)`];
  if (set.length === 0) {
    return (['GRPC_TLS_SERVER_NAME', 'GRPC_TLS_ALLOWED_CLIENTS'] as const)
      .filter((name) => config[name] !== undefined)
      .map((name) => `${name}=${JSON.stringify(config[name])}: needs ${GRPC_TLS_FILES.join(', ')} (gRPC is plaintext without them)`);
  }
  return [];
}

/** Settings that are secrets themselves: a configuration error names them but never shows their value. */
const SECRET_SETTINGS: ReadonlySet<string> = new Set(['ADMIN_API_KEY']);

/**
 * A rejected value as a configuration error shows it (the error goes to stderr and the logs): a secret setting
 * not at all, and a URL without the password it may carry (DATABASE_URL, NATS_URL: scheme://user:password@host).
 */
function shownValue(name: string, value: string | undefined): string {
  if (value !== undefined && SECRET_SETTINGS.has(name)) return '[redacted]';
  // Up to the last @ of the value: a password with an unencoded @ is hidden whole (at worst more is hidden).
  return JSON.stringify(value?.replace(/^([^:/?#]+:\/\/[^:@/?#]*:).*@/, '$1[redacted]@') ?? null);
}

export function loadConfig(env: NodeJS.ProcessEnv = process.env): Config {
  // Empty strings mean "unset": `FOO= make dev` must not become an invalid value.
  const present = Object.fromEntries(Object.entries(env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = schema.safeParse(present);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((issue) => {
        const name = issue.path.join('.');
        return `${name}=${shownValue(name, present[name])}: ${issue.message}`;
      }),
    );
  }
  const problems = crossChecks(parsed.data);
  if (problems.length > 0) throw new ConfigError(problems);
  return parsed.data;
}

/** Parses LEDGER_SHARD_OWNERS into shard -> host:port. */
export function shardOwners(spec: string | undefined, shardCount: number): Map<number, string> {
  const owners = new Map<number, string>();
  for (const entry of spec ? spec.split(';') : []) {
    const [shards, address] = entry.split('=') as [string, string];
    for (const shard of ownedShards(shards, shardCount)) owners.set(shard, address);
  }
  return owners;
}

/** Expands LEDGER_OWNED_SHARDS into the sorted shard numbers this instance owns, validated against the count. */
export function ownedShards(spec: string, shardCount: number): number[] {
  if (spec === 'all') return Array.from({ length: shardCount }, (_, i) => i);
  const owned = new Set<number>();
  for (const part of spec.split(',')) {
    const [lo, hi = lo] = part.split('-').map(Number) as [number, number?];
    if (hi < lo || hi >= shardCount) {
      throw new ConfigError([`LEDGER_OWNED_SHARDS=${JSON.stringify(spec)}: range ${part} outside 0-${shardCount - 1}`]);
    }
    for (let s = lo; s <= hi; s++) owned.add(s);
  }
  return [...owned].sort((a, b) => a - b);
}

/**
 * A per-currency amount setting (`JPY=1500000,KRW=13000000`) as a map from currency code to minor units; a currency
 * that is not ISO 4217, or named twice, is a ConfigError naming the variable.
 */
export function amountsByCurrency(spec: string, name: string): Map<string, bigint> {
  const amounts = new Map<string, bigint>();
  for (const entry of spec ? spec.split(',') : []) {
    const [code, amount] = entry.split('=') as [string, string];
    if (!isCurrencyCode(code)) throw new ConfigError([`${name}=${JSON.stringify(spec)}: ${code} is not an ISO 4217 currency code`]);
    if (amounts.has(code)) throw new ConfigError([`${name}=${JSON.stringify(spec)}: ${code} is named twice`]);
    amounts.set(code, BigInt(amount));
  }
  return amounts;
}
