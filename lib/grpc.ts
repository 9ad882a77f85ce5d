import { Metadata, status, type CallOptions, type ServiceError, type ServerUnaryCall, type sendUnaryData } from '@grpc/grpc-js';
import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Histogram, type Meter, type TextMapGetter, type TextMapSetter } from '@opentelemetry/api';
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

/**
 * A gRPC error received from another service of the project as the AppError it was thrown as there: kind from
 * the status, code and field from the metadata (x-error-field is percent-encoded), Retry-After kept.
 */
export function fromServiceError(error: ServiceError): AppError {
  const kind = KIND_OF_STATUS[error.code] ?? 'internal';
  const first = (key: string) => {
    const value = error.metadata?.get(key)[0];
    return value === undefined ? undefined : decodeURIComponent(String(value));
  };
  const field = first(ERROR_FIELD_KEY);
  const retryAfter = Number(first(RETRY_AFTER_KEY) ?? (kind === 'unavailable' || kind === 'resource_exhausted' ? 1 : NaN));
  const code = first(ERROR_CODE_KEY) ?? kind;
  // An internal error's message stays on the server that logged it.
  const message = kind === 'internal' ? 'internal error' : (error.details ?? code);
  return new AppError(kind, code, message, { ...(field ? { field } : {}), ...(Number.isFinite(retryAfter) ? { retryAfterSeconds: retryAfter } : {}) }, { cause: error });
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

export function toServiceError(error: unknown): Partial<ServiceError> {
  const metadata = new Metadata();
  if (error instanceof AppError) {
    metadata.set(ERROR_CODE_KEY, headerSafe(error.code));
    if (error.details.field) metadata.set(ERROR_FIELD_KEY, headerSafe(error.details.field));
    if (error.details.retryAfterSeconds !== undefined) metadata.set(RETRY_AFTER_KEY, String(error.details.retryAfterSeconds));
    if (typeof error.details['owner'] === 'string') metadata.set(SHARD_OWNER_KEY, headerSafe(error.details['owner']));
    // Internal messages can carry SQL or ids of other tenants: never sent to the caller.
    const details = error.kind === 'internal' ? 'internal error' : error.message;
    return { code: STATUS_OF[error.kind], details, metadata };
  }
  metadata.set(ERROR_CODE_KEY, 'internal');
  return { code: status.INTERNAL, details: 'internal error', metadata };
}

/**
 * Handlers still running, in this process. A call the client cancelled (or whose deadline passed) is over for
 * grpc-js, but its handler goes on: shutdown must wait for those before closing the pool they use.
 */
const running = new Set<Promise<unknown>>();

/** Waits until every handler started in this process has finished, or `timeoutMs`. */
export async function drainHandlers(timeoutMs = 10_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([Promise.allSettled([...running]), new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
  clearTimeout(timer);
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
    const started = performance.now();
    const path = call.getPath?.() ?? method;
    const parent = propagation.extract(ROOT_CONTEXT, call.metadata, metadataGetter);
    const span = grpcTracer.startSpan(path.replace(/^\//, ''), { kind: SpanKind.SERVER, attributes: { 'rpc.system': 'grpc', 'rpc.method': method } }, parent);
    const finish = (code: status) => {
      span.setAttribute('rpc.grpc.status_code', code);
      if (code !== status.OK) span.setStatus({ code: SpanStatusCode.ERROR, message: status[code] });
      span.end();
      serverDurations.get(path.split('/')[1] ?? '')?.record((performance.now() - started) / 1000, { method, code: status[code] });
    };
    const work = context.with(trace.setSpan(parent, span), () => handler(call.request, call));
    running.add(work);
    work.finally(() => running.delete(work)).catch(() => undefined);
    work.then(
      (response) => {
        finish(status.OK);
        callback(null, response);
      },
      (thrown: unknown) => {
        const error = asAppError(thrown);
        if (!(error instanceof AppError) || error.kind === 'internal') context.with(trace.setSpan(parent, span), () => logger.error({ err: error, method }, 'request failed'));
        let reply: Partial<ServiceError>;
        try {
          reply = toServiceError(error);
        } catch (mappingError) {
          // Never leave a call unanswered (nor crash the server) because an error could not be described.
          logger.error({ err: mappingError, method }, 'error could not be mapped to a status');
          reply = { code: status.INTERNAL, details: 'internal error' };
        }
        finish(reply.code ?? status.UNKNOWN);
        callback(reply);
      },
    );
  };
}

/** A generated client's unary method, as grpc-js defines it (request, metadata, options, callback). */
export type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => unknown;

/** Calls a generated client's unary method with a deadline, as a promise. */
export function callUnary<Client, Req, Res>(client: Client, method: UnaryMethod<Req, Res>, request: Req, deadlineMs: number, metadata = new Metadata()): Promise<Res> {
  // A CLIENT span whose traceparent travels in the metadata: the server's span continues this trace.
  const path = ((method as { path?: string }).path ?? 'unknown').replace(/^\//, '');
  const parent = context.active();
  const span = grpcTracer.startSpan(path, { kind: SpanKind.CLIENT, attributes: { 'rpc.system': 'grpc' } }, parent);
  propagation.inject(trace.setSpan(parent, span), metadata, metadataSetter);
  return new Promise((resolve, reject) => {
    method.call(client, request, metadata, { deadline: Date.now() + deadlineMs }, (error, response) => {
      span.setAttribute('rpc.grpc.status_code', error ? error.code : status.OK);
      if (error) span.setStatus({ code: SpanStatusCode.ERROR, message: status[error.code] });
      span.end();
      if (error) reject(error);
      else resolve(response);
    });
  });
}
