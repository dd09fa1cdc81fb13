// Runs a real nats-server child process with JetStream: the embedded single-node server of `netfold up`, and the
// per-file server of the tests. The port is chosen by the server unless given; readiness is read from its log.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { NetfoldError } from './errors.ts';

export type NatsServerOptions = {
  storeDir: string;
  /** -1 (default) lets the server pick a free port. */
  port?: number;
  host?: string;
  binary?: string;
  /** Extra command-line arguments, e.g. cluster settings. */
  args?: string[];
  /**
   * A config file (`-c`), e.g. one holding runtime/authz.ts's `authorization` block: a secured server. Omitted (the
   * default): no config file, and any client may connect without credentials.
   */
  configFile?: string;
  /**
   * The config file enables JetStream with this run's store dir itself (`jetstream { store_dir: … }`), so no `-js -sd`
   * flags: a server whose config is reloaded (SIGHUP) keeps JetStream only if its file says so, and nats-server
   * refuses the flag and the file both naming a store dir.
   */
  jetstreamInConfig?: boolean;
  readyTimeoutMs?: number;
};

export type NatsServerProcess = {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** SIGTERM and wait for exit (SIGKILL after a grace period). */
  stop(): Promise<void>;
  /** SIGKILL and wait for exit: for failure tests. */
  kill(): Promise<void>;
  /** Everything the server wrote, for diagnosing failures. */
  output(): string;
};

class NatsServerStartError extends NetfoldError {
  constructor(message: string, cause?: unknown) {
    super(message, 'nats-server-start-failed', 500, false, cause);
    this.name = 'NatsServerStartError';
  }
}

const LISTENING = /Listening for client connections on [^\s]+:(\d+)/;
const READY = /Server is ready/;

export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServerProcess> {
  mkdirSync(opts.storeDir, { recursive: true });
  const host = opts.host ?? '127.0.0.1';
  const config = opts.configFile === undefined ? [] : ['-c', opts.configFile];
  const jetstream = opts.jetstreamInConfig ? [] : ['-js', '-sd', opts.storeDir];
  const args = [...config, ...jetstream, '-a', host, '-p', String(opts.port ?? -1), ...(opts.args ?? [])];
  let child: ChildProcess;
  try {
    child = spawn(opts.binary ?? 'nats-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    throw new NatsServerStartError('could not spawn nats-server', err);
  }
  let out = '';
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const port = await new Promise<number>((resolve, reject) => {
    let seenPort: number | undefined;
    const timer = setTimeout(
      () => reject(new NatsServerStartError(`nats-server not ready after ${opts.readyTimeoutMs ?? 15000} ms: ${out.slice(-2000)}`)),
      opts.readyTimeoutMs ?? 15000,
    );
    const onData = (chunk: Buffer) => {
      out += chunk.toString();
      if (out.length > 200_000) out = out.slice(-100_000);
      const m = LISTENING.exec(out);
      if (m && seenPort === undefined) seenPort = Number(m[1]);
      if (seenPort !== undefined && READY.test(out)) {
        clearTimeout(timer);
        resolve(seenPort);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new NatsServerStartError(`could not run nats-server: ${err.message}`, err));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new NatsServerStartError(`nats-server exited early (code ${code}, signal ${signal}): ${out.slice(-2000)}`));
    });
  });

  const waitExit = async (signal: NodeJS.Signals, graceMs: number) => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  };

  return {
    url: `nats://${host}:${port}`,
    port,
    pid: child.pid!,
    stop: () => waitExit('SIGTERM', 5000),
    kill: () => waitExit('SIGKILL', 5000),
    output: () => out,
  };
}
