import { Metadata, status, type CallOptions, type Server, type ServiceError, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Histogram, type Link, type Meter, type TextMapGetter, type TextMapSetter } from '@opentelemetry/api';
import { asAppError } from './db.js';
import { AppError, type ErrorKind } from './errors.js';
import type { Logger } from './logger.js';

/** AppError kinds to gRPC status codes: the one mapping used by every gRPC server of the project. */
const STATUS_OF: Record<ErrorKind, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  conflict: status.FAILED_PRECONDITION,
  unauthenticated: status.UNAUTHENTICATED,
  permission_denied: status.PERMISSION_DENIED,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  unavailable: status.UNAVAILABLE,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  internal: status.INTERNAL,
};

/** The reverse, for clients: what a status received from another service means here. */
export const KIND_OF_STATUS: Partial<Record<status, ErrorKind>> = {
  [status.INVALID_ARGUMENT]: 'invalid_argument',
  [status.OUT_OF_RANGE]: 'invalid_argument',
  [status.NOT_FOUND]: 'not_found',
  [status.FAILED_PRECONDITION]: 'conflict',
  [status.ALREADY_EXISTS]: 'conflict',
  [status.ABORTED]: 'unavailable',
  [status.UNAUTHENTICATED]: 'unauthenticated',
  [status.PERMISSION_DENIED]: 'permission_denied',
  [status.RESOURCE_EXHAUSTED]: 'resource_exhausted',
  [status.UNAVAILABLE]: 'unavailable',
  [status.DEADLINE_EXCEEDED]: 'deadline_exceeded',
  [status.CANCELLED]: 'unavailable',
};

/** What a caller is told of a transport failure, by kind (appErrorOf). */
const TRANSPORT_MESSAGES: Partial<Record<ErrorKind, string>> = {
  unavailable: 'a service this request needs is unavailable; retry later',
  deadline_exceeded: 'a service this request needs did not answer in time',
  resource_exhausted: 'a service this request needs refused the call for lack of resources; retry later',
};

/**
 * A failed call as the caller learns it: the status, its message, and the error's code, field and Retry-After.
 * A status carries it in metadata (toServiceError); a batched call's outcome carries it as a message
 * (payments.v1.CallError): the same fields either way.
 */
export interface CallFailure {
  status: status;
  message: string;
  code: string;
  field: string;
  /** 0: none. */
  retryAfterSeconds: number;
}

/** What a call that threw `error` answers: an AppError's kind, code and field; anything else is internal. */
export function callFailureOf(error: unknown): CallFailure {
  if (!(error instanceof AppError)) return { status: status.INTERNAL, message: 'internal error', code: 'internal', field: '', retryAfterSeconds: 0 };
  return {
    status: STATUS_OF[error.kind],
    // Internal messages can carry SQL or ids of other tenants: never sent to the caller.
    message: error.kind === 'internal' ? 'internal error' : error.message,
    code: error.code,
    field: error.details.field ?? '',
    retryAfterSeconds: error.details.retryAfterSeconds ?? 0,
  };
}

/**
 * A failure received from another service of the project as the AppError it was thrown as there: kind from the
 * status, code and field as sent, Retry-After kept (1 s when a retryable status came without one).
 */
export function appErrorOf(failure: CallFailure, cause?: unknown): AppError {
  const kind = KIND_OF_STATUS[failure.status] ?? 'internal';
  const retryAfter = failure.retryAfterSeconds || (kind === 'unavailable' || kind === 'resource_exhausted' ? 1 : 0);
  const code = failure.code || kind;
  // An internal error's message stays on the server that logged it. A status without an error code came from the
  // transport (grpc-js: no connection, deadline), not from a service's own answer: its details name internal
  // addresses and timings, which are for the logs, not for whoever the caller answers.
  const message = kind === 'internal' ? 'internal error' : !failure.code ? (TRANSPORT_MESSAGES[kind] ?? kind) : failure.message || code;
  return new AppError(kind, code, message, { ...(failure.field ? { field: failure.field } : {}), ...(retryAfter ? { retryAfterSeconds: retryAfter } : {}) }, { cause });
}

/** A gRPC call's error (status and metadata, as grpc-js rejects with) as its AppError; undefined for any other error. */
export function receivedFailure(error: unknown): AppError | undefined {
  const call = error as ServiceError;
  return error instanceof Error && typeof call.code === 'number' && call.metadata instanceof Metadata ? fromServiceError(call) : undefined;
}

/** A gRPC error received from another service as its AppError: code and field from the metadata (x-error-field is percent-encoded). */
export function fromServiceError(error: ServiceError): AppError {
  const first = (key: string) => {
    const value = error.metadata?.get(key)[0];
    return value === undefined ? '' : percentDecoded(String(value));
  };
  const retryAfter = Number(first(RETRY_AFTER_KEY));
  return appErrorOf(
    { status: error.code, message: error.details ?? '', code: first(ERROR_CODE_KEY), field: first(ERROR_FIELD_KEY), retryAfterSeconds: Number.isFinite(retryAfter) ? retryAfter : 0 },
    error,
  );
}

/**
 * `value` percent-decoded (headerSafe's inverse); as it came when it does not decode (a peer that encodes
 * otherwise): the error it describes must still reach the caller, not become a URIError of the client.
 */
function percentDecoded(value: string): string {
  try {
    return decodeURIComponent(value);
  } catch {
    return value;
  }
}

/**
 * A status received from a call to another service (the ledger, for settlement) that the handler let through:
 * one the caller may retry (that service is down, overloaded or slow) is answered as such, with Retry-After, as a
 * database that is down is; any other is this service's own fault (internal). Its message and field are about
 * that other call, not the caller's: not passed on.
 */
function dependencyFailure(error: unknown): unknown {
  const received = receivedFailure(error);
  if (!received?.retryable) return error;
  const retryAfterSeconds = received.details.retryAfterSeconds;
  return new AppError(received.kind, received.kind, `a service this call depends on answered ${status[(error as ServiceError).code]}; retry later`, retryAfterSeconds ? { retryAfterSeconds } : {}, { cause: error });
}

/** Error metadata keys: the problem code, the offending field and Retry-After, for the gateway to relay. */
export const ERROR_CODE_KEY = 'x-error-code';
export const ERROR_FIELD_KEY = 'x-error-field';
export const RETRY_AFTER_KEY = 'retry-after';
/** Where to send the request instead (a ledger instance that owns the shard). */
export const SHARD_OWNER_KEY = 'x-shard-owner';

/**
 * An ASCII metadata value must be printable ASCII; a field path can hold any character a caller put in a
 * metadata key. Percent-encoded (as grpc-message is): `decodeURIComponent` gives the field back.
 */
export function headerSafe(value: string): string {
  return value.replace(/[^\x20-\x7e]|%/gu, (c) => encodeURIComponent(c));
}

/** The status a failed call answers: `failure` in status and metadata, with the shard owner of a misrouted call. */
function toServiceError(failure: CallFailure, error: unknown): Partial<ServiceError> {
  const metadata = new Metadata();
  metadata.set(ERROR_CODE_KEY, headerSafe(failure.code));
  if (failure.field) metadata.set(ERROR_FIELD_KEY, headerSafe(failure.field));
  if (failure.retryAfterSeconds) metadata.set(RETRY_AFTER_KEY, String(failure.retryAfterSeconds));
  if (error instanceof AppError && typeof error.details['owner'] === 'string') metadata.set(SHARD_OWNER_KEY, headerSafe(error.details['owner']));
  return { code: failure.status, details: failure.message, metadata };
}

/**
 * Handlers still running, in this process. A call the client cancelled (or whose deadline passed) is over for
 * grpc-js, but its handler goes on: shutdown must wait for those before closing the pool they use.
 */
const handlers = new Set<Promise<unknown>>();

/** Waits until every handler started in this process has finished, or `timeoutMs`. */
export async function drainHandlers(timeoutMs = 10_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.allSettled([...handlers]), new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
  clearTimeout(timer);
}

/**
 * A service's gRPC server at shutdown: no new calls; the calls running may finish (cut after `timeoutMs`); then the
 * handlers of calls their clients gave up on, which grpc-js no longer counts, finish too (drainHandlers), so that
 * what they use (pools, clients) can be closed after this.
 */
export async function shutdownGrpcServer(server: Server, timeoutMs = 10_000): Promise<void> {
  await new Promise<void>((resolve) => {
    const force = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, timeoutMs);
    server.tryShutdown(() => {
      clearTimeout(force);
      resolve();
    });
  });
  await drainHandlers(timeoutMs);
}

const metadataGetter: TextMapGetter<Metadata> = {
  get: (carrier, key) => {
    const values = carrier.get(key);
    return values.length > 0 ? String(values[0]) : undefined;
  },
  keys: (carrier) => Object.keys(carrier.getMap()),
};
const metadataSetter: TextMapSetter<Metadata> = { set: (carrier, key, value) => carrier.set(key, value) };
const grpcTracer = trace.getTracer('grpc');

/** RED of the gRPC methods a process serves, per service (e.g. `ledger.v1.LedgerService`), on its meter. */
const serverDurations = new Map<string, Histogram>();

/** Records the duration and status of every call to these gRPC services on `meter` (rpc_server_duration_seconds). */
export function observeRpcServer(meter: Meter, services: readonly string[]): void {
  const histogram = meter.createHistogram('rpc_server_duration_seconds', {
    description: 'gRPC server calls: duration by method and status code (rate and errors from the counts)',
    advice: { explicitBucketBoundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10] },
  });
  for (const service of services) serverDurations.set(service, histogram);
}

/**
 * Wraps an async handler: AppErrors become statuses, anything else INTERNAL, logged once with the method. The
 * call is a SERVER span continuing the caller's traceparent (gRPC metadata), active while the handler runs,
 * and a sample of rpc_server_duration_seconds.
 */
export function unary<Req, Res>(logger: Logger, method: string, handler: (request: Req, call: ServerUnaryCall<Req, Res>) => Promise<Res>) {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
    const path = (call.getPath?.() ?? method).replace(/^\//, '');
    const parent = propagation.extract(ROOT_CONTEXT, call.metadata, metadataGetter);
    void serveCall(logger, path, method, parent, [], () => handler(call.request, call))
      .then((outcome) => ('response' in outcome ? callback(null, outcome.response) : callback(toServiceError(outcome.failure, outcome.error))))
      .catch((answerError: unknown) => {
        // Never leave a call unanswered (nor crash the server) because its answer could not be made.
        logger.error({ err: answerError, method }, 'answer could not be sent');
        callback({ code: status.INTERNAL, details: 'internal error' });
      });
  };
}

/**
 * Serves one call, or one item of a batched call (`path` e.g. `payments.v1.PaymentService/CreatePayment`):
 * a SERVER span under `parent` (the caller's context) with `links`, active while `work` runs, a sample of
 * rpc_server_duration_seconds, and a failure logged once if it is not the caller's (internal, or not an
 * AppError). Never rejects: it answers the response, or the failure to send with the error it came from.
 * With `answerBy` (epoch ms), an item not done by then is answered DEADLINE_EXCEEDED (its work goes on, as a
 * call's handler does after its caller gave up), so the items of a batch that are done get their answer.
 */
export async function serveCall<Res>(
  logger: Logger,
  path: string,
  method: string,
  parent: Context,
  links: Link[],
  work: () => Promise<Res>,
  answerBy?: number,
): Promise<{ response: Res } | { failure: CallFailure; error: unknown }> {
  const started = performance.now();
  const span = grpcTracer.startSpan(path, { kind: SpanKind.SERVER, attributes: { 'rpc.system': 'grpc', 'rpc.method': method }, links }, parent);
  const finish = (code: status) => {
    span.setAttribute('rpc.grpc.status_code', code);
    if (code !== status.OK) span.setStatus({ code: SpanStatusCode.ERROR, message: status[code] });
    span.end();
    serverDurations.get(path.split('/')[0] ?? '')?.record((performance.now() - started) / 1000, { method, code: status[code] });
  };
  const active = trace.setSpan(parent, span);
  const running = context.with(active, work);
  // Tracked until the work itself ends (an item answered at its deadline may still be running).
  handlers.add(running);
  running.finally(() => handlers.delete(running)).catch(() => undefined);
  try {
    const response = await (answerBy === undefined ? running : raceDeadline(running, answerBy, () => new AppError('deadline_exceeded', 'deadline_exceeded', 'not done before the deadline of the call')));
    finish(status.OK);
    return { response };
  } catch (thrown) {
    const error = asAppError(dependencyFailure(thrown));
    if (!(error instanceof AppError) || error.kind === 'internal') context.with(active, () => logger.error({ err: error, method }, 'request failed'));
    const failure = callFailureOf(error);
    finish(failure.status);
    return { failure, error };
  }
}

/**
 * `work`, or `expired()` thrown at `deadline` (epoch ms) if it has not settled by then. The work itself goes on;
 * only its answer is no longer awaited.
 */
export function raceDeadline<T>(work: Promise<T>, deadline: number, expired: () => Error): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(expired()), Math.max(0, deadline - Date.now()))));
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** A generated client's unary method, as grpc-js defines it (request, metadata, options, callback). */
export type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/**
 * Calls a generated client's unary method with a deadline, as a promise. Its CLIENT span is a child of the
 * active context, or of `span.parent` with `span.links` (a batched call serving many callers: a root linked to them).
 */
export function callUnary<Client, Req, Res>(
  client: Client,
  method: UnaryMethod<Req, Res>,
  request: Req,
  deadlineMs: number,
  span: { parent?: Context; links?: Link[] } = {},
): Promise<Res> {
  // A CLIENT span whose traceparent travels in the metadata: the server's span continues this trace.
  const path = ((method as { path?: string }).path ?? 'unknown').replace(/^\//, '');
  const parent = span.parent ?? context.active();
  const clientSpan = grpcTracer.startSpan(path, { kind: SpanKind.CLIENT, attributes: { 'rpc.system': 'grpc' }, links: span.links ?? [] }, parent);
  const metadata = new Metadata();
  propagation.inject(trace.setSpan(parent, clientSpan), metadata, metadataSetter);
  return new Promise((resolve, reject) => {
    try {
      method.call(client, request, metadata, { deadline: Date.now() + deadlineMs }, (error, response) => {
        clientSpan.setAttribute('rpc.grpc.status_code', error ? error.code : status.OK);
        if (error) clientSpan.setStatus({ code: SpanStatusCode.ERROR, message: status[error.code] });
        clientSpan.end();
        if (error) reject(error);
        else resolve(response);
      });
    } catch (error) {
      // Refused before it was sent (grpc-js throws for a closed channel): the span ends too, with the error.
      clientSpan.setStatus({ code: SpanStatusCode.ERROR, message: error instanceof Error ? error.message : String(error) });
      clientSpan.end();
      reject(error);
    }
  });
}
