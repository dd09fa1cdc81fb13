// npm run bench:ingest — policy creates/s and container events/s through the real path (HTTP gateway and NATS
// intake into a policy-writer process, appends acknowledged by JetStream, model folded), next to the raw
// JetStream append rate of the same server in the same run.
//
// Flags (env): BENCH_RAW_MSGS (100000), BENCH_APPS (2000), BENCH_CONTAINERS (20000), BENCH_POLICIES (10000),
// BENCH_CONCURRENCY (256 intake / 64 HTTP), BENCH_INTAKE_BATCH (100 commands per batch request) with
// BENCH_BATCH_CONCURRENCY (4 batches in flight) for the batch phases, BENCH_WRITERS (1) policy-writer processes sharing
// the intake queue group (HTTP round robin over their gateways). BENCH_AUTH: off (default); on: the server requires nkey users
// (runtime/authz.ts): topology and raw appends as admin, the writer as writer, intake as platform `bench`; both: off
// then on, each on a fresh server, and the ratio on / off of every figure.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'node:http';
import type { ChildProcess } from 'node:child_process';
import { StorageType } from '@nats-io/jetstream';
import { connectBus } from '../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { silentLogger } from '../runtime/logger.ts';
import { intakeBatchSubject, intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { mintToken } from '../runtime/tokens.ts';
import { InboxRequester } from '../runtime/inbox-requester.ts';
import { sampleEventPayload, cpuSeconds, envNumber, freePort, machine, pool, post, progress, rate, rawAppendRate, startChild, stopChild } from './lib.ts';
import { authModes, startBenchServer } from './lib.ts';

const RAW = envNumber('BENCH_RAW_MSGS', 100_000);
const APPS = envNumber('BENCH_APPS', 2000);
const CONTAINERS = envNumber('BENCH_CONTAINERS', 20_000);
const POLICIES = envNumber('BENCH_POLICIES', 10_000);
const INTAKE_CONC = envNumber('BENCH_CONCURRENCY', 256);
const HTTP_CONC = envNumber('BENCH_HTTP_CONCURRENCY', 64);
const BATCH = envNumber('BENCH_INTAKE_BATCH', 100);
const BATCH_CONC = envNumber('BENCH_BATCH_CONCURRENCY', 4);
const WRITERS = envNumber('BENCH_WRITERS', 1);

const MODES = authModes();
type Results = Record<string, number | string>;

/** One whole measurement on a fresh server, with or without authorization. */
async function run(auth: boolean): Promise<{ results: Results; events: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-bench-'));
  // with auth: admin (topology, raw appends), writer (the child, NATS_CREDS), platform `bench` (intake); files in dir
  const { server, as, credsEnv } = await startBenchServer(dir, auth ? [{ role: 'admin' }, { role: 'writer' }, { role: 'platform', id: 'bench' }] : undefined);
  const log = silentLogger();
  const bus = await connectBus({ servers: server.url, name: 'bench', log, ...as('admin') });
  const platform = auth ? await connectBus({ servers: server.url, name: 'bench-platform', log, ...as('platform_bench') }) : bus;
  await ensureTopology(bus.jsm, defaultTopologyOptions, log);
  const results: Results = {};

  progress(`auth ${auth ? 'on' : 'off'}: raw JetStream append`);
  // 1. Raw limit: plain publishes to a stream subject with a reply inbox, 1024 in flight, counting PubAcks.
  await bus.jsm.streams.add({ name: 'BENCH_RAW', subjects: ['bench.raw.>'], storage: StorageType.File, duplicate_window: 120e9 });
  const payload = sampleEventPayload();
  results['raw JetStream append (msgs/s)'] = await rawAppendRate(bus.nc, 'bench.raw', payload, RAW, 1024);
  progress('js.publish');
  // js.publish for reference, 256 in flight.
  {
    const n = Math.min(RAW, 50_000);
    const ms = await pool(n, 256, async (i) => {
      await bus.js.publish(`bench.raw.js.${i % 1000}`, payload);
    });
    results['js.publish, 256 in flight (msgs/s)'] = rate(n, ms);
  }

  // 2. The real path: a policy-writer process (HTTP gateway + intake), driven from this process.
  const secret = 'bench-secret-bench-secret-bench-secret';
  // BENCH_WRITERS processes share the intake queue group (and each has its gateway: HTTP requests go round robin).
  const writers: { child: ChildProcess; gateway: string }[] = [];
  for (let w = 0; w < WRITERS; w++) {
    const httpPort = await freePort();
    const child = await startChild(
      'services/policy-writer/main.ts',
      {
        NATS_URL: server.url,
        NETFOLD_TOKEN_SECRET: secret,
        NETFOLD_HTTP_PORT: String(httpPort),
        NETFOLD_LOG_LEVEL: 'info',
        NETFOLD_OVERLAY_CIDR: '10.0.0.0/8',
        ...credsEnv('writer'),
      },
      'policy-writer-started',
    );
    writers.push({ child, gateway: `http://127.0.0.1:${httpPort}/networking/v1/external/policies` });
  }
  const writersCpu = () => writers.reduce((sum, w) => sum + cpuSeconds(w.child.pid!), 0);
  const agent = new Agent({ keepAlive: true, maxSockets: HTTP_CONC });
  const admin = await mintToken(secret, { user: 'bench', scopes: ['network.admin'], spaces: [] }, 3600);

  const requester = new InboxRequester(platform.nc);
  const request = async (subject: string, body: unknown) => {
    const m = await requester.request(subject, JSON.stringify(body), { timeoutMs: 30_000 });
    const r = m.json<{ ok: boolean; error?: string }>();
    if (!r.ok) throw new Error(`${subject}: ${r.error}`);
  };

  /** Container i runs on cell i % 1000, at host 2 + i / 1000 of that cell's range (up to 252,000 containers). */
  const ipOnCell = (i: number) => {
    const k = i % 1000;
    const host = 2 + Math.floor(i / 1000);
    if (host > 254) throw new Error('more containers than addresses: at most 252,000');
    return `10.${k >> 8}.${k & 255}.${host}`;
  };

  const measure = async (name: string, count: number, concurrency: number, task: (i: number) => Promise<void>, perTask = 1) => {
    progress(name);
    const cpu0 = writersCpu();
    const server0 = cpuSeconds(server.pid);
    const self0 = process.cpuUsage();
    const ms = await pool(count, concurrency, task);
    const cores = (seconds: number) => Math.round((seconds / (ms / 1000)) * 100) / 100;
    const self = process.cpuUsage(self0);
    results[name] = rate(count * perTask, ms);
    results[`${name} — CPU cores: writer / nats-server / load generator`] =
      `${cores(writersCpu() - cpu0)} / ${cores(cpuSeconds(server.pid) - server0)} / ${cores((self.user + self.system) / 1e6)}`;
  };

  // 1,000 cells, cell k with the container range 10.<k / 256>.<k % 256>.0/24 of the overlay 10.0.0.0/8 (not measured).
  await pool(1000, INTAKE_CONC, (k) =>
    request(intakeSubject('bench', intakeCommand.registerCell), { cellId: `cell-${k}`, subnet: `10.${k >> 8}.${k & 255}.0/24` }),
  );
  await measure('app registrations (cmds/s)', APPS, INTAKE_CONC, (i) =>
    request(intakeSubject('bench', intakeCommand.registerApp), { appId: `app-${i}`, name: `app-${i}`, spaceId: 's1', orgId: 'o1' }),
  );
  await measure('container starts via intake (events/s)', CONTAINERS, INTAKE_CONC, (i) =>
    request(intakeSubject('bench', intakeCommand.startContainer), {
      containerId: `c-${i}`,
      appId: `app-${i % APPS}`,
      cellId: `cell-${i % 1000}`,
      instanceIndex: Math.floor(i / APPS),
      ip: ipOnCell(i),
    }),
  );
  await measure('container stops via intake (events/s)', CONTAINERS, INTAKE_CONC, (i) =>
    request(intakeSubject('bench', intakeCommand.stopContainer), { containerId: `c-${i}` }),
  );
  // The same again as batches of BATCH commands per request (containers CONTAINERS … 2 × CONTAINERS - 1).
  const batchOf = (b: number, command: (i: number) => { command: string; body: unknown }) => {
    const commands = [];
    for (let i = CONTAINERS + b * BATCH; i < CONTAINERS + Math.min((b + 1) * BATCH, CONTAINERS); i++) commands.push(command(i));
    return { commands };
  };
  const batchRequest = async (body: { commands: unknown[] }) => {
    const m = await requester.request(intakeBatchSubject('bench'), JSON.stringify(body), { timeoutMs: 30_000 });
    const r = m.json<{ ok: boolean; error?: string; results?: { ok: boolean; error?: string }[] }>();
    const failed = r.ok ? r.results!.find((x) => !x.ok) : r;
    if (failed) throw new Error(`batch: ${failed.error}`);
  };
  const batches = Math.ceil(CONTAINERS / BATCH);
  await measure(
    `container starts via intake, ${BATCH} per request (events/s)`,
    batches,
    BATCH_CONC,
    (b) =>
      batchRequest(
        batchOf(b, (i) => ({
          command: intakeCommand.startContainer,
          body: { containerId: `c-${i}`, appId: `app-${i % APPS}`, cellId: `cell-${i % 1000}`, instanceIndex: Math.floor(i / APPS), ip: ipOnCell(i) },
        })),
      ),
    BATCH,
  );
  await measure(
    `container stops via intake, ${BATCH} per request (events/s)`,
    batches,
    BATCH_CONC,
    (b) => batchRequest(batchOf(b, (i) => ({ command: intakeCommand.stopContainer, body: { containerId: `c-${i}` } }))),
    BATCH,
  );
  await measure('policy creates via HTTP, 1 per request (policies/s)', POLICIES, HTTP_CONC, async (i) => {
    const src = i % APPS;
    const dst = (src + 1 + Math.floor(i / APPS)) % APPS;
    const body = {
      policies: [
        {
          source: { id: `app-${src}` },
          destination: { id: `app-${dst}`, protocol: 'tcp', ports: { start: 1000 + Math.floor(i / (APPS * APPS)), end: 1000 + Math.floor(i / (APPS * APPS)) } },
        },
      ],
    };
    const res = await post(agent, writers[i % WRITERS]!.gateway, admin, JSON.stringify(body));
    if (res.status !== 200) throw new Error(`HTTP ${res.status}: ${res.body}`);
  });
  const events = (await bus.jsm.streams.info('NF_EVENTS')).state.messages;
  agent.destroy();
  for (const w of writers) await stopChild(w.child);
  if (platform !== bus) await platform.close();
  await bus.close();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
  return { results, events };
}

const table = (results: Results) => {
  const raw = results['raw JetStream append (msgs/s)'] as number;
  const rel = (k: string, v: number | string) => (typeof v === 'number' && !k.startsWith('raw') ? ` ${Math.round((v / raw) * 1000) / 10}% of raw |` : ' |');
  return ['| measurement | figure | vs raw |', '|---|---|---|', ...Object.entries(results).map(([k, v]) => `| ${k} | ${v} |${rel(k, v)}`)].join('\n');
};
const runs: { auth: boolean; results: Results; events: number }[] = [];
for (const auth of MODES) runs.push({ auth, ...(await run(auth)) });
const sizes = { RAW, APPS, CONTAINERS, POLICIES, INTAKE_CONC, HTTP_CONC, BATCH, BATCH_CONC, WRITERS };
console.log(JSON.stringify({ machine: machine(), sizes, runs }, null, 2));
for (const r of runs) console.log(`\nauth ${r.auth ? 'on' : 'off'}:\n${table(r.results)}`);
if (runs.length === 2) {
  const [off, on] = [runs[0]!.results, runs[1]!.results];
  const ratio = (a: number | string, b: number | string | undefined) => (typeof a === 'number' && typeof b === 'number' ? Math.round((b / a) * 100) / 100 : '');
  const rows = Object.entries(off).map(([k, v]) => `| ${k} | ${v} | ${on[k]} | ${ratio(v, on[k])} |`);
  console.log(['', '| measurement | auth off | auth on | on / off |', '|---|---|---|---|', ...rows].join('\n'));
}
