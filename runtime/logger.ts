import { pino, type Logger } from 'pino';
import { ConfigError } from './errors.ts';

export type { Logger } from 'pino';

/** How log lines look: `json` (pino's JSON lines), `pretty` (one coloured human line each), `auto` (pretty on a terminal). */
const LOG_FORMATS = ['auto', 'pretty', 'json'] as const;

/**
 * `toStderr`: for a process whose stdout is an answer (netfold-cni prints its CNI result there). `holdPretty`: pretty
 * lines are held until `releaseHeldLogs` (so `netfold up` shows its banner first on a terminal); JSON is never held.
 */
export type LoggerOptions = { level?: string; name?: string; toStderr?: boolean; format?: string; holdPretty?: boolean };

const held = new WeakMap<Logger, () => void>();

/** Writes the lines a `holdPretty` logger held, and every later line at once. A no-op for other loggers. */
export function releaseHeldLogs(log: Logger): void {
  held.get(log)?.();
}

/** `auto` resolves to `pretty` when the log's destination is a terminal, `json` otherwise (pipes, files, tests). */
export function resolveLogFormat(format: string | undefined, isTty: boolean): 'pretty' | 'json' {
  const f = format ?? process.env.NETFOLD_LOG_FORMAT ?? 'auto';
  if (!(LOG_FORMATS as readonly string[]).includes(f)) throw new ConfigError(`--log-format must be one of ${LOG_FORMATS.join(', ')}, got "${f}"`);
  return f === 'auto' ? (isTty ? 'pretty' : 'json') : (f as 'pretty' | 'json');
}

/** The one root logger of a process; parts take `log.child({ component })`. JSON lines to stdout (or stderr), or pretty lines. */
export function createRootLogger(opts: LoggerOptions = {}): Logger {
  const options = {
    name: opts.name ?? 'netfold',
    level: opts.level ?? process.env.NETFOLD_LOG_LEVEL ?? 'info',
    base: { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  const out = opts.toStderr ? process.stderr : process.stdout;
  if (resolveLogFormat(opts.format, out.isTTY === true) === 'pretty') {
    const colour = out.isTTY === true && !process.env.NO_COLOR;
    let buffer: string[] | null = opts.holdPretty ? [] : null;
    const log = pino(options, {
      write: (line: string) => {
        const text = prettyLine(line, colour);
        if (buffer) buffer.push(text);
        else out.write(text);
      },
    });
    held.set(log, () => {
      if (buffer && buffer.length > 0) out.write(buffer.join(''));
      buffer = null;
    });
    return log;
  }
  return opts.toStderr ? pino(options, pino.destination({ dest: 2, sync: true })) : pino(options);
}

/** A logger that writes nothing, for tests and benchmarks that do not look at logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

const LEVELS: Record<number, { name: string; colour: string }> = {
  10: { name: 'TRACE', colour: '\x1b[90m' },
  20: { name: 'DEBUG', colour: '\x1b[36m' },
  30: { name: 'INFO ', colour: '\x1b[32m' },
  40: { name: 'WARN ', colour: '\x1b[33m' },
  50: { name: 'ERROR', colour: '\x1b[31m' },
  60: { name: 'FATAL', colour: '\x1b[35m' },
};
const DIM = '\x1b[2m';
const BOLD = '\x1b[1m';
const RESET = '\x1b[0m';
/** Fields every line has, shown in its own place (or not at all). */
const FRAME = new Set(['level', 'time', 'msg', 'pid', 'hostname', 'name', 'service', 'component', 'err']);

const fieldText = (v: unknown): string => (typeof v === 'string' ? (/^[^\s"=]+$/.test(v) ? v : JSON.stringify(v)) : JSON.stringify(v));

/**
 * One pino JSON line as a human line: `12:04:05.123 INFO  policy-writer/http  message  key=value …`, the error's
 * message and stack under it. A line that is not JSON is passed through as it is.
 */
export function prettyLine(json: string, colour: boolean): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json.endsWith('\n') ? json : json + '\n';
  }
  const paint = (code: string, s: string) => (colour ? `${code}${s}${RESET}` : s);
  const level = LEVELS[rec.level as number] ?? { name: String(rec.level).padEnd(5), colour: '' };
  const time = typeof rec.time === 'string' ? rec.time.slice(11, 23) : new Date(Number(rec.time)).toISOString().slice(11, 23);
  const where = [rec.service, rec.component].filter((x) => typeof x === 'string').join('/');
  const fields = Object.entries(rec)
    .filter(([k]) => !FRAME.has(k))
    .map(([k, v]) => `${paint(DIM, k + '=')}${fieldText(v)}`)
    .join(' ');
  const parts = [paint(DIM, time), paint(level.colour, level.name), where ? paint(DIM, where) : '', paint(BOLD, String(rec.msg ?? '')), fields];
  let line = parts.filter(Boolean).join('  ') + '\n';
  const err = rec.err as { message?: string; stack?: string } | undefined;
  if (err && typeof err === 'object') line += paint(level.colour, `    ${err.stack ?? err.message ?? JSON.stringify(err)}`.replace(/\n/g, '\n    ')) + '\n';
  return line;
}
