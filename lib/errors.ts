/**
 * The one error hierarchy of the project. Every error that crosses a module boundary is an AppError with a
 * stable machine-readable `code`; transports map `kind` to their own status (HTTP status, gRPC status code)
 * in one place each, so a handler never invents a status of its own.
 */
export type ErrorKind =
  | 'invalid_argument' // the caller sent something malformed: fix the request, do not retry
  | 'not_found'
  | 'conflict' // the request is well-formed but contradicts existing state
  | 'unauthenticated'
  | 'permission_denied'
  | 'resource_exhausted' // back-pressure: retry later
  | 'unavailable' // a dependency is down or a worker died: retry later, ids make it safe
  | 'deadline_exceeded' // no answer in time: the outcome is unknown, retry with the same ids or key
  | 'internal';

export interface ErrorDetails {
  /** The offending input field, dotted path (e.g. `transfers.3.amount`). */
  field?: string;
  /** Seconds the caller should wait before retrying, for resource_exhausted / unavailable. */
  retryAfterSeconds?: number;
  [key: string]: unknown;
}

export class AppError extends Error {
  override readonly name: string = 'AppError';
  constructor(
    readonly kind: ErrorKind,
    readonly code: string,
    message: string,
    readonly details: ErrorDetails = {},
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  get retryable(): boolean {
    return this.kind === 'unavailable' || this.kind === 'resource_exhausted' || this.kind === 'deadline_exceeded';
  }
}

export class ValidationError extends AppError {
  override readonly name: string = 'ValidationError';
  constructor(field: string, message: string, code = 'invalid_argument') {
    super('invalid_argument', code, `${field}: ${message}`, { field });
  }
}

export class ConfigError extends AppError {
  override readonly name: string = 'ConfigError';
  constructor(readonly problems: readonly string[]) {
    super('invalid_argument', 'invalid_config', `invalid configuration:\n  ${problems.join('\n  ')}`);
  }
}

export class UnavailableError extends AppError {
  override readonly name: string = 'UnavailableError';
  constructor(code: string, message: string, retryAfterSeconds = 1, options?: { cause?: unknown }) {
    super('unavailable', code, message, { retryAfterSeconds }, options);
  }
}

export class ResourceExhaustedError extends AppError {
  override readonly name: string = 'ResourceExhaustedError';
  constructor(code: string, message: string, retryAfterSeconds = 1) {
    super('resource_exhausted', code, message, { retryAfterSeconds });
  }
}

export class InternalError extends AppError {
  override readonly name: string = 'InternalError';
  constructor(message: string, options?: { cause?: unknown }) {
    super('internal', 'internal', message, {}, options);
  }
}

/** An invariant of the books was found broken: never caught and continued, always a crash of the operation. */
export class InvariantViolation extends InternalError {
  override readonly name: string = 'InvariantViolation';
}

export function invariant(condition: unknown, message: string): asserts condition {
  if (!condition) throw new InvariantViolation(`invariant violated: ${message}`);
}
