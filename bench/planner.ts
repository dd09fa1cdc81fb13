// npm run bench:planner — the topology planner: (1) fold rate replaying a 1,000,000-event log (model only, and the
// full planner with per-cell outputs), (2) time from an event's append to its cell delta being published, at
// 1,000 cells / 50,000 containers / 10,000 policies, (3) planner memory at 250,000 containers, (4) a bulk load
// appended while the planner runs (bench:scale's load as events: cells, BENCH_BULK_APPS apps, the policies, then
// the containers on random cells): time until the planner has published through its last event, its outputs and CPU,
// and the core alone over the same events in process.
// The raw append rate of the same server is measured in the same run. Sizes: BENCH_EVENTS, BENCH_CELLS,
// BENCH_CONTAINERS, BENCH_POLICIES, BENCH_APPS, BENCH_SAMPLES, BENCH_MEM_CONTAINERS, BENCH_BULK_APPS,
// BENCH_BULK_TIMEOUT_S, BENCH_MEM_WATCH_S (how long the memory part watches the idle planner, 90 s);
// BENCH_ONLY=replay|latency|memory|bulk runs one part; BENCH_SKIP_REPLAY / BENCH_SKIP_PLANNER / BENCH_SKIP_CORE leave
// the in-process replays / the planner process's cold start / the in-process core out of the replay part.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsServer } from '../runtime/nats-server.ts';
import { connectBus, type Bus } from '../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { silentLogger } from '../runtime/logger.ts';
import { EventLog } from '../runtime/event-log.ts';
import { newId } from '../runtime/ids.ts';
import { eventSubject } from '../runtime/subjects.ts';
import type { DomainEvent, RecordedEvent } from '../events/catalogue.ts';
import { foldEventsInPlace, initialModel } from '../projections/model.ts';
import { PlannerCore } from '../services/topology-planner/core.ts';
import { DEFAULT_DOMAIN, deriveCellState } from '../projections/cell.ts';
import { replay } from '../cli/operators.ts';
import { kvLatest, kvLatestEntries } from '../runtime/buckets.ts';
import { plannerProgress } from '../services/topology-planner/enforcement.ts';
import { PLANNER_MEMBERS_BUCKET } from '../runtime/subjects.ts';
import { plannersOf } from '../services/topology-planner/membership.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM } from '../projections/cell-stream.ts';
import { cpuSeconds, envNumber, machine, percentile, progress, publishAll, rawAppendRate, rssMiB, startChild, stopChild } from './lib.ts';

const EVENTS = envNumber('BENCH_EVENTS', 1_000_000);
const CELLS = envNumber('BENCH_CELLS', 1000);
const CONTAINERS = envNumber('BENCH_CONTAINERS', 50_000);
const POLICIES = envNumber('BENCH_POLICIES', 10_000);
const APPS = envNumber('BENCH_APPS', 10_000);
const SAMPLES = envNumber('BENCH_SAMPLES', 2000);
const MEM_CONTAINERS = envNumber('BENCH_MEM_CONTAINERS', 250_000);
const MEM_WATCH_S = envNumber('BENCH_MEM_WATCH_S', 90);
const BULK_APPS = envNumber('BENCH_BULK_APPS', 5000);
const BULK_TIMEOUT_S = envNumber('BENCH_BULK_TIMEOUT_S', 900);
const results: Record<string, string | number> = {};
// Planner processes run with the heap cap docs/operations.md recommends, unless BENCH_CHILD_NODE_ARGS says otherwise.
process.env.BENCH_CHILD_NODE_ARGS ??= '--max-old-space-size=768';

const ip = (j: number) => `10.${(j >> 16) & 255}.${(j >> 8) & 255}.${j & 255}`;

/** A synthetic but valid history: apps, policies, containers, then stop/start churn up to `total` events. */
function history(total: number, apps: number, policies: number, containers: number, cells: number): (i: number) => DomainEvent {
  const base = apps + policies;
  return (i) => {
    if (i < apps) return { type: 'AppRegistered', v: 1, data: { appId: `app-${i}`, name: `a${i}`, spaceId: 's', orgId: 'o' } };
    if (i < base) {
      const k = i - apps;
      return {
        type: 'PoliciesCreated',
        v: 1,
        data: {
          sourceAppId: `app-${k % apps}`,
          policies: [{ destAppId: `app-${(k * 7 + 1) % apps}`, protocol: 'tcp', startPort: 1000 + Math.floor(k / apps), endPort: 1000 + Math.floor(k / apps) }],
        },
      };
    }
    const j = i - base;
    if (j < containers)
      return {
        type: 'ContainerStarted',
        v: 2,
        data: {
          containerId: `c-${j}`,
          appId: `app-${j % apps}`,
          instanceIndex: Math.floor(j / apps),
          cellId: `cell-${j % cells}`,
          ip: ip(j),
          lifecycle: 'running',
        },
      };
    // churn: stop the oldest running container, start a new one of the same app on the same cell
    const k = j - containers;
    const victim = Math.floor(k / 2);
    if (k % 2 === 0)
      return {
        type: 'ContainerStopped',
        v: 1,
        data: { containerId: `c-${victim}`, appId: `app-${victim % apps}`, cellId: `cell-${victim % cells}`, wasRunning: true },
      };
    const fresh = containers + victim;
    return {
      type: 'ContainerStarted',
      v: 2,
      data: {
        containerId: `c-${fresh}`,
        appId: `app-${victim % apps}`,
        instanceIndex: Math.floor(fresh / apps),
        cellId: `cell-${victim % cells}`,
        ip: ip(fresh),
        lifecycle: 'running',
      },
    };
  };
  void total;
}

/**
 * The bulk load of `bench:scale` as events: cells registered, apps, policies (destinations as there), then containers
 * each on a cell picked at random (seeded), so an app's instances are spread over several cells.
 */
function bulkHistory(apps: number, policies: number, containers: number, cells: number): (i: number) => DomainEvent {
  let seed = 16;
  const rnd = () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
  const nextHost = new Array<number>(cells).fill(2);
  const instances = new Array<number>(apps).fill(0);
  return (i) => {
    if (i < cells)
      return {
        type: 'CellRegistered',
        v: 2,
        data: { cellId: `cell-${i}`, subnet: `10.${(i >> 8) & 255}.${i & 255}.0/24`, underlay: null, leased: false },
      };
    if (i < cells + apps) {
      const a = i - cells;
      return { type: 'AppRegistered', v: 1, data: { appId: `app-${a}`, name: `a${a}`, spaceId: 's', orgId: 'o' } };
    }
    if (i < cells + apps + policies) {
      const k = i - cells - apps;
      const destAppId = `app-${(k * 7 + 1 + Math.floor(k / apps)) % apps}`;
      const port = 1000 + Math.floor(k / apps);
      return {
        type: 'PoliciesCreated',
        v: 1,
        data: { sourceAppId: `app-${k % apps}`, policies: [{ destAppId, protocol: 'tcp', startPort: port, endPort: port }] },
      };
    }
    const j = i - cells - apps - policies;
    const k = Math.floor(rnd() * cells);
    const app = j % apps;
    const data = {
      containerId: `c-${j}`,
      appId: `app-${app}`,
      instanceIndex: instances[app]!++,
      cellId: `cell-${k}`,
      ip: `10.${(k >> 8) & 255}.${k & 255}.${nextHost[k]!++}`,
    };
    return { type: 'ContainerStarted', v: 2, data: { ...data, lifecycle: 'running' } };
  };
}

function subjectOf(e: DomainEvent): string {
  if (e.type.startsWith('Cell')) return eventSubject.cell((e.data as { cellId: string }).cellId);
  if (e.type.startsWith('App')) return eventSubject.app((e.data as { appId: string }).appId);
  if (e.type.startsWith('Container')) return eventSubject.container((e.data as { containerId: string }).containerId);
  return eventSubject.policy((e.data as { sourceAppId: string }).sourceAppId);
}

async function freshServer(): Promise<{ bus: Bus; url: string; pid: number; close(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-bench-'));
  const server = await startNatsServer({ storeDir: dir });
  const log = silentLogger();
  const bus = await connectBus({ servers: server.url, name: 'bench', log });
  await ensureTopology(bus.jsm, defaultTopologyOptions, log);
  return {
    bus,
    url: server.url,
    pid: server.pid,
    async close() {
      await bus.close();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function load(bus: Bus, count: number, make: (i: number) => DomainEvent): Promise<number> {
  return publishAll(bus.nc, count, 1024, (i) => {
    const e = make(i);
    return [subjectOf(e), JSON.stringify({ id: newId(), at: new Date().toISOString(), actor: 'platform:bench', correlationId: 'bench', ...e })];
  });
}

// ---- 1. replaying 1M events ----
if (!process.env.BENCH_ONLY || process.env.BENCH_ONLY === 'replay') {
  const s = await freshServer();
  progress('raw append rate');
  results['raw JetStream append (msgs/s)'] = await rawAppendRate(s.bus.nc, 'nf.evt.container.raw', JSON.stringify({ pad: 'x'.repeat(280) }), 100_000, 1024);
  // (those 100k raw messages are not valid events; the readers below skip them as invalid, counted in the time)
  progress(`loading ${EVENTS} events`);
  const make = history(EVENTS, APPS, POLICIES, CONTAINERS, CELLS);
  results[`load ${EVENTS} events into NF_EVENTS (msgs/s)`] = await load(s.bus, EVENTS, make);

  const recs: RecordedEvent[] = []; // (the core part below goes over them again)
  let replayMs = 0;
  if (!process.env.BENCH_SKIP_REPLAY || !process.env.BENCH_SKIP_CORE) {
    progress('replay: read + validate + fold the model');
    const t0 = performance.now();
    const model = structuredClone(initialModel());
    let batch: RecordedEvent[] = [];
    for await (const r of new EventLog(s.bus).read(1)) {
      if (!('event' in r)) continue;
      batch.push(r);
      recs.push(r);
      if (batch.length === 1000) {
        foldEventsInPlace(model, batch);
        batch = [];
      }
    }
    foldEventsInPlace(model, batch);
    replayMs = performance.now() - t0;
    results['replay: read, validate, fold model (events/s)'] = Math.round((recs.length / replayMs) * 1000);
    results['replay: read, validate, fold model (s)'] = Math.round(replayMs / 100) / 10;
    const td = performance.now();
    const cells = Object.keys(model.containersByCell);
    let entries = 0;
    for (const cell of cells) {
      const st = deriveCellState(model, cell);
      entries += Object.keys(st.containers).length + Object.keys(st.ingress).length + Object.keys(st.sources).length + Object.keys(st.names).length;
    }
    const deriveMs = performance.now() - td;
    results[`derive all ${cells.length} cell states from the model (s)`] = Math.round(deriveMs / 100) / 10;
    results['rebuild: replay + every cell state (s)'] = Math.round((replayMs + deriveMs) / 100) / 10;
    results['cell state entries'] = entries;

    progress('netfold replay (cli/operators.ts) over the same log');
    const tr = performance.now();
    const report = await replay(s.bus, undefined, DEFAULT_DOMAIN);
    const replayCliMs = performance.now() - tr;
    results['netfold replay of 1M: read, validate, fold, hash every cell (s)'] = Math.round(replayCliMs / 100) / 10;
    results['netfold replay of 1M (events/s)'] = Math.round((recs.length / replayCliMs) * 1000);
    results['netfold replay cells compared'] = report.cells.length;
  }
  // The planner process itself over the same log, with empty output streams: from its start until it has published
  // every cell's state and says so (its progress entry through the last event, under members that include it).
  if (!process.env.BENCH_SKIP_PLANNER) {
    progress(`planner process cold start over the ${EVENTS} events`);
    const last = (await s.bus.jsm.streams.info('NF_EVENTS')).state.last_seq;
    const tp = performance.now();
    const child = await startChild(
      'services/topology-planner/main.ts',
      { NATS_URL: s.url, NETFOLD_LOG_LEVEL: 'info', NETFOLD_METRICS_PORT: '0' },
      'planner-started',
    );
    const deadline = Date.now() + BULK_TIMEOUT_S * 1000;
    let done = false;
    while (!done && Date.now() < deadline) {
      done = plannerProgress(await kvLatestEntries(s.bus, PLANNER_MEMBERS_BUCKET), last).plannersBehind.length === 0;
      if (!done) await new Promise((r) => setTimeout(r, 200));
    }
    results[`planner process cold start over ${EVENTS} events, every cell's state published (s)`] = done
      ? Math.round((performance.now() - tp) / 100) / 10
      : `not within ${BULK_TIMEOUT_S} s`;
    results['planner process cold start: cell snapshots / deltas published'] =
      `${(await s.bus.jsm.streams.info(CELL_SNAPSHOTS_STREAM)).state.last_seq} / ${(await s.bus.jsm.streams.info(CELL_DELTAS_STREAM)).state.last_seq}`;
    results['planner process cold start: RSS (MiB)'] = rssMiB(child.pid!);
    await stopChild(child);
  }
  if (process.env.BENCH_SKIP_CORE) {
    await s.close();
  } else {
    progress('planner core over the same events, in batches of 1,000 (per-cell outputs per batch)');
    const core = new PlannerCore({ domain: DEFAULT_DOMAIN, snapshotEvery: 64, owns: () => true });
    const t1 = performance.now();
    let outputs = 0;
    for (let i = 0; i < recs.length; i += 1000) outputs += core.ingest(recs.slice(i, i + 1000)).length;
    const coreMs = performance.now() - t1;
    results['planner core: fold + per-cell deltas (events/s)'] = Math.round((recs.length / coreMs) * 1000);
    results['planner core: 1M in batches of 1,000 with cell outputs, replay included (s)'] = Math.round((replayMs + coreMs) / 100) / 10;
    results['planner core: outputs produced'] = outputs;
    await s.close();
  }
}

// ---- 2. latency append -> delta at 1000 cells / 50k containers / 10k policies ----
if (!process.env.BENCH_ONLY || process.env.BENCH_ONLY === 'latency') {
  const s = await freshServer();
  const base = APPS + POLICIES + CONTAINERS;
  progress(`loading ${base} events (${APPS} apps, ${POLICIES} policies, ${CONTAINERS} containers on ${CELLS} cells)`);
  await load(s.bus, base, history(base, APPS, POLICIES, CONTAINERS, CELLS));
  const tStart = performance.now();
  const child = await startChild(
    'services/topology-planner/main.ts',
    { NATS_URL: s.url, NETFOLD_LOG_LEVEL: 'info', NETFOLD_METRICS_PORT: '0' },
    'planner-started',
  );
  // 'planner-started' means folded; wait until its outputs are all published too (the delta stream stops growing).
  let last = -1;
  for (;;) {
    const n = (await s.bus.jsm.streams.info('NF_CELL_DELTAS')).state.last_seq;
    if (n === last) break;
    last = n;
    await new Promise((r) => setTimeout(r, 1000));
  }
  results[`planner cold start over ${base} events, outputs published (s)`] = Math.round((performance.now() - tStart - 1000) / 100) / 10;
  results['cell deltas published at cold start'] = last;
  const seen = new Map<number, number>();
  const sub = s.bus.nc.subscribe('nf.cell.delta.>', {
    callback: (_e, m) => {
      const rev = (m.json() as { revision: number }).revision;
      if (!seen.has(rev)) seen.set(rev, performance.now());
    },
  });
  const log = new EventLog(s.bus);
  const make = history(base + SAMPLES, APPS, POLICIES, CONTAINERS, CELLS);
  const sent: { seq: number; t: number }[] = [];
  progress(`${SAMPLES} sample events, one every 2 ms`);
  for (let i = 0; i < SAMPLES; i++) {
    const e = make(base + i);
    const expectedSubjectSeq = await log.lastSubjectSeq(subjectOf(e));
    const t = performance.now();
    const seq = await log.append(
      subjectOf(e),
      { id: newId(), at: new Date().toISOString(), actor: 'platform:bench', correlationId: 'bench', ...e },
      { expectedSubjectSeq },
    );
    sent.push({ seq, t });
    await new Promise((r) => setTimeout(r, 2));
  }
  const deadline = Date.now() + 30_000;
  while (sent.some((x) => !seen.has(x.seq)) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const lat = sent
    .filter((x) => seen.has(x.seq))
    .map((x) => seen.get(x.seq)! - x.t)
    .sort((a, b) => a - b);
  results['append -> delta published: samples'] = `${lat.length} of ${SAMPLES}`;
  results['append -> delta published: p50 (ms)'] = Math.round(percentile(lat, 50) * 10) / 10;
  results['append -> delta published: p99 (ms)'] = Math.round(percentile(lat, 99) * 10) / 10;
  results['append -> delta published: max (ms)'] = Math.round((lat[lat.length - 1] ?? NaN) * 10) / 10;
  results[`planner RSS at ${CONTAINERS} containers (MiB)`] = rssMiB(child.pid!);
  sub.unsubscribe();
  await stopChild(child);
  await s.close();
}

// ---- 3. memory at 250k containers ----
if (!process.env.BENCH_ONLY || process.env.BENCH_ONLY === 'memory') {
  const s = await freshServer();
  const base = APPS + POLICIES + MEM_CONTAINERS;
  progress(`loading ${base} events for the memory run (${MEM_CONTAINERS} containers)`);
  await load(s.bus, base, history(base, APPS, POLICIES, MEM_CONTAINERS, CELLS));
  const t0 = performance.now();
  const child = await startChild(
    'services/topology-planner/main.ts',
    { NATS_URL: s.url, NETFOLD_LOG_LEVEL: 'info', NETFOLD_METRICS_PORT: '0' },
    'planner-started',
  );
  results[`planner start-up over ${base} events, folded (s)`] = Math.round((performance.now() - t0) / 100) / 10;
  results[`planner RSS at ${MEM_CONTAINERS} containers, when started (MiB)`] = rssMiB(child.pid!);
  // Then while it idles, every 5 s for BENCH_MEM_WATCH_S: V8 keeps the heap its start-up grew (it lets the heap grow
  // to ~4x what the last full collection found live while the fold allocates fast) until its memory reducer runs,
  // a while after the allocation rate drops; the RSS it settles at is the planner's size at this scale.
  const samples: number[] = [];
  for (let waited = 0; waited < MEM_WATCH_S; waited += 5) {
    await new Promise((r) => setTimeout(r, 5_000));
    samples.push(rssMiB(child.pid!));
  }
  results[`planner RSS at ${MEM_CONTAINERS} containers, highest while idle for ${MEM_WATCH_S} s (MiB)`] = Math.max(...samples);
  results[`planner RSS at ${MEM_CONTAINERS} containers, after ${MEM_WATCH_S} s idle (MiB)`] = samples[samples.length - 1]!;
  results[`planner RSS samples every 5 s (MiB)`] = samples.join(' ');
  await stopChild(child);
  await s.close();
}

// ---- 4. bulk load appended while the planner runs: until every cell's outputs are published ----
if (!process.env.BENCH_ONLY || process.env.BENCH_ONLY === 'bulk') {
  const s = await freshServer();
  const child = await startChild(
    'services/topology-planner/main.ts',
    { NATS_URL: s.url, NETFOLD_LOG_LEVEL: 'info', NETFOLD_METRICS_PORT: '0' },
    'planner-started',
  );
  const total = CELLS + BULK_APPS + POLICIES + CONTAINERS;
  progress(`bulk: appending ${total} events (${CELLS} cells, ${BULK_APPS} apps, ${POLICIES} policies, ${CONTAINERS} containers), planner running`);
  // CPU seconds of the planner and the server: on a shared machine steadier than the times.
  const cpu0 = { planner: cpuSeconds(child.pid!), server: cpuSeconds(s.pid) };
  const t0 = performance.now();
  results[`bulk: append ${total} events (msgs/s)`] = await load(s.bus, total, bulkHistory(BULK_APPS, POLICIES, CONTAINERS, CELLS));
  const appendedMs = performance.now() - t0;
  const last = (await s.bus.jsm.streams.info('NF_EVENTS')).state.last_seq;
  // The planner announces how far its outputs are all acknowledged (`p.<id>` in the members bucket, every heartbeat).
  const deadline = Date.now() + BULK_TIMEOUT_S * 1000;
  let through = 0;
  while (Date.now() < deadline) {
    through = plannersOf(await kvLatest(s.bus, PLANNER_MEMBERS_BUCKET)).publishedThrough('planner');
    if (through >= last) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const doneMs = performance.now() - t0;
  const cpu = { planner: cpuSeconds(child.pid!) - cpu0.planner, server: cpuSeconds(s.pid) - cpu0.server };
  results['bulk: all appended (s)'] = Math.round(appendedMs / 100) / 10;
  results['bulk: first append -> planner published through the last event (s)'] =
    through >= last ? Math.round(doneMs / 100) / 10 : `not within ${BULK_TIMEOUT_S} s (through ${through} of ${last})`;
  results['bulk: cell deltas published'] = (await s.bus.jsm.streams.info(CELL_DELTAS_STREAM)).state.last_seq;
  results['bulk: cell snapshots published'] = (await s.bus.jsm.streams.info(CELL_SNAPSHOTS_STREAM)).state.last_seq;
  results['bulk: planner CPU until then (s)'] = Math.round(cpu.planner * 10) / 10;
  results['bulk: nats-server CPU until then (s)'] = Math.round(cpu.server * 10) / 10;
  results['bulk: planner RSS at the end (MiB)'] = rssMiB(child.pid!);
  await stopChild(child);
  await s.close();

  // The core alone over the same events, in process and without NATS: what the fold and the outputs cost.
  progress('bulk: the planner core alone over the same events, in batches of 1,000');
  const make = bulkHistory(BULK_APPS, POLICIES, CONTAINERS, CELLS);
  const at = new Date().toISOString();
  const recs: RecordedEvent[] = [];
  for (let i = 0; i < total; i++) {
    const e = make(i);
    recs.push({ seq: i + 1, subject: subjectOf(e), event: { id: newId(), at, actor: 'platform:bench', correlationId: 'bench', ...e } });
  }
  const core = new PlannerCore({ domain: DEFAULT_DOMAIN, snapshotEvery: 64, owns: () => true });
  const tc = performance.now();
  const cpuCore = process.cpuUsage();
  let outputs = 0;
  for (let i = 0; i < recs.length; i += 1000) outputs += core.ingest(recs.slice(i, i + 1000)).length;
  const { user, system } = process.cpuUsage(cpuCore);
  results['bulk: planner core alone, in process, batches of 1,000 (s)'] = Math.round((performance.now() - tc) / 100) / 10;
  results['bulk: planner core alone: CPU (s)'] = Math.round((user + system) / 100_000) / 10;
  results['bulk: planner core alone: outputs'] = outputs;
}

console.log(JSON.stringify({ machine: machine(), sizes: { EVENTS, CELLS, CONTAINERS, POLICIES, APPS, SAMPLES, MEM_CONTAINERS, BULK_APPS }, results }, null, 2));
console.log(['', '| measurement | figure |', '|---|---|', ...Object.entries(results).map(([k, v]) => `| ${k} | ${v} |`)].join('\n'));
