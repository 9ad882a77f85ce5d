import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * The one logger: JSON lines on stdout. Secrets never reach it by construction (redaction of the fields that
 * could carry them is a second line of defence, not the first).
 */
export function createLogger(service: string, level = process.env['LOG_LEVEL'] ?? 'info'): Logger {
  return pino({
    name: service,
    level,
    base: { service, pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: {
      paths: ['authorization', 'headers.authorization', '*.authorization', 'apiKey', '*.apiKey', 'password', '*.password'],
      censor: '[redacted]',
    },
  });
}
