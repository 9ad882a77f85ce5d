import swagger from '@fastify/swagger';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { Ajv } from 'ajv';
import addFormats from 'ajv-formats';
import Fastify, { LogController, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { context, isSpanContextValid, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Meter, type Span } from '@opentelemetry/api';
import type { Config } from '../lib/config.js';
import { createPool, type Pool } from '../lib/db.js';
import { AppError, UnavailableError, ValidationError } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';
import { PeriodicTask } from '../lib/periodic.js';
import { ADMIN_SCOPE, Authenticator, bearerKey, type Caller } from './auth.js';
import { isSealed, seal, unseal } from './sealed-answer.js';
import type { Backends } from './backends.js';
import { errorHandler, sendError } from './errors.js';
import { NoQuery } from './schemas.js';
import { IdempotencyStore, parseIdempotencyKey, requestFingerprint, type HeldKey } from './idempotency.js';
import { RateLimiter } from './rate-limit.js';
import { accountRoutes } from './routes/accounts.js';
import { healthRoutes } from './routes/health.js';
import { merchantRoutes } from './routes/merchants.js';
import { paymentRoutes } from './routes/payments.js';
import { settlementRoutes } from './routes/settlements.js';
import { transferRoutes } from './routes/transfers.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The request's SERVER span (observability/tracing.ts), active while it is handled. */
    span: Span | null;
    caller: Caller | null;
    /** Of the body as sent, before validation fills in defaults. */
    fingerprint: string | null;
    /** The Idempotency-Key this request holds; with the caller key its answer is sealed under, if it is. */
    idempotency: (HeldKey & { sealedFor?: string }) | null;
  }
  interface FastifyContextConfig {
    /**
     * The route's answer carries a secret shown once (a new secret key): kept for an idempotent replay only
     * sealed under the caller's own key (sealed-answer.ts), never readable in the database.
     */
    answersSecret?: boolean;
  }
}

export interface GatewayDeps {
  config: Config;
  pool: Pool;
  backends: Backends;
  logger: Logger;
  inFlight?: InFlight;
  /** Where the REST RED metrics go (http_server_request_duration_seconds); none: not recorded. */
  meter?: Meter;
}

/** What every route module gets: the backends, the database, and the caller's checks. */
export interface RouteContext extends GatewayDeps {
  /** Where Idempotency-Key answers are kept (a route may record its answer in its own transaction). */
  idempotency: IdempotencyStore;
  /** The calling merchant's id; 401 for the admin key (it is not a merchant). */
  merchantOf(request: FastifyRequest): string;
  requireAdmin(request: FastifyRequest): void;
}

export type Gateway = FastifyInstance<any, any, any, any, TypeBoxTypeProvider>; // eslint-disable-line @typescript-eslint/no-explicit-any

/**
 * Requests whose handler has not finished. Fastify's close waits for open requests, but not for the handler of
 * one whose client went away: shutdown waits for those too before the database pool closes under them.
 */
export class InFlight {
  count = 0;

  async drained(timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.count > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Bodies are validated strictly (no coercion: "10" is not an amount, unknown fields are refused); query
 * strings and path parameters are text, so there numbers are coerced.
 */
function validators() {
  const body = new Ajv({ coerceTypes: false, removeAdditional: false, useDefaults: true, allErrors: false, strict: false });
  const query = new Ajv({ coerceTypes: true, removeAdditional: false, useDefaults: true, allErrors: false, strict: false });
  addFormats.default(body);
  addFormats.default(query);
  // ajv-formats' uuid also takes the URN form (urn:uuid:...), which neither PostgreSQL nor the ledger reads as an
  // id: only the plain form is a UUID here.
  for (const ajv of [body, query]) ajv.addFormat('uuid', /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i);
  return ({ schema, httpPart }: { schema: object; httpPart?: string }) => (httpPart === 'body' ? body : query).compile(schema);
}

/**
 * Deeper than any body of the API (a batch's metadata is four levels down): the body's fingerprint is taken
 * before validation, recursively, and a body nested a hundred thousand levels overflowed the stack (a 500).
 */
const MAX_BODY_DEPTH = 32;

/** A JSON string (skipped: brackets and digits inside do not count), bracket or number token. */
const JSON_TOKEN = /"(?:[^"\\]|\\.)*"|[[{\]}]|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/**
 * The request's JSON made ready for JSON.parse, in one pass over its tokens; undefined when it nests arrays and
 * objects deeper than MAX_BODY_DEPTH. Every number that parses to an integer it is not written as becomes a string:
 * JSON.parse would round 1.0000000000000001 to the amount 1 and 9007199254740990.6 to 2^53-1, where validation must
 * refuse a non-integer (naming its parameter). Integers written otherwise (100.0, 1e2) stay numbers.
 */
function preparedJson(json: string): string | undefined {
  let depth = 0;
  let tooDeep = false;
  const prepared = json.replace(JSON_TOKEN, (token) => {
    if (token === '[' || token === '{') {
      if (++depth > MAX_BODY_DEPTH) tooDeep = true;
      return token;
    }
    if (token === ']' || token === '}') {
      depth--;
      return token;
    }
    return token.startsWith('"') || isExact(token) ? token : `"${token}"`;
  });
  return tooDeep ? undefined : prepared;
}

function isExact(token: string): boolean {
  const value = Number(token);
  // Not an integer at all: validation refuses it where an integer is expected.
  if (!Number.isInteger(value)) return true;
  const [, sign, whole, fraction = '', exponent = '0'] = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(token)!;
  let digits = (whole + fraction).replace(/^0+/, '');
  if (digits === '') return true;
  // Decimal digits only, no powers of ten: a huge negative exponent is a string slice, not a BigInt of its size.
  const scale = Number(exponent) - fraction.length;
  if (scale < 0) {
    if (!/^0+$/.test(digits.slice(scale))) return false;
    digits = digits.slice(0, scale);
  } else {
    digits += '0'.repeat(scale);
  }
  return `${sign}${digits}` === BigInt(value).toString();
}

/**
 * Whether a request is for the API (/v1/, which needs a key): by the route it matched, not its raw URL, since the
 * router percent-decodes the path (/%761/payments is /v1/payments); by its URL when it matched none.
 */
function isApiRequest(request: FastifyRequest): boolean {
  return request.routeOptions.url?.startsWith('/v1/') ?? request.url.startsWith('/v1/');
}

/**
 * The gateway's database pool: key lookups and idempotency records, by key only, with the gateway's own statement
 * timeout (GATEWAY_DATABASE_TIMEOUT_MS) so that a database that stops answering fails requests soon.
 */
export function gatewayPool(config: Config, options: { max?: number } = {}): Pool {
  return createPool(config, { applicationName: 'gateway', keyAccessOnly: true, statementTimeoutMs: config.GATEWAY_DATABASE_TIMEOUT_MS, ...options });
}

export async function buildGateway(deps: GatewayDeps): Promise<Gateway> {
  const { config, pool, logger } = deps;
  const app = Fastify({
    loggerInstance: logger,
    // No access log lines from Fastify: they would carry URLs and headers; errors are logged by errorHandler.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: config.GATEWAY_BODY_LIMIT_BYTES,
    // Fastify's own 503 while closing has neither Retry-After nor the error object: ours is answered instead (below).
    return503OnClosing: false,
    // Duplicate keys, prototype pollution: refused by the JSON parser.
    onProtoPoisoning: 'error',
    onConstructorPoisoning: 'error',
    // Refused by Fastify's router before any hook (Fastify's own bodies are not the error object): a path that does
    // not percent-decode names nothing, and a path parameter past maxParamLength is too long an id, as one past
    // IdParams' 64 characters is.
    frameworkErrors: (error, request, reply) =>
      sendError(
        reply,
        error.code === 'FST_ERR_MAX_PARAM_LENGTH'
          ? new ValidationError('id', 'must NOT have more than 64 characters', 'parameter_invalid')
          : new AppError('not_found', 'resource_missing', `Unrecognized request URL (${request.method} ${request.url.split('?')[0]})`),
      ),
  }).withTypeProvider<TypeBoxTypeProvider>();
  app.setValidatorCompiler(validators());
  // A route that takes no query parameters refuses any (400), as one that takes some refuses unknown ones.
  app.addHook('onRoute', (route) => {
    if (route.url.startsWith('/v1/') && !route.schema?.querystring) route.schema = { ...route.schema, querystring: NoQuery };
  });
  // JSON only: Fastify would parse text/plain bodies too.
  app.removeContentTypeParser('text/plain');
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    const prepared = preparedJson(body as string);
    if (prepared === undefined) return done(new AppError('invalid_argument', 'body_invalid', `The request body nests arrays and objects deeper than ${MAX_BODY_DEPTH} levels`), undefined);
    parseJson(request, prepared, done);
  });
  app.setErrorHandler(errorHandler(logger));
  app.setNotFoundHandler((request, reply) => sendError(reply, new AppError('not_found', 'resource_missing', `Unrecognized request URL (${request.method} ${request.url.split('?')[0]})`)));

  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'Ledgerline API', version: '1.0.0', description: 'Accounts, transfers, payments and refunds on a double-entry ledger. Amounts are integers of minor units.' },
      components: { securitySchemes: { secretKey: { type: 'http', scheme: 'bearer', description: 'Your secret key (sk_...)' } } },
      security: [{ secretKey: [] }],
    },
  });

  traceRequests(app, logger, deps.meter, config.GATEWAY_TRACE_INCOMING);

  const authenticator = new Authenticator(pool, config.ADMIN_API_KEY, config.GATEWAY_AUTH_CACHE_MS);
  const limiter = new RateLimiter(config.GATEWAY_RATE_LIMIT_PER_SECOND, config.GATEWAY_RATE_LIMIT_BURST);
  const idempotency = new IdempotencyStore(pool, config.IDEMPOTENCY_TTL_HOURS);
  // Keys past their TTL are deleted in the background (several instances may do it at once: harmless).
  const cleanup = new PeriodicTask('idempotency key cleanup', () => idempotency.deleteExpired(), 10 * 60_000, logger);
  cleanup.start();
  app.addHook('onClose', () => cleanup.stop());
  app.decorateRequest('span', null);
  app.decorateRequest('caller', null);
  app.decorateRequest('idempotency', null);
  app.decorateRequest('fingerprint', null);

  const inFlight = deps.inFlight ?? new InFlight();
  const shed = deps.meter?.createCounter('gateway_requests_shed_total', { description: 'Requests refused with 503 because GATEWAY_MAX_IN_FLIGHT were in flight' });
  const finished = new WeakSet<FastifyRequest>();
  const finish = async (request: FastifyRequest) => {
    if (finished.has(request)) return;
    finished.add(request);
    inFlight.count--;
  };
  // Requests still arriving on open connections while the gateway shuts down: refused before any work, so the
  // client retries them on another instance (health stays answered: the process is up until it exits).
  let closing = false;
  app.addHook('preClose', (done) => {
    closing = true;
    done();
  });
  app.addHook('onRequest', async (request) => {
    inFlight.count++;
    if (closing && request.url !== '/healthz') throw new UnavailableError('shutting_down', 'This instance is shutting down: retry after the delay in Retry-After', 1);
    // Shed before any work (authentication included): health probes stay answered.
    if (inFlight.count > config.GATEWAY_MAX_IN_FLIGHT && isApiRequest(request)) {
      shed?.add(1);
      throw new UnavailableError('overloaded', 'The service is overloaded: retry after the delay in Retry-After', 1);
    }
  });
  app.addHook('onResponse', finish);

  app.addHook('onRequest', async (request) => {
    if (!isApiRequest(request)) return;
    request.caller = await authenticator.authenticate(request.headers.authorization);
    limiter.take(request.caller.kind === 'admin' ? 'admin' : request.caller.merchantId);
  });

  app.addHook('preValidation', async (request) => {
    // A POST without a body (capture, cancel, void) means "no parameters", as an empty object.
    if (request.method === 'POST' && request.body === undefined) request.body = {};
    if (request.method === 'POST') request.fingerprint = requestFingerprint(request.method, routedPath(request), request.body ?? {});
  });

  // After validation: a malformed request records nothing, not even its idempotency key.
  app.addHook('preHandler', async (request, reply) => {
    if (request.method !== 'POST' || !request.caller || !request.fingerprint) return;
    const key = parseIdempotencyKey(request.headers['idempotency-key']);
    if (key === undefined) return;
    const scope = request.caller.kind === 'admin' ? ADMIN_SCOPE : request.caller.merchantId;
    const sealedFor = request.routeOptions.config.answersSecret ? bearerKey(request.headers.authorization) : undefined;
    const begun = await idempotency.begin(scope, key, request.fingerprint);
    if (begun.kind === 'replay') {
      const body = isSealed(begun.body) ? sealedFor && unseal(begun.body, sealedFor, key) : begun.body;
      if (body === undefined) throw new AppError('conflict', 'idempotency_answer_sealed', 'The answer to this Idempotency-Key was sealed under another API key and cannot be replayed', { field: 'Idempotency-Key' });
      return reply.code(begun.status).header('content-type', 'application/json; charset=utf-8').header('idempotent-replayed', 'true').send(body);
    }
    request.idempotency = { scope, key, lockToken: begun.lockToken, ...(sealedFor ? { sealedFor } : {}) };
  });

  app.addHook('onSend', async (request, reply, payload) => {
    const held = request.idempotency;
    if (!held) return payload;
    request.idempotency = null;
    const body = typeof payload === 'string' ? payload : Buffer.isBuffer(payload) ? payload.toString('utf8') : JSON.stringify(payload ?? null);
    // Retryable outcomes are not kept: the retry must run again. Nor is a 400 the handler found (an unknown
    // currency, a currency mismatch): invalid parameters record nothing, as those the schema refuses before the
    // key is taken. Everything else is the answer for good.
    try {
      if (reply.statusCode >= 500 || reply.statusCode === 429 || reply.statusCode === 400) await idempotency.release(held);
      else await idempotency.complete(held, reply.statusCode, held.sealedFor ? seal(body, held.sealedFor, held.key) : body);
    } catch (error) {
      // The hooks after this one do not run: a request whose client is gone would never be finished.
      if (request.raw.destroyed) await finish(request);
      throw error;
    }
    return payload;
  });
  // Answers carry balances, payments and (once) secret keys: no cache or proxy between keeps them, and no browser
  // reads a JSON answer as anything else.
  app.addHook('onSend', async (_request, reply, payload) => {
    reply.header('cache-control', 'no-store').header('x-content-type-options', 'nosniff');
    return payload;
  });
  // A request whose client went away gets no onResponse: it is finished when its reply is produced, after the
  // hook above has stored its Idempotency-Key answer (shutdown waits for this before closing the pool).
  app.addHook('onSend', async (request, _reply, payload) => {
    if (request.raw.destroyed) await finish(request);
    return payload;
  });

  const context: RouteContext = {
    ...deps,
    idempotency,
    merchantOf(request) {
      const caller = request.caller;
      if (caller?.kind !== 'merchant') throw new AppError('unauthenticated', 'merchant_key_required', 'This route needs a merchant secret key');
      return caller.merchantId;
    },
    requireAdmin(request) {
      if (request.caller?.kind !== 'admin') throw new AppError('unauthenticated', 'admin_key_required', 'This route needs the platform admin key');
    },
  };
  healthRoutes(app, context);
  merchantRoutes(app, context);
  accountRoutes(app, context);
  transferRoutes(app, context);
  paymentRoutes(app, context);
  settlementRoutes(app, context);
  app.get('/openapi.json', { schema: { hide: true } }, async (_request: FastifyRequest, reply: FastifyReply) => reply.send(app.swagger()));
  return app;
}

/**
 * The path as routed, percent-encodings decoded: `/%761/transfers` is the request `/v1/transfers` is, so one
 * Idempotency-Key fingerprints both alike. A plain path is itself (keys stored before stay comparable).
 */
function routedPath(request: FastifyRequest): string {
  const template = request.routeOptions.url;
  if (!template) return request.url.split('?')[0]!;
  const params = request.params as Record<string, string | undefined>;
  return template.replace(/:(\w+)/g, (_, name: string) => params[name] ?? '');
}

const httpTracer = trace.getTracer('gateway');

/**
 * Every request is a SERVER span, in the caller's trace or (`link`, the default) the root of a new one linked to
 * the caller's W3C traceparent, active for the hooks and the handler
 * (so gRPC calls and SQL below it are its children), a sample of http_server_request_duration_seconds (RED by
 * route template, method and status) and one access log line with its trace id. The line names the route
 * template, never the URL: query strings and ids stay out of the logs.
 */
function traceRequests(app: Gateway, logger: Logger, meter: Meter | undefined, incoming: Config['GATEWAY_TRACE_INCOMING']): void {
  const duration = meter?.createHistogram('http_server_request_duration_seconds', {
    description: 'REST requests: duration by route, method and status (rate and errors from the counts)',
    advice: { explicitBucketBoundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] },
  });
  app.addHook('onRequest', (request, reply, done) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const caller = propagation.extract(ROOT_CONTEXT, request.headers);
    // A public endpoint's caller is not trusted with the sampling decision or the trace id (nor with baggage):
    // its span context is a link, and the trace ours (OpenTelemetry's guidance for public endpoints).
    const parent = incoming === 'continue' ? caller : ROOT_CONTEXT;
    const callerSpan = incoming === 'continue' ? undefined : trace.getSpanContext(caller);
    const links = callerSpan && isSpanContextValid(callerSpan) ? [{ context: callerSpan }] : [];
    const span = httpTracer.startSpan(`${request.method} ${route}`, { kind: SpanKind.SERVER, attributes: { 'http.request.method': request.method, 'http.route': route }, links }, parent);
    request.span = span;
    // A client that goes away before the answer is written gets no onResponse (the response never finishes):
    // without this its span would never end (the trace loses its root), and the request would be missing from
    // the latency histogram and the access log, though clients giving up are the slowest requests. Recorded
    // when the connection closes, as 499 (the client closed the request), while the handler runs on.
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished) end(request, reply, CLIENT_GONE);
    });
    context.with(trace.setSpan(parent, span), done);
  });
  app.addHook('onResponse', async (request, reply) => end(request, reply, reply.statusCode));
  /** Ends the request's span, records its sample and writes its line: once, on the first of onResponse and close. */
  function end(request: FastifyRequest, reply: FastifyReply, status: number): void {
    const span = request.span;
    if (!span) return;
    request.span = null;
    const route = request.routeOptions.url ?? 'unmatched';
    span.setAttribute('http.response.status_code', status);
    if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
    span.end();
    const seconds = reply.elapsedTime / 1000;
    duration?.record(seconds, { method: request.method, route, status_code: String(status) });
    context.with(trace.setSpan(ROOT_CONTEXT, span), () =>
      logger.info({ method: request.method, route, status, duration_ms: Math.round(reply.elapsedTime * 10) / 10, merchant: request.caller?.kind === 'merchant' ? request.caller.merchantId : request.caller?.kind }, 'request'),
    );
  }
}

/** The status recorded for a request whose client closed the connection before its answer (nginx's 499). */
const CLIENT_GONE = 499;
