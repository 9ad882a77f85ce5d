import { context, trace } from '@opentelemetry/api';
import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * The one logger: JSON lines on stdout. Secrets never reach it by construction (redaction of the fields that
 * could carry them is a second line of defence, not the first).
 */
export function createLogger(service: string, level = process.env['LOG_LEVEL'] ?? 'info', destination?: DestinationStream): Logger {
  return pino(
    {
      name: service,
      level,
      base: { service, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Every line written while a span is active names it: logs and traces join on trace_id.
      mixin() {
        const span = trace.getSpan(context.active())?.spanContext();
        return span && trace.isSpanContextValid(span) ? { trace_id: span.traceId, span_id: span.spanId } : {};
      },
      redact: {
        paths: ['authorization', 'headers.authorization', '*.authorization', 'apiKey', '*.apiKey', 'password', '*.password', 'token', '*.token', 'secret_key', '*.secret_key'],
        censor: '[redacted]',
      },
    },
    destination,
  );
}
