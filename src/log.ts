import { type DestinationStream, type Logger, pino } from 'pino';
import type { LogLevel } from './config.js';

export type { Logger };

/**
 * The process logger: pino JSON on stdout, one event per line. Every line carries a stable `event`
 * field (`poll.batch`, `stream.cut`, ...) that operators and tests match on; `msg` is for humans.
 */
export function createLogger(level: LogLevel, destination?: DestinationStream): Logger {
  return pino(
    {
      name: 'rowcast',
      level,
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
}
