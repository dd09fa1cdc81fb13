// Shared pieces of the benchmarks: machine description, a fresh server per run (open or requiring nkey users),
// bounded-concurrency loops.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { cpus, tmpdir, totalmem } from 'node:os';
import { mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Agent, request as httpRequest } from 'node:http';
import { createServer } from 'node:net';
import { createInbox, type NatsConnection } from '@nats-io/nats-core';
import { startNatsServer, type NatsServerProcess } from '../runtime/nats-server.ts';
import { authorizationBlock, credentialFileOf, ensureCredentialFiles, type Credential, type Principal } from '../runtime/authz.ts';
import { writePrivateFile } from '../runtime/private-file.ts';

/** A numeric benchmark size from the environment. */
export const envNumber = (name: string, fallback: number): number => Number(process.env[name] ?? fallback);

/** A progress line on stderr (stdout carries the results). */
export const progress = (what: string): void => {
  process.stderr.write(`bench: ${new Date().toISOString()} ${what}\n`);
};

export function machine(): Record<string, string> {
  let nats = 'unknown';
  try {
    nats = execFileSync('nats-server', ['--version']).toString().trim();
  } catch {
    // reported as unknown
  }
  return {
    cpu: `${cpus()[0]?.model ?? 'unknown'} x ${cpus().length}`,
    memory: `${Math.round(totalmem() / 2 ** 30)} GiB`,
    node: process.version,
    nats,
  };
}

/** Runs `task(i)` for i in [0, count) with at most `concurrency` in flight; returns elapsed ms. */
export async function pool(count: number, concurrency: number, task: (i: number) => Promise<void>): Promise<number> {
  const t0 = performance.now();
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const i = next++;
      await task(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
  return performance.now() - t0;
}

export const rate = (n: number, ms: number) => Math.round((n / ms) * 1000);

/** BENCH_CHILD_GREP: children's log lines matching it are shown too (e.g. `planner-settled`). */
const childGrep = process.env.BENCH_CHILD_GREP ? new RegExp(process.env.BENCH_CHILD_GREP) : undefined;

/** Starts a TypeScript entry point as a child process; resolves once it logs `readyMessage`. */
/**
 * BENCH_COMPILED=1: children run as JavaScript compiled once by tsc into a temporary directory, without the tsx
 * loader (its hooks thread and transform cache cost each process ~45 MiB of RSS: docs/benchmarks.md).
 */
let compiledDir: string | undefined;
function compiled(): string {
  if (compiledDir) return compiledDir;
  const dir = mkdtempSync(join(tmpdir(), 'netfold-js-'));
  progress('compiling the TypeScript sources for BENCH_COMPILED');
  const root = join(import.meta.dirname, '..');
  const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
  execFileSync(process.execPath, [tsc, '-p', root, '--noEmit', 'false', '--outDir', dir, '--rewriteRelativeImportExtensions', '--sourceMap', 'false'], {
    stdio: 'inherit',
  });
  writeFileSync(join(dir, 'package.json'), '{"type":"module"}\n');
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
  return (compiledDir = dir);
}

export async function startChild(entry: string, env: NodeJS.ProcessEnv, readyMessage: string): Promise<ChildProcess> {
  const extra = (process.env.BENCH_CHILD_NODE_ARGS ?? '').split(' ').filter((a) => a !== ''); // ' ': V8 defaults
  const run = process.env.BENCH_COMPILED === '1' ? [join(compiled(), entry.replace(/\.ts$/, '.js'))] : ['--import', 'tsx', entry];
  const child = spawn(process.execPath, [...extra, ...run], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    let ready = false;
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      if (!ready && buf.includes(`"msg":"${readyMessage}"`)) {
        ready = true;
        resolve();
      }
      // Warnings and errors of a child show on the benchmark's stderr (a run with them is suspect).
      const lines = buf.split('\n');
      buf = lines.pop() ?? '';
      for (const line of lines) {
        if (/"level":(40|50|60)/.test(line) || (childGrep && childGrep.test(line))) process.stderr.write(`${entry}: ${line.slice(0, 2000)}\n`);
        // with BENCH_CHILD_NODE_ARGS=--trace-gc: pauses of 20 ms or more, with the time they were seen
        const gc = /(Mark-Compact|Scavenge)[^,]*MB, ([\d.]+)/.exec(line);
        if (gc && Number(gc[2]) >= 20) process.stderr.write(`gc ${new Date().toISOString()} ${entry} ${gc[1]} ${gc[2]} ms\n`);
      }
    });
    child.once('exit', (code) => reject(new Error(`${entry} exited with ${code}`)));
  });
  return child;
}

export async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  await exited;
}

export function cpuSeconds(pid: number): number {
  try {
    const stat = execFileSync('cat', [`/proc/${pid}/stat`]).toString();
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return NaN;
  }
}

/** The raw append limit: one payload published `count` times with `window` acks outstanding; msgs/s. */
export function rawAppendRate(nc: NatsConnection, prefix: string, payload: string, count: number, window: number): Promise<number> {
  return publishAll(nc, count, window, (i) => [`${prefix}.${i % 1000}`, payload]);
}

/** Publishes `count` messages made by `make(i)` with `window` acknowledgements outstanding; returns msgs/s. */
export async function publishAll(nc: NatsConnection, count: number, window: number, make: (i: number) => [string, string]): Promise<number> {
  const inbox = createInbox();
  let acked = 0;
  let sent = 0;
  let wake: (() => void) | undefined;
  const sub = nc.subscribe(`${inbox}.*`, {
    callback: () => {
      acked++;
      const w = wake;
      wake = undefined;
      w?.();
    },
  });
  const t0 = performance.now();
  while (acked < count) {
    while (sent < count && sent - acked < window) {
      const [subject, payload] = make(sent);
      nc.publish(subject, payload, { reply: `${inbox}.${sent}` });
      sent++;
    }
    await new Promise<void>((resolve) => {
      wake = resolve;
    });
  }
  const ms = performance.now() - t0;
  sub.unsubscribe();
  return rate(count, ms);
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export function rssMiB(pid: number): number {
  try {
    const status = execFileSync('cat', [`/proc/${pid}/status`]).toString();
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(status);
    return m ? Math.round(Number(m[1]) / 1024) : NaN;
  } catch {
    return NaN;
  }
}

/** A keep-alive POST with node:http: far less client CPU than fetch, so the service is what is measured. */
export function post(agent: Agent, url: string, token: string, body: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      url,
      { method: 'POST', agent, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

/** A port free on 127.0.0.1 right now (for a child service to listen on). */
export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/** A ~300-byte event as the writer appends it: what the raw-append limit of a bench run is measured with. */
export function sampleEventPayload(): string {
  return JSON.stringify({
    id: '01JB0000000000000000000000',
    type: 'ContainerStarted',
    v: 1,
    at: new Date().toISOString(),
    actor: 'platform:bench',
    correlationId: 'x'.repeat(26),
    data: { containerId: 'c-000000', appId: 'app-0000', instanceIndex: 0, cellId: 'cell-000', ip: '10.255.0.1' },
  });
}

/** BENCH_AUTH: `off` (default), `on`, or `both` (off, then on): for each run, whether its server requires nkey users. */
export function authModes(): boolean[] {
  const mode = process.env.BENCH_AUTH ?? 'off';
  if (!['off', 'on', 'both'].includes(mode)) throw new Error(`BENCH_AUTH must be off, on or both, got ${mode}`);
  return mode === 'both' ? [false, true] : [mode === 'on'];
}

export type BenchServer = {
  server: NatsServerProcess;
  /** connectBus's `credential` of a principal by name (`admin`, `platform_bench`, `agent_cell-3`); none when open. */
  as(name: string): { credential?: Credential };
  /** A child process's NATS_CREDS for a principal by name; none when open. */
  credsEnv(name: string): { NATS_CREDS?: string };
};

/**
 * A fresh nats-server for one run, its store in `dir`. With `principals` (auth on): a runtime/authz.ts nkey user for
 * each, its credential file `<name>.creds.json` in `dir` (ensureCredentialFiles, as `netfold up` keeps them), and
 * the server started with their authorization block, so a connection signed in as none of them is refused. Without:
 * an open server, as before authorization existed.
 */
export async function startBenchServer(dir: string, principals?: readonly Principal[]): Promise<BenchServer> {
  if (!principals) return { server: await startNatsServer({ storeDir: dir }), as: () => ({}), credsEnv: () => ({}) };
  const creds = new Map(ensureCredentialFiles(dir, principals).credentials.map((c) => [c.name, c]));
  const configFile = join(dir, 'nats-server.conf');
  writePrivateFile(configFile, authorizationBlock([...creds.values()]));
  const known = (name: string) => {
    if (!creds.has(name)) throw new Error(`no principal ${name} on this bench server`);
    return name;
  };
  return {
    server: await startNatsServer({ storeDir: dir, configFile }),
    as: (name) => ({ credential: creds.get(known(name))! }),
    credsEnv: (name) => ({ NATS_CREDS: credentialFileOf(dir, known(name)) }),
  };
}
