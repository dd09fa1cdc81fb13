// Test harness: a netfold service (its standalone main.ts) as a child process, for tests and benchmarks that kill
// processes: started with its environment, ready once it logs its start line, killed with SIGKILL or stopped with
// SIGTERM. Its JSON log lines are kept (the last few thousand, each with the time it was read) so that a test can
// wait on one and a report can say what a service logged while it stalled.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

export type LogLine = { msg?: string; level?: number; [k: string]: unknown };
export type SeenLine = { at: number; line: LogLine };

export type ServiceProcess = {
  readonly name: string;
  readonly child: ChildProcess;
  /** Log lines read so far (the last `keep`), oldest first. */
  readonly seen: SeenLine[];
  readonly exited: Promise<void>;
  /**
   * The first log line (already seen, from `since` on, or to come) that satisfies `check`; rejects on timeout or when
   * the process exits first.
   */
  waitLog(check: (l: LogLine) => boolean, timeoutMs: number, what: string, since?: number): Promise<LogLine>;
  /** SIGKILL, and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM (SIGKILL after 10 s), and wait for the exit. */
  stop(): Promise<void>;
};

const isRunning = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;

/** Starts `entry` (a TypeScript main) with tsx; resolves once it logs `readyMessage`. */
export async function spawnService(
  name: string,
  entry: string,
  env: NodeJS.ProcessEnv,
  readyMessage: string,
  opts: { keep?: number; readyTimeoutMs?: number } = {},
): Promise<ServiceProcess> {
  const keep = opts.keep ?? 5000;
  const child = spawn(process.execPath, ['--import', 'tsx', entry], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const seen: SeenLine[] = [];
  const waiters: { check: (l: LogLine) => boolean; resolve: (l: LogLine) => void }[] = [];
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let line: LogLine;
    try {
      line = JSON.parse(text) as LogLine;
    } catch {
      return;
    }
    seen.push({ at: Date.now(), line });
    if (seen.length > keep) seen.splice(0, seen.length - keep);
    for (const w of [...waiters]) {
      if (w.check(line)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(line);
      }
    }
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const waitLog = (check: (l: LogLine) => boolean, timeoutMs: number, what: string, since = 0) => {
    const hit = seen.find((s) => s.at >= since && check(s.line));
    if (hit) return Promise.resolve(hit.line);
    return new Promise<LogLine>((resolve, reject) => {
      const timer = setTimeout(() => {
        const last = seen.slice(-8).map((s) => `${s.line.msg ?? '?'} ${JSON.stringify(s.line).slice(0, 300)}`);
        reject(new Error(`${name}: no ${what} within ${timeoutMs} ms; last lines: ${last.join(' | ')}; stderr: ${stderr.slice(-500)}`));
      }, timeoutMs);
      waiters.push({
        check,
        resolve: (l) => {
          clearTimeout(timer);
          resolve(l);
        },
      });
      void exited.then(() => {
        clearTimeout(timer);
        reject(new Error(`${name} exited before ${what}: ${stderr.slice(-1000)}`));
      });
    });
  };
  const proc: ServiceProcess = {
    name,
    child,
    seen,
    exited,
    waitLog,
    async kill() {
      if (isRunning(child)) child.kill('SIGKILL');
      await exited;
    },
    async stop() {
      if (!isRunning(child)) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    },
  };
  try {
    await waitLog((l) => l.msg === readyMessage, opts.readyTimeoutMs ?? 60_000, readyMessage);
  } catch (err) {
    await proc.kill();
    throw err;
  }
  return proc;
}
