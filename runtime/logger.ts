import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

export type LoggerOptions = { level?: string; name?: string };

/** The one root logger of a process; parts take `log.child({ component })`. JSON lines to stdout. */
export function createRootLogger(opts: LoggerOptions = {}): Logger {
  return pino({
    name: opts.name ?? 'netfold',
    level: opts.level ?? process.env.NETFOLD_LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}

/** A logger that writes nothing, for tests and benchmarks that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
