import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { asAppError } from '../lib/db.js';
import { AppError, type ErrorKind } from '../lib/errors.js';
import type { Logger } from '../lib/logger.js';

/**
 * The one mapping from the project's errors to HTTP, and the error body (Stripe's shape):
 * {"error": {"type", "code", "message", "param"?}}.
 */

const HTTP_STATUS: Record<ErrorKind, number> = {
  invalid_argument: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  conflict: 422,
  resource_exhausted: 429,
  internal: 500,
  unavailable: 503,
  deadline_exceeded: 504,
};

/** Codes whose HTTP status differs from their kind's. */
const STATUS_OF_CODE: Record<string, number> = {
  idempotency_key_in_use: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  // The ledger refused to overdraw an account: Stripe answers a lack of funds with 402.
  exceeds_credits: 402,
  exceeds_debits: 402,
  insufficient_funds: 402,
};

const ERROR_TYPE: Record<ErrorKind, string> = {
  invalid_argument: 'invalid_request_error',
  unauthenticated: 'authentication_error',
  permission_denied: 'invalid_request_error',
  not_found: 'invalid_request_error',
  conflict: 'invalid_request_error',
  resource_exhausted: 'rate_limit_error',
  internal: 'api_error',
  unavailable: 'api_error',
  deadline_exceeded: 'api_error',
};

export interface ErrorBody {
  error: { type: string; code: string; message: string; param?: string; [extra: string]: unknown };
}

export function httpStatusOf(error: AppError): number {
  return STATUS_OF_CODE[error.code] ?? HTTP_STATUS[error.kind];
}

export function errorBody(error: AppError, extra: Record<string, unknown> = {}): ErrorBody {
  const type = error.code.startsWith('idempotency_key') ? 'idempotency_error' : ERROR_TYPE[error.kind];
  return {
    error: {
      type,
      code: error.code,
      // Internal details stay in the log.
      message: error.kind === 'internal' ? 'An internal error occurred; it has been logged.' : error.message,
      ...(error.details.field ? { param: error.details.field } : {}),
      ...extra,
    },
  };
}

export function sendError(reply: FastifyReply, error: AppError, extra: Record<string, unknown> = {}): FastifyReply {
  const retryAfter = error.details.retryAfterSeconds;
  if (retryAfter !== undefined && (error.kind === 'unavailable' || error.kind === 'resource_exhausted')) reply.header('retry-after', String(Math.max(1, Math.ceil(retryAfter))));
  return reply.code(httpStatusOf(error)).send(errorBody(error, extra));
}

/**
 * An error of a ledger call carrying one object of the request body (an account, a transfer), as the REST API names
 * the field: the ledger names it by its place in its own request (`accounts.0.metadata.k`), the body by `metadata.k`.
 */
export function asBodyField(error: unknown, ledgerPrefix: string): unknown {
  const field = error instanceof AppError ? error.details.field : undefined;
  if (!(error instanceof AppError) || !field?.startsWith(ledgerPrefix)) return error;
  const own = field.slice(ledgerPrefix.length);
  const message = error.message.startsWith(`${field}: `) ? `${own}: ${error.message.slice(field.length + 2)}` : error.message;
  return new AppError(error.kind, error.code, message, { ...error.details, field: own }, { cause: error });
}

/** JSON Schema validation failures: the first problem, with the parameter in Stripe's dotted form. */
function fromValidation(error: FastifyError): AppError {
  const first = error.validation?.[0];
  const params = (first?.params ?? {}) as Record<string, unknown>;
  const path = (first?.instancePath ?? '').split('/').filter(Boolean);
  if (first?.keyword === 'additionalProperty' || first?.keyword === 'additionalProperties') {
    const unknown = String(params['additionalProperty'] ?? '');
    return new AppError('invalid_argument', 'parameter_unknown', `Received unknown parameter: ${[...path, unknown].join('.')}`, { field: [...path, unknown].join('.') });
  }
  if (first?.keyword === 'required') path.push(String(params['missingProperty'] ?? ''));
  const field = path.join('.') || (error.validationContext ?? 'body');
  const code = first?.keyword === 'required' ? 'parameter_missing' : 'parameter_invalid';
  return new AppError('invalid_argument', code, `${field}: ${first?.message ?? 'is invalid'}`, { field });
}

/** Errors Fastify raises itself (parsing, limits), by their code. */
function fromFastify(error: FastifyError): AppError | null {
  switch (error.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new AppError('invalid_argument', 'payload_too_large', 'The request body is too large');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new AppError('invalid_argument', 'unsupported_media_type', 'Request bodies must be application/json');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return new AppError('invalid_argument', 'body_invalid', 'The request body is not valid JSON');
    default:
      if (error instanceof SyntaxError || (error.statusCode === 400 && !error.validation)) return new AppError('invalid_argument', 'body_invalid', 'The request body is not valid JSON');
      return null;
  }
}

/**
 * A database that cannot be reached (or a transaction to retry) as the 503 with Retry-After it is: the routes and
 * the key check query the pool directly, whose errors are pg's own.
 */
function fromDatabase(error: Error): AppError | null {
  const mapped = asAppError(error);
  return mapped instanceof AppError ? mapped : null;
}

export function errorHandler(logger: Logger) {
  return (raw: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): FastifyReply => {
    const fastifyError = raw as FastifyError;
    const error =
      raw instanceof AppError ? raw : fastifyError.validation ? fromValidation(fastifyError) : (fromFastify(fastifyError) ?? fromDatabase(raw) ?? new AppError('internal', 'internal', 'internal error', {}, { cause: raw }));
    if (error.kind === 'internal') logger.error({ err: raw, method: request.method, route: request.routeOptions.url }, 'request failed');
    return sendError(reply, error);
  };
}
