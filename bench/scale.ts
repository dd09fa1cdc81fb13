// npm run bench:scale — the whole system at scale on one machine: a nats-server, the policy-writer (HTTP gateway and
// NATS intake), planner(s), the discovery service and BENCH_CELLS cell agents (memory dataplane, each with its own
// feed) in BENCH_AGENT_PROCS processes, each component its own process. It loads BENCH_APPS apps, BENCH_CONTAINERS
// containers and BENCH_POLICIES policies through the real gateway and intake, then runs steady churn for
// BENCH_DURATION_S seconds (BENCH_CHURN container restarts/s, BENCH_POLICY_RATE policy adds/deletes per second) and
// measures:
//   - policy add/delete → applied on every affected cell (the cells the planner sent a delta for that revision);
//   - container start → its peers' rules applied, and its DNS name answering;
//   - ingest: container starts/s through intake while everything runs, next to the raw JetStream append rate of
//     the same server measured in the same run;
//   - CPU (cores) and RSS of every component over the churn window.
// Then it waits until every cell's applied hash equals the planner's and checks that with a fresh replay.
// BENCH_POLL_MS > 0 runs the same workload with agents pulling their whole state on that period (the Cloud Foundry
// model) instead of following their stream; BENCH_BASELINE=1 runs both, one after the other, on fresh servers.
// BENCH_AUTH: off (default), on: the server requires nkey users (runtime/authz.ts) and every process signs in as its
// own role — writer, planner(s), discovery, each cell agent as `agent_<cell>` on its own connection (1,000 cells:
// 1,000 users), intake load as platform `bench`, this driver (topology, buckets, raw appends, observers, replay) as
// admin; both: off then on, each on a fresh server (with BENCH_BASELINE=1, stream and poll in each), side by side.
// Stdout: one JSON document (BENCH_FORMAT=json) or JSON then a markdown table.
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Agent } from 'node:http';
import type { ChildProcess } from 'node:child_process';
import * as dnsPacket from 'dns-packet';
import { StorageType } from '@nats-io/jetstream';
import { connectBus, type Bus } from '../runtime/nats.ts';
import { ensureTopology, ensureBuckets, defaultTopologyOptions } from '../runtime/topology.ts';
import type { Principal } from '../runtime/authz.ts';
import { kvLayout } from '../runtime/nats-adapter.ts';
import { silentLogger } from '../runtime/logger.ts';
import { CELL_STATUS_BUCKET, intakeBatchSubject, intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { mintToken } from '../runtime/tokens.ts';
import { InboxRequester } from '../runtime/inbox-requester.ts';
import { replay } from '../cli/operators.ts';
import { enforcementOf } from '../services/topology-planner/enforcement.ts';
import { defaultPlannerConfig } from '../services/topology-planner/service.ts';
import { DEFAULT_DOMAIN } from '../projections/cell.ts';
import {
  authModes,
  sampleEventPayload,
  cpuSeconds,
  envNumber,
  freePort,
  machine,
  percentile,
  pool,
  post,
  progress,
  rate,
  rawAppendRate,
  rssMiB,
  startBenchServer,
  startChild,
  stopChild,
} from './lib.ts';

const sizes = {
  CELLS: envNumber('BENCH_CELLS', 1000),
  APPS: envNumber('BENCH_APPS', 5000),
  CONTAINERS: envNumber('BENCH_CONTAINERS', 50_000),
  POLICIES: envNumber('BENCH_POLICIES', 10_000),
  AGENT_PROCS: envNumber('BENCH_AGENT_PROCS', 4),
  PLANNERS: envNumber('BENCH_PLANNERS', 1),
  CHURN: envNumber('BENCH_CHURN', 20),
  POLICY_RATE: envNumber('BENCH_POLICY_RATE', 4),
  DURATION_S: envNumber('BENCH_DURATION_S', 30),
  DNS_EVERY: envNumber('BENCH_DNS_EVERY', 4),
  RAW_MSGS: envNumber('BENCH_RAW_MSGS', 100_000),
  INTAKE_CONCURRENCY: envNumber('BENCH_CONCURRENCY', 256),
  /** Container starts of the load per intake request (a batch, `nf.cmd.<caller>.commands.batch`); 1: one per request. */
  INTAKE_BATCH: envNumber('BENCH_INTAKE_BATCH', 100),
  CONVERGE_TIMEOUT_S: envNumber('BENCH_CONVERGE_TIMEOUT_S', 300),
};
const DOMAIN = DEFAULT_DOMAIN;
const SECRET = 'bench-secret-bench-secret-bench-secret';

/** A small deterministic generator (mulberry32), so every run places the same containers on the same cells. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Cell k's container range: 10.<k / 256>.<k % 256>.0/24 inside the bench's overlay 10.0.0.0/8. */
const OVERLAY = '10.0.0.0/8';
const subnetOf = (k: number) => `10.${(k >> 8) & 255}.${k & 255}.0/24`;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const summary = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { samples: s.length, p50: round(percentile(s, 50)), p95: round(percentile(s, 95)), p99: round(percentile(s, 99)), max: round(s[s.length - 1] ?? NaN) };
};

type Sample = { kind: 'policy-add' | 'policy-delete' | 'container-start'; t0: number; acked?: number; revision?: number; dnsAt?: number; ip?: string };
type Component = { name: string; pid: number };

export type ScaleRun = {
  mode: string;
  auth: boolean;
  results: Record<string, unknown>;
  check: { cells: number; converged: number; enforced: boolean; replayOk: boolean; differing: string[]; withoutStatus: string[] };
};

/** With auth on: the principals of a run, each signing in with its own credential (one agent user per cell). */
const principalsOf = (cells: number): Principal[] => [
  { role: 'admin' },
  { role: 'writer' },
  { role: 'planner' },
  { role: 'discovery' },
  { role: 'platform', id: 'bench' },
  ...Array.from({ length: cells }, (_, k) => ({ role: 'agent' as const, cellId: `cell-${k}` })),
];

async function runOnce(pollMs: number, auth: boolean): Promise<ScaleRun> {
  const mode = `${pollMs > 0 ? `poll every ${pollMs} ms (Cloud Foundry model)` : 'stream (netfold)'}, auth ${auth ? 'on' : 'off'}`;
  const results: Record<string, unknown> = {};
  // other work on the machine shows here (the load average counts runnable processes: 2 means both cores busy)
  const load0 = loadavg()[0]!;
  const dir = mkdtempSync(join(tmpdir(), 'netfold-bench-'));
  const { server, as, credsEnv } = await startBenchServer(dir, auth ? principalsOf(sizes.CELLS) : undefined);
  const log = silentLogger();
  const bus = await connectBus({ servers: server.url, name: 'bench-scale', log, ...as('admin') });
  // intake load as a platform component (its caller token `bench` is the one in the subjects); the same bus when open
  const platform = auth ? await connectBus({ servers: server.url, name: 'bench-platform', log, ...as('platform_bench') }) : bus;
  await ensureTopology(bus.jsm, defaultTopologyOptions, log);
  // services may not create buckets on a secured server: the admin does first, as `netfold up` does
  if (auth) await ensureBuckets(bus.js, { replicas: 1, plannerMemberTtlMs: defaultPlannerConfig.memberTtlMs });
  const children: { name: string; child: ChildProcess }[] = [];
  live.add(server.pid);
  const httpAgent = new Agent({ keepAlive: true, maxSockets: 32 });
  const dnsSock = createSocket('udp4');
  try {
    // ---- raw limit, same server, before anything else runs ----
    progress(`[${mode}] raw JetStream append`);
    await bus.jsm.streams.add({ name: 'BENCH_RAW', subjects: ['bench.raw.>'], storage: StorageType.File });
    const payload = sampleEventPayload();
    const raw = await rawAppendRate(bus.nc, 'bench.raw', payload, sizes.RAW_MSGS, 1024);
    results['raw JetStream append (msgs/s)'] = raw;
    await bus.jsm.streams.delete('BENCH_RAW');

    // ---- observers: every planner output, every agent status ----
    /** revision → cells the planner sent a delta for, and when the first of them was seen. */
    const deltaCells = new Map<number, { cells: Set<string>; firstAt: number }>();
    /** When the bench saw each cell's delta for a revision (`<revision>:<cell>`): where a slow change waited. */
    const deltaSeen = new Map<string, number>();
    /** The planner's latest hash per cell, from its deltas. */
    const plannedHash = new Map<string, string>();
    const deltaSub = bus.nc.subscribe('nf.cell.delta.*', {
      callback: (_e, m) => {
        const d = m.json<{ cellId: string; revision: number; hash: string }>();
        let e = deltaCells.get(d.revision);
        if (!e) deltaCells.set(d.revision, (e = { cells: new Set(), firstAt: performance.now() }));
        e.cells.add(d.cellId);
        deltaSeen.set(`${d.revision}:${d.cellId}`, performance.now());
        plannedHash.set(d.cellId, d.hash);
      },
    });
    /** Per cell, each status seen: [time, revision]; and the latest hash applied. */
    const statusLog = new Map<string, [number, number][]>();
    const appliedHash = new Map<string, string>();
    const statusSub = bus.nc.subscribe(kvLayout.subject(CELL_STATUS_BUCKET, '>'), {
      callback: (_e, m) => {
        const s = m.json<{ cellId: string; revision: number; hash: string }>();
        let l = statusLog.get(s.cellId);
        if (!l) statusLog.set(s.cellId, (l = []));
        const last = l[l.length - 1];
        if (!last || s.revision > last[1]) l.push([performance.now(), s.revision]);
        appliedHash.set(s.cellId, s.hash);
      },
    });
    const appliedAt = (cellId: string, revision: number): number | undefined => {
      const l = statusLog.get(cellId);
      if (!l) return undefined;
      let lo = 0;
      let hi = l.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (l[mid]![1] >= revision) hi = mid;
        else lo = mid + 1;
      }
      return l[lo]?.[0];
    };

    // ---- the system, each part its own process ----
    progress(`[${mode}] starting gateway, ${sizes.PLANNERS} planner(s), discovery, ${sizes.CELLS} agents in ${sizes.AGENT_PROCS} processes`);
    const httpPort = await freePort();
    const dnsPort = await freePort();
    const baseEnv = { NATS_URL: server.url, NETFOLD_LOG_LEVEL: 'info', NETFOLD_DOMAIN: DOMAIN, NETFOLD_OVERLAY_CIDR: OVERLAY };
    children.push({
      name: 'policy-writer',
      child: await startChild(
        'services/policy-writer/main.ts',
        { ...baseEnv, ...credsEnv('writer'), NETFOLD_TOKEN_SECRET: SECRET, NETFOLD_HTTP_PORT: String(httpPort) },
        'policy-writer-started',
      ),
    });
    for (let p = 0; p < sizes.PLANNERS; p++) {
      children.push({
        name: `planner-${p}`,
        child: await startChild(
          'services/topology-planner/main.ts',
          { ...baseEnv, ...credsEnv('planner'), NETFOLD_PLANNER_ID: `planner-${p}`, NETFOLD_METRICS_PORT: '0' },
          'planner-started',
        ),
      });
    }
    children.push({
      name: 'discovery',
      child: await startChild(
        'services/discovery/main.ts',
        {
          ...baseEnv,
          ...credsEnv('discovery'),
          NETFOLD_DNS_PORT: String(dnsPort),
          NETFOLD_DISCOVERY_HTTP_PORT: '0',
          NETFOLD_DNS_RATE_LIMIT: '0' /* the load's queries come from one address */,
        },
        'discovery-started',
      ),
    });
    const per = Math.ceil(sizes.CELLS / sizes.AGENT_PROCS);
    const agentStarts: Promise<void>[] = [];
    for (let a = 0; a < sizes.AGENT_PROCS; a++) {
      const from = a * per;
      const to = Math.min(sizes.CELLS, from + per);
      if (from >= to) continue;
      agentStarts.push(
        startChild(
          'bench/scale-agents.ts',
          {
            ...baseEnv,
            NETFOLD_LOG_LEVEL: 'warn',
            BENCH_CELL_FROM: String(from),
            BENCH_CELL_TO: String(to),
            BENCH_POLL_MS: String(pollMs),
            ...(auth && { BENCH_CREDS_DIR: dir }), // each agent signs in with its cell's file there
          },
          'agents-started',
        ).then((child) => {
          children.push({ name: `agents-${a}`, child });
        }),
      );
    }
    const tAgents = performance.now();
    // every start settled before a failure is thrown, so the finally below stops the agent hosts that did start
    const failedStart = (await Promise.allSettled(agentStarts)).find((r) => r.status === 'rejected');
    if (failedStart) throw failedStart.reason;
    results['agents started (s)'] = round((performance.now() - tAgents) / 1000);
    for (const c of children) live.add(c.child.pid!);
    const components: Component[] = [{ name: 'nats-server', pid: server.pid }, ...children.map((c) => ({ name: c.name, pid: c.child.pid! }))];

    const requester = new InboxRequester(platform.nc);
    const intake = async (subject: string, body: unknown): Promise<number> => {
      const m = await requester.request(subject, JSON.stringify(body), { timeoutMs: 60_000 });
      const r = m.json<{ ok: boolean; revision?: number; error?: string }>();
      if (!r.ok) throw new Error(`${subject}: ${r.error}`);
      return r.revision!;
    };
    const admin = await mintToken(SECRET, { user: 'bench', scopes: ['network.admin'], spaces: [] }, 7200);
    const gateway = `http://127.0.0.1:${httpPort}/networking/v1/external`;
    const policyCall = async (path: 'policies' | 'policies/delete', policies: unknown[]): Promise<number> => {
      const res = await post(httpAgent, `${gateway}/${path}`, admin, JSON.stringify({ policies }));
      if (res.status !== 200) throw new Error(`POST ${path}: HTTP ${res.status} ${res.body}`);
      return (JSON.parse(res.body) as { revision: number }).revision;
    };
    const cfPolicy = (src: string, dst: string, port: number) => ({
      source: { id: src },
      destination: { id: dst, protocol: 'tcp', ports: { start: port, end: port } },
    });

    // ---- load, through the real gateway and intake, with everything running ----
    const rnd = seeded(7);
    // Each container gets the next free address of a random cell's range (the writer refuses any other).
    const nextHost = new Array<number>(sizes.CELLS).fill(2);
    const place = () => {
      const k = Math.floor(rnd() * sizes.CELLS);
      const host = nextHost[k]!++;
      if (host > 254) throw new Error(`cell-${k} has no free address left`);
      return { cellId: `cell-${k}`, ip: `10.${(k >> 8) & 255}.${k & 255}.${host}` };
    };
    await pool(sizes.CELLS, sizes.INTAKE_CONCURRENCY, async (k) => {
      await intake(intakeSubject('bench', intakeCommand.registerCell), { cellId: `cell-${k}`, subnet: subnetOf(k) });
    });
    const instances = new Array<number>(sizes.APPS).fill(0);
    const running: { id: string; app: number; cellId: string }[] = [];
    progress(`[${mode}] loading ${sizes.APPS} apps, ${sizes.POLICIES} policies, ${sizes.CONTAINERS} containers`);
    const cpuLoad0 = cpuOf(components);
    const tLoad = performance.now();
    let ms = await pool(sizes.APPS, sizes.INTAKE_CONCURRENCY, async (i) => {
      await intake(intakeSubject('bench', intakeCommand.registerApp), { appId: `app-${i}`, name: `a${i}`, spaceId: 's1', orgId: 'o1' });
    });
    results['ingest: app registrations via intake (cmds/s)'] = rate(sizes.APPS, ms);
    const BATCH = 100;
    ms = await pool(Math.ceil(sizes.POLICIES / BATCH), 8, async (b) => {
      const batch = [];
      for (let k = b * BATCH; k < Math.min(sizes.POLICIES, (b + 1) * BATCH); k++) {
        batch.push(cfPolicy(`app-${k % sizes.APPS}`, `app-${(k * 7 + 1 + Math.floor(k / sizes.APPS)) % sizes.APPS}`, 1000 + Math.floor(k / sizes.APPS)));
      }
      await policyCall('policies', batch);
    });
    results[`ingest: policy creates via HTTP, ${BATCH} per request (policies/s)`] = rate(sizes.POLICIES, ms);
    const starts = Array.from({ length: sizes.CONTAINERS }, (_, j) => ({ id: `c-${j}`, app: j % sizes.APPS, ...place() }));
    const startBody = (j: number) => {
      const c = starts[j]!;
      const index = instances[c.app]!++;
      return { containerId: c.id, appId: `app-${c.app}`, cellId: c.cellId, instanceIndex: index, ip: c.ip };
    };
    const perRequest = Math.max(1, sizes.INTAKE_BATCH);
    ms = await pool(
      Math.ceil(sizes.CONTAINERS / perRequest),
      perRequest === 1 ? sizes.INTAKE_CONCURRENCY : Math.max(1, Math.round(sizes.INTAKE_CONCURRENCY / perRequest)),
      async (b) => {
        const js = Array.from({ length: Math.min(perRequest, sizes.CONTAINERS - b * perRequest) }, (_, k) => b * perRequest + k);
        if (perRequest === 1) await intake(intakeSubject('bench', intakeCommand.startContainer), startBody(js[0]!));
        else {
          const m = await requester.request(
            intakeBatchSubject('bench'),
            JSON.stringify({ commands: js.map((j) => ({ command: intakeCommand.startContainer, body: startBody(j) })) }),
            {
              timeoutMs: 60_000,
            },
          );
          const r = m.json<{ ok: boolean; error?: string; results?: { ok: boolean; error?: string }[] }>();
          const failed = r.ok ? r.results!.find((x) => !x.ok) : r;
          if (failed) throw new Error(`container starts: ${failed.error}`);
        }
        for (const j of js) running.push(starts[j]!);
      },
    );
    const ingest = rate(sizes.CONTAINERS, ms);
    results[`ingest: container starts via intake, ${perRequest} per request, everything running (cmds/s)`] = ingest;
    results['ingest vs raw append (%)'] = round((ingest / raw) * 100);
    results['ingest: CPU cores during the container load'] = coresOf(components, cpuLoad0, (performance.now() - tLoad) / 1000, [
      'nats-server',
      'policy-writer',
      ...components.map((c) => c.name).filter((n) => n.startsWith('planner-')),
    ]);
    progress(`[${mode}] waiting for every cell to converge after the load`);
    const tConv = performance.now();
    const conv = await waitConverged(bus, plannedHash, appliedHash, sizes.CONVERGE_TIMEOUT_S * 1000);
    const convS = round((performance.now() - tConv) / 1000);
    results['load: converged after the last command (s)'] = conv.enforced
      ? `hashes ${conv.hashesAfterS}, enforced ${convS}`
      : `not converged, gave up at ${convS}`;
    results['load: cells converged'] = `${conv.converged} of ${conv.cells}${conv.enforced ? '' : ' (not enforced)'}`;

    // ---- steady churn ----
    progress(`[${mode}] churn for ${sizes.DURATION_S} s: ${sizes.CHURN} restarts/s, ${sizes.POLICY_RATE} policy changes/s`);
    const samples: Sample[] = [];
    const added: ReturnType<typeof cfPolicy>[] = [];
    let nextContainer = sizes.CONTAINERS;
    let nextPort = 20_000;
    let inFlight = 0;
    let failures = 0;
    const dnsPending = new Map<number, { sample: Sample; query: Buffer }>();
    let dnsId = 0;
    await new Promise<void>((r) => dnsSock.bind(0, '127.0.0.1', () => r()));
    dnsSock.on('message', (m) => {
      const id = m.readUInt16BE(0);
      const p = dnsPending.get(id);
      if (!p || (m[3]! & 0x0f) !== 0) return;
      const answers = dnsPacket.decode(m).answers ?? [];
      if (answers.some((a) => a.type === 'A' && a.data === p.sample.ip)) {
        p.sample.dnsAt = performance.now();
        dnsPending.delete(id);
      }
    });
    const dnsTimer = setInterval(() => {
      for (const p of dnsPending.values()) dnsSock.send(p.query, dnsPort, '127.0.0.1');
    }, 2);
    const restart = async () => {
      const victim = running.splice(Math.floor(rnd() * running.length), 1)[0]!;
      await intake(intakeSubject('bench', intakeCommand.stopContainer), { containerId: victim.id });
      const j = nextContainer++;
      const fresh = { id: `c-${j}`, app: victim.app, ...place() };
      const index = instances[fresh.app]!++;
      const sample: Sample = { kind: 'container-start', t0: performance.now(), ip: fresh.ip };
      samples.push(sample);
      if (sizes.DNS_EVERY > 0 && j % sizes.DNS_EVERY === 0) {
        const id = dnsId++ & 0xffff;
        dnsPending.set(id, { sample, query: dnsPacket.encode({ id, type: 'query', questions: [{ type: 'A', name: `${index}.a${fresh.app}.${DOMAIN}` }] }) });
      }
      sample.revision = await intake(intakeSubject('bench', intakeCommand.startContainer), {
        containerId: fresh.id,
        appId: `app-${fresh.app}`,
        cellId: fresh.cellId,
        instanceIndex: index,
        ip: fresh.ip,
      });
      sample.acked = performance.now();
      running.push(fresh);
    };
    const policyChange = async () => {
      const remove = added.length > 5 && rnd() < 0.5;
      const sample: Sample = { kind: remove ? 'policy-delete' : 'policy-add', t0: performance.now() };
      samples.push(sample);
      if (remove) {
        const p = added.splice(Math.floor(rnd() * added.length), 1)[0]!;
        sample.t0 = performance.now();
        sample.revision = await policyCall('policies/delete', [p]);
      } else {
        // a destination with instances, so the change reaches cells
        const dst = running[Math.floor(rnd() * running.length)]!.app;
        const p = cfPolicy(`app-${Math.floor(rnd() * sizes.APPS)}`, `app-${dst}`, nextPort++);
        sample.revision = await policyCall('policies', [p]);
        added.push(p);
      }
      sample.acked = performance.now();
    };
    const fire = (task: () => Promise<void>) => {
      inFlight++;
      task()
        .catch((err: unknown) => {
          failures++;
          progress(`churn command failed: ${(err as Error).message}`);
        })
        .finally(() => inFlight--);
    };
    const cpu0 = cpuOf(components);
    const tChurn = performance.now();
    await new Promise<void>((resolve) => {
      let restarts = 0;
      let policies = 0;
      const tick = setInterval(() => {
        const elapsed = (performance.now() - tChurn) / 1000;
        if (elapsed >= sizes.DURATION_S) {
          clearInterval(tick);
          resolve();
          return;
        }
        while (restarts < elapsed * sizes.CHURN) {
          restarts++;
          fire(restart);
        }
        while (policies < elapsed * sizes.POLICY_RATE) {
          policies++;
          fire(policyChange);
        }
      }, 5);
    });
    const churnS = (performance.now() - tChurn) / 1000;
    while (inFlight > 0) await new Promise((r) => setTimeout(r, 20));
    progress(`[${mode}] waiting for every cell to converge after the churn`);
    const final = await waitConverged(bus, plannedHash, appliedHash, sizes.CONVERGE_TIMEOUT_S * 1000);
    const dnsDeadline = performance.now() + 15_000;
    while (dnsPending.size > 0 && performance.now() < dnsDeadline) await new Promise((r) => setTimeout(r, 20));
    clearInterval(dnsTimer);
    // CPU over the churn window (the convergence tail is included: it is part of the work the churn caused).
    const windowS = (performance.now() - tChurn) / 1000;
    results['churn: commands failed'] = failures;
    results['churn: duration (s)'] = round(churnS);
    results['CPU cores over the churn window'] = coresOf(components, cpu0, windowS);
    results['RSS after the churn (MiB)'] = Object.fromEntries(components.map((c) => [c.name, rssMiB(c.pid)]));

    // ---- latencies ----
    const toAll = (s: Sample): { all?: number; planned?: number; cells: number } => {
      const e = s.revision === undefined ? undefined : deltaCells.get(s.revision);
      if (!e) return { cells: 0 };
      let last = 0;
      for (const c of e.cells) {
        const at = appliedAt(c, s.revision!);
        if (at === undefined) return { cells: e.cells.size };
        last = Math.max(last, at);
      }
      return { all: last - s.t0, planned: e.firstAt - s.t0, cells: e.cells.size };
    };
    for (const kind of ['policy-add', 'policy-delete', 'container-start'] as const) {
      const of = samples.filter((s) => s.kind === kind);
      const measured = of.map((s) => ({ s, r: toAll(s) })).filter((x) => x.r.cells > 0);
      const done = measured.filter((x) => x.r.all !== undefined);
      const label =
        kind === 'container-start'
          ? 'container start → every affected cell applied (own cell and peers)'
          : `${kind.replace('-', ' ')} → every affected cell applied`;
      results[`${label} (ms)`] = { ...summary(done.map((x) => x.r.all!)), unconverged: measured.length - done.length };
      results[`${kind}: affected cells per change (mean)`] = round(measured.reduce((n, x) => n + x.r.cells, 0) / Math.max(1, measured.length));
      results[`${kind}: command acknowledged (ms)`] = summary(of.filter((s) => s.acked).map((s) => s.acked! - s.t0));
      results[`${kind}: first cell delta published (ms)`] = summary(done.map((x) => x.r.planned!));
    }
    // The five slowest changes and where each waited: its slowest cell, when that cell's delta was seen, when applied.
    const slowest = samples
      .map((s) => ({ s, r: toAll(s) }))
      .filter((x) => x.r.all !== undefined)
      .sort((a, b) => b.r.all! - a.r.all!)
      .slice(0, 5)
      .map(({ s, r }) => {
        let cell = '';
        let at = 0;
        for (const c of deltaCells.get(s.revision!)!.cells) {
          const t = appliedAt(c, s.revision!)!;
          if (t > at) [cell, at] = [c, t];
        }
        const seen = deltaSeen.get(`${s.revision}:${cell}`);
        const ms = (t: number | undefined) => (t === undefined ? '?' : Math.round(t - s.t0));
        return `${s.kind} at ${round((s.t0 - tChurn) / 1000)} s: ${Math.round(r.all!)} ms, ${cell}: delta seen ${ms(seen)}, applied ${ms(at)}`;
      });
    results['slowest changes (into the churn; ms from the command)'] = slowest;
    const dnsSamples = samples.filter((s) => s.dnsAt !== undefined).map((s) => s.dnsAt! - s.t0);
    results['container start → DNS name answers (ms)'] = { ...summary(dnsSamples), unresolved: dnsPending.size };

    // ---- correctness: every cell converged to the planner's hash, and a fresh replay agrees ----
    progress(`[${mode}] replay check`);
    const report = await replay(bus, undefined, DOMAIN);
    const withoutStatus = report.cells.filter((c) => c.applied === null).map((c) => c.cellId);
    const check = {
      cells: final.cells,
      converged: final.converged,
      enforced: final.enforced,
      replayOk: report.ok,
      differing: report.cells.filter((c) => !c.ok).map((c) => c.cellId),
      withoutStatus,
    };
    results['machine load average (1 min): at start / at the end'] = `${round(load0, 2)} / ${round(loadavg()[0]!, 2)}`;
    deltaSub.unsubscribe();
    statusSub.unsubscribe();
    return { mode, auth, results, check };
  } finally {
    dnsSock.close();
    httpAgent.destroy();
    for (const c of [...children].reverse()) await stopChild(c.child);
    if (platform !== bus) await platform.close();
    await bus.close();
    await server.stop();
    live.clear();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Waits until every cell the planner has planned has applied the planner's latest hash (watched on the bus, cheap),
 * then asks the system whether the log's last revision is enforced everywhere (netfold's own answer: planners
 * published through it, every cell applied its latest planned revision). Gives up at the timeout, or when nothing
 * has moved for a minute.
 */
async function waitConverged(
  bus: Bus,
  planned: Map<string, string>,
  applied: Map<string, string>,
  timeoutMs: number,
): Promise<{ cells: number; converged: number; enforced: boolean; hashesAfterS?: number }> {
  const t0 = performance.now();
  const revision = (await bus.jsm.streams.info('NF_EVENTS')).state.last_seq;
  const count = () => {
    let n = 0;
    for (const [cell, hash] of planned) if (applied.get(cell) === hash) n++;
    return n;
  };
  let last = -1;
  let lastChange = performance.now();
  let hashesAt: number | undefined;
  for (;;) {
    const n = count();
    if (n === planned.size) {
      hashesAt ??= performance.now();
      const e = await enforcementOf(bus, revision);
      if (e.enforced) return { cells: planned.size, converged: count(), enforced: true, hashesAfterS: round((hashesAt - t0) / 1000) };
    }
    if (n !== last) {
      last = n;
      lastChange = performance.now();
    }
    if (performance.now() > t0 + timeoutMs || performance.now() - lastChange > 20_000) break;
    await new Promise((r) => setTimeout(r, n === planned.size ? 200 : 10));
  }
  const e = await enforcementOf(bus, revision);
  if (!e.enforced)
    progress(
      `not enforced at ${revision}: planners behind ${JSON.stringify(e.plannersBehind)}, cells ${JSON.stringify(e.cells.filter((c) => !c.ok).slice(0, 5))}`,
    );
  return { cells: planned.size, converged: count(), enforced: e.enforced };
}

function cpuOf(components: Component[]): Map<string, number> {
  return new Map([
    ...components.map((c) => [c.name, cpuSeconds(c.pid)] as const),
    ['bench driver', process.cpuUsage().user / 1e6 + process.cpuUsage().system / 1e6],
  ]);
}

function coresOf(components: Component[], before: Map<string, number>, seconds: number, only?: string[]): Record<string, number> {
  const after = cpuOf(components);
  const out: Record<string, number> = {};
  for (const [name, t] of after) if (!only || only.includes(name)) out[name] = round((t - before.get(name)!) / seconds, 2);
  return out;
}

// Interrupted (Ctrl-C, a test's timeout): take every process this run started down with it.
const live = new Set<number>();
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    for (const pid of live) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    process.exit(130);
  });
}

const runs: ScaleRun[] = [];
/** Runs that threw: reported with the others (a failed auth-on run does not lose the auth-off figures). */
const errors: { pollMs: number; auth: boolean; error: string }[] = [];
const attempt = async (pollMs: number, auth: boolean) => {
  try {
    runs.push(await runOnce(pollMs, auth));
  } catch (err) {
    progress(`run failed (poll ${pollMs} ms, auth ${auth ? 'on' : 'off'}): ${(err as Error).stack ?? String(err)}`);
    errors.push({ pollMs, auth, error: (err as Error).message });
  }
};
const pollMs = envNumber('BENCH_POLL_MS', 0);
for (const auth of authModes()) {
  await attempt(pollMs, auth);
  if (process.env.BENCH_BASELINE === '1' && pollMs === 0) await attempt(envNumber('BENCH_BASELINE_POLL_MS', 5000), auth);
}
const doc = { machine: machine(), sizes, runs, ...(errors.length > 0 && { errors }) };
console.log(JSON.stringify(doc, null, 2));
if (process.env.BENCH_FORMAT !== 'json') {
  const cell = (v: unknown) =>
    typeof v === 'object' && v !== null
      ? Object.entries(v)
          .map(([k, x]) => `${k} ${x}`)
          .join(', ')
      : String(v);
  const keys = [...new Set(runs.flatMap((r) => Object.keys(r.results)))];
  console.log(
    [
      '',
      `| measurement | ${runs.map((r) => r.mode).join(' | ')} |`,
      `|---|${runs.map(() => '---|').join('')}`,
      ...keys.map((k) => `| ${k} | ${runs.map((r) => cell(r.results[k])).join(' | ')} |`),
    ].join('\n'),
  );
}
const failed = runs.filter((r) => !r.check.enforced || r.check.converged !== r.check.cells || !r.check.replayOk || r.check.withoutStatus.length > 0);
if (failed.length > 0) process.stderr.write(`bench: not converged: ${JSON.stringify(failed.map((r) => ({ mode: r.mode, ...r.check })))}\n`);
if (failed.length > 0 || errors.length > 0) process.exitCode = 1;
