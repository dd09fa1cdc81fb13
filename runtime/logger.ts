import { pino, type Logger } from 'pino';

export type { Logger } from 'pino';

/** `toStderr`: for a process whose stdout is an answer (netfold-cni prints its CNI result there). */
export type LoggerOptions = { level?: string; name?: string; toStderr?: boolean };

/** The one root logger of a process; parts take `log.child({ component })`. JSON lines to stdout (or stderr). */
export function createRootLogger(opts: LoggerOptions = {}): Logger {
  const options = {
    name: opts.name ?? 'netfold',
    level: opts.level ?? process.env.NETFOLD_LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return opts.toStderr ? pino(options, pino.destination({ dest: 2, sync: true })) : pino(options);
}

/** A logger that writes nothing, for tests and benchmarks that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
