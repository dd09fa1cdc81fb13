// The topology planner against a real nats-server: readers that start from the snapshot and follow the deltas
// end equal to the state derived from the whole log — with one planner, across planner kill -9s and restarts
// (where every cell's stored deltas must form one unbroken chain, followed by live readers without a resync), and
// across re-partitioning.
import t, { type Test } from 'tap';
import { spawn, type ChildProcess } from 'node:child_process';
import { DeliverPolicy } from '@nats-io/jetstream';
import { Objm } from '@nats-io/obj';
import { startNats, eventually, type NatsFixture } from './harness/nats.ts';
import { startGateway, cfPolicy, type GatewayFixture } from './harness/gateway.ts';
import { EventLog } from '../runtime/event-log.ts';
import { CellFeed } from '../services/cell-agent/feed.ts';
import type { Bus } from '../runtime/nats.ts';
import { PLANNER_CHECKPOINT_BUCKET, PLANNER_MEMBERS_BUCKET } from '../runtime/subjects.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, type CellDelta, type CellSnapshot, cellSubject, parseCellSnapshot } from '../projections/cell-stream.ts';
import { isNoMessageFound } from '../runtime/nats-adapter.ts';
import { chainProblems } from './harness/chains.ts';
import { Kvm } from '@nats-io/kv';
import { enforcementOf } from '../services/topology-planner/enforcement.ts';
import { foldEvents, initialModel, type Model } from '../projections/model.ts';
import { cellHashOf, deriveCellState } from '../projections/cell.ts';
import { canonicalJson } from '../projections/canonical.ts';
import { startPlanner, defaultPlannerConfig, type Planner } from '../services/topology-planner/service.ts';
import type { RecordedEvent } from '../events/catalogue.ts';

const CELLS = ['cell-a', 'cell-b', 'cell-c', 'cell-d'];

async function logEvents(bus: Bus): Promise<RecordedEvent[]> {
  const out: RecordedEvent[] = [];
  for await (const rec of new EventLog(bus).read(1)) if ('event' in rec) out.push(rec);
  return out;
}

async function reference(bus: Bus): Promise<Model> {
  return foldEvents(initialModel(), await logEvents(bus));
}

/** Workload step `i`: apps, containers spread over the cells, policies, stops. */
async function workload(gw: GatewayFixture, from: number, to: number): Promise<void> {
  if (from === 0) await gw.registerCells(...CELLS.map((c, k): [string, string] => [c, `10.255.${k}.0/24`]));
  for (let i = from; i < to; i++) {
    const app = `app-${i % 6}`;
    if (i < 6) await gw.intake('registerApp', { appId: app, name: `svc${i}`, spaceId: 's1', orgId: 'o1' });
    const started = await gw.intake('startContainer', { containerId: `c-${i}`, appId: app, cellId: CELLS[i % CELLS.length], instanceIndex: i, ip: `10.255.${i % CELLS.length}.${10 + i}` });
    if (!started.ok) throw new Error(JSON.stringify(started));
    if (i % 3 === 2) await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy(`app-${i % 6}`, `app-${(i + 1) % 6}`, 'tcp', 1000 + i)] } });
    if (i % 5 === 4) await gw.intake('stopContainer', { containerId: `c-${i - 2}` });
  }
}

async function feedsFor(t: Test, bus: Bus, nats: NatsFixture): Promise<Map<string, CellFeed>> {
  const feeds = new Map<string, CellFeed>();
  for (const cell of CELLS) {
    const feed = new CellFeed(bus, cell, nats.log);
    await feed.start();
    feeds.set(cell, feed);
  }
  t.teardown(async () => {
    for (const f of feeds.values()) await f.stop();
  });
  return feeds;
}

/** Every feed reaches the state derived from the whole log, and holds exactly it. */
async function feedsConverge(t: Test, bus: Bus, feeds: Map<string, CellFeed>, what: string): Promise<void> {
  const model = await reference(bus);
  for (const [cell, feed] of feeds) {
    const expected = deriveCellState(model, cell);
    const hash = cellHashOf(expected);
    await feed.waitUntil((v) => v.hash === hash, 15_000, `${what}: hash of ${cell}`);
    t.equal(canonicalJson(feed.view.state), canonicalJson(expected), `${what}: ${cell} equals the derived state`);
  }
}

function inProcessPlanner(t: Test, bus: Bus, nats: NatsFixture, id = 'planner', over: Partial<typeof defaultPlannerConfig> = {}): Promise<Planner> {
  return startPlanner({ bus, log: nats.log, config: { ...defaultPlannerConfig, plannerId: id, heartbeatMs: 100, memberTtlMs: 1000, checkpointIntervalMs: 200, ...over } }).then((p) => {
    t.teardown(() => p.stop().catch(() => undefined));
    return p;
  });
}

t.test('readers follow one planner to the derived state', async (t) => {
  const nats = await startNats(t, { plannerMemberTtlMs: 1000 }); // the in-process planners' member TTL
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  const planner = await inProcessPlanner(t, await nats.connectAs('planner'), nats);
  const feeds = await feedsFor(t, bus, nats);
  await workload(gw, 0, 24);
  await feedsConverge(t, bus, feeds, 'live');
  t.ok(planner.stats.deltas > 0, `deltas were published (${planner.stats.deltas})`);
  t.same(Object.keys(planner.core.cells()).sort(), CELLS, 'the only planner owns every cell');
  // A reader started late begins from the snapshot (or the empty state) and the retained deltas.
  const late = new CellFeed(bus, 'cell-a', nats.log);
  await late.start();
  t.teardown(() => late.stop());
  await feedsConverge(t, bus, new Map([['cell-a', late]]), 'late reader');
  // A policy delete reaches the destination's cells.
  await gw.http('POST', '/networking/v1/external/policies/delete', { body: { policies: [cfPolicy('app-2', 'app-3', 'tcp', 1002)] } });
  await feedsConverge(t, bus, feeds, 'after a delete');
});

t.test('a planner killed with SIGKILL and restarted, three times: every cell keeps one unbroken chain', async (t) => {
  const nats = await startNats(t); // the planner process's default member TTL (heartbeat 1 s, TTL 5 s)
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  const feeds = await feedsFor(t, bus, nats);
  const env = { ...process.env, NATS_URL: nats.server.url, NATS_CREDS: await nats.credsFile('planner'), NETFOLD_LOG_LEVEL: 'warn', NETFOLD_CHECKPOINT_INTERVAL_MS: '100', NETFOLD_METRICS_PORT: '0' };
  const spawnPlanner = () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'services/topology-planner/main.ts'], { env, stdio: 'ignore' });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    return child;
  };
  const kill = async (child: ChildProcess) => {
    child.kill('SIGKILL');
    if (child.exitCode === null) await new Promise((r) => child.once('exit', r));
  };
  const objects = await new Objm(bus.js).create(PLANNER_CHECKPOINT_BUCKET);
  const checkpointSeq = async () => {
    const blob = await objects.getBlob('planner-planner');
    return blob ? (JSON.parse(new TextDecoder().decode(blob)) as { seq: number }).seq : 0;
  };
  const deltasStored = async () => (await bus.jsm.streams.info(CELL_DELTAS_STREAM)).state.last_seq;

  let child: ChildProcess = spawnPlanner();
  await workload(gw, 0, 15);
  await feedsConverge(t, bus, feeds, 'before the kills');
  const logged = (await logEvents(bus)).length;
  await eventually(async () => ((await checkpointSeq()) >= logged ? true : undefined), 15_000, 'a checkpoint covering phase 1');
  // 1. Killed after a checkpoint, while it works on the next events; more are written while it is down.
  await workload(gw, 15, 22);
  await kill(child);
  await workload(gw, 22, 30);
  // 2. Killed while it catches up: as soon as its first outputs after the restart are stored.
  let stored = await deltasStored();
  child = spawnPlanner();
  await eventually(async () => ((await deltasStored()) > stored ? true : undefined), 15_000, 'outputs of the restarted planner');
  await kill(child);
  // 3. Killed in the middle of a workload that goes on while it is down and restarts.
  stored = await deltasStored();
  child = spawnPlanner();
  const writing = workload(gw, 30, 42);
  await eventually(async () => ((await deltasStored()) > stored + 3 ? true : undefined), 15_000, 'the restarted planner at work');
  await kill(child);
  await writing;
  child = spawnPlanner();
  await feedsConverge(t, bus, feeds, 'after the restarts');
  for (const [cell, feed] of feeds) t.equal(feed.resyncs, 0, `the reader of ${cell} followed every restart without a resync`);

  // Every cell's stored deltas (and its snapshot) form one chain that readers follow to the state of the whole log.
  const model = await reference(bus);
  const deltas = new Map<string, CellDelta[]>();
  const last = await deltasStored();
  const consumer = await bus.js.consumers.get(CELL_DELTAS_STREAM, { deliver_policy: DeliverPolicy.All });
  const messages = await consumer.consume();
  for await (const m of messages) {
    const d = m.json<CellDelta>();
    (deltas.get(d.cellId) ?? deltas.set(d.cellId, []).get(d.cellId)!).push(d);
    if (m.seq >= last) break;
  }
  await messages.close();
  for (const cell of CELLS) {
    const snapshots: CellSnapshot[] = [];
    try {
      const m = await bus.jsm.direct.getMessage(CELL_SNAPSHOTS_STREAM, { last_by_subj: cellSubject.snapshot(cell) });
      const snap = m && parseCellSnapshot(m.data, cell);
      if (snap) snapshots.push(snap);
    } catch (err) {
      if (!isNoMessageFound(err)) throw err;
    }
    const list = deltas.get(cell) ?? [];
    t.ok(list.length > 5, `${cell}: ${list.length} deltas stored`);
    t.same(chainProblems(cell, list, snapshots, cellHashOf(deriveCellState(model, cell))), [], `${cell}: one unbroken chain to the state of the whole log`);
  }
  await kill(child);
});

t.test('re-partitioning: planners join and leave; every cell keeps exactly one owner', async (t) => {
  const nats = await startNats(t, { plannerMemberTtlMs: 1000 }); // the in-process planners' member TTL
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  const feeds = await feedsFor(t, bus, nats);
  const p1 = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p1');
  const p2 = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p2');
  const live = [p1, p2];
  const partitioned = async (what: string) => {
    const ids = live.map((p) => p.membership.members.join(','));
    await eventually(() => (live.every((p) => p.membership.members.length === live.length) ? true : undefined), 10_000, `${what}: members agree`);
    t.ok(ids.length > 0);
    const owners = CELLS.map((c) => live.filter((p) => c in p.core.cells()).length);
    t.same(owners, CELLS.map(() => 1), `${what}: each cell has exactly one owner`);
  };
  await workload(gw, 0, 12);
  await eventually(() => (live.every((p) => p.membership.members.length === 2) ? true : undefined), 10_000, 'two members');
  await feedsConverge(t, bus, feeds, 'two planners');
  await partitioned('two planners');

  const p3 = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p3');
  t.equal(p3.catchUp, 'folded-first', 'p3 caught up owning nothing while p1 and p2 served every cell, then joined');
  live.push(p3);
  await eventually(() => (live.every((p) => p.membership.members.length === 3) ? true : undefined), 10_000, 'three members');
  await workload(gw, 12, 20);
  await feedsConverge(t, bus, feeds, 'a third joined');
  await partitioned('three planners');

  await p1.stop();
  live.shift();
  await eventually(() => (live.every((p) => p.membership.members.length === 2) ? true : undefined), 10_000, 'p1 gone');
  await workload(gw, 20, 28);
  await feedsConverge(t, bus, feeds, 'one left');
  await partitioned('after p1 left');
});

t.test('a reader refuses a delta whose hash does not match and one that skips a revision, keeps the planned state, recovers', async (t) => {
  const nats = await startNats(t, { plannerMemberTtlMs: 1000 }); // the in-process planners' member TTL
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  await inProcessPlanner(t, await nats.connectAs('planner'), nats);
  const feeds = await feedsFor(t, bus, nats);
  await workload(gw, 0, 12);
  await feedsConverge(t, bus, feeds, 'before');
  const feed = feeds.get('cell-a')!;
  const before = { state: canonicalJson(feed.view.state), hash: feed.view.hash, revision: feed.view.revision };
  const evil = { appId: 'app-0', appName: 'svc0', instanceIndex: 99, ip: '10.255.9.9' };

  // 1. Right chain, wrong hash: nothing of it may stay applied.
  const forged = await bus.js.publish('nf.cell.delta.cell-a', JSON.stringify({ cellId: 'cell-a', revision: before.revision + 1000, prevRevision: before.revision, ops: [{ path: ['containers', 'evil'], value: evil }, { path: ['containers', Object.keys(feed.view.state.containers)[0]] }], hash: '0'.repeat(64) }));
  await eventually(() => (feed.resyncs >= 1 ? true : undefined), 10_000, 'a resync after the mismatch');
  t.equal(canonicalJson(feed.view.state), before.state, 'the state is the planned one, the forged ops undone');
  t.equal(feed.view.hash, before.hash);
  await bus.jsm.streams.deleteMessage(CELL_DELTAS_STREAM, forged.seq);

  // 2. A gap (its previous revision is not the one held).
  const gap = await bus.js.publish('nf.cell.delta.cell-a', JSON.stringify({ cellId: 'cell-a', revision: before.revision + 2000, prevRevision: before.revision + 1500, ops: [{ path: ['containers', 'evil'], value: evil }], hash: '0'.repeat(64) }));
  const resyncs = feed.resyncs;
  await eventually(() => (feed.resyncs > resyncs ? true : undefined), 10_000, 'a resync after the gap');
  t.equal(canonicalJson(feed.view.state), before.state, 'a delta after a gap is not applied');
  await bus.jsm.streams.deleteMessage(CELL_DELTAS_STREAM, gap.seq);

  // 3. And the reader goes on following the planner.
  await workload(gw, 12, 24);
  await feedsConverge(t, bus, feeds, 'after');
});

t.test('an idle planner keeps announcing how far it has published, past the members TTL', async (t) => {
  const nats = await startNats(t, { plannerMemberTtlMs: 1000 }); // the in-process planners' member TTL
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  const planner = await inProcessPlanner(t, await nats.connectAs('planner'), nats); // heartbeat 100 ms, TTL 1 s
  await workload(gw, 0, 6);
  const last = await new EventLog(bus).lastSeq();
  await planner.waitPublished(last);
  const kv = await new Kvm(bus.js).open(PLANNER_MEMBERS_BUCKET);
  const first = await eventually(async () => (await kv.get('p.planner')) ?? undefined, 5000, 'a progress entry');
  // No new events: the entry must still be refreshed, at least for two whole TTLs' worth of heartbeats.
  const later = await eventually(async () => {
    const e = await kv.get('p.planner');
    return e && e.revision >= first.revision + 20 ? e : undefined;
  }, 10_000, 'the progress entry re-put while idle');
  t.same(later.json(), { publishedThrough: last, members: ['planner'] }, 'how far, and under which members');
  t.same((await enforcementOf(bus, last)).plannersBehind, [], 'the idle planner is not reported behind');
});

t.test('a lone planner far behind the log folds first, then takes every cell over: readers follow', async (t) => {
  const nats = await startNats(t, { plannerMemberTtlMs: 1000 });
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  const feeds = await feedsFor(t, bus, nats);
  const first = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p1');
  t.equal(first.catchUp, 'joined-first', 'an empty log: joined at once');
  await workload(gw, 0, 12);
  await feedsConverge(t, bus, feeds, 'before the restart');
  await first.stop();
  await workload(gw, 12, 30); // written while no planner runs: more events ahead than foldFirstAfter below
  const again = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p1', { foldFirstAfter: 5 });
  t.equal(again.catchUp, 'folded-first', 'far behind: folded first');
  await feedsConverge(t, bus, feeds, 'after the take-over');
  t.ok(again.stats.snapshots >= CELLS.length, `each cell taken over with a snapshot (${again.stats.snapshots})`);
  await workload(gw, 30, 36);
  await feedsConverge(t, bus, feeds, 'the chain goes on after the take-over');
  const last = (await logEvents(bus)).at(-1)!.seq;
  await again.waitPublished(last);
  t.ok((await enforcementOf(bus, last)).plannersBehind.length === 0, 'the enforcement answer: nobody behind');
});

t.test('a planner behind by more than fastForwardAfter folds without deriving, then settles: readers follow without a resync', async (t) => {
  const nats = await startNats(t, { plannerMemberTtlMs: 1000 });
  const gw = await startGateway(t, nats);
  const bus = await nats.connect('readers');
  const feeds = await feedsFor(t, bus, nats);
  const first = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p1');
  await workload(gw, 0, 10);
  await feedsConverge(t, bus, feeds, 'before the stop');
  await first.stop();
  await workload(gw, 10, 40); // ~50 events written while no planner runs
  // Joins at once (foldFirstAfter not reached), and is then behind by more than fastForwardAfter.
  const again = await inProcessPlanner(t, await nats.connectAs('planner'), nats, 'p1', { fastForwardAfter: 3 });
  t.equal(again.catchUp, 'joined-first');
  await feedsConverge(t, bus, feeds, 'after catching up');
  t.ok(again.stats.fastForwarded > 0, `events folded without deriving: ${again.stats.fastForwarded}`);
  for (const [cell, feed] of feeds) t.equal(feed.resyncs, 0, `${cell}: followed the settled deltas without a resync`);
  const last = (await logEvents(bus)).at(-1)!.seq;
  await again.waitPublished(last);
  await workload(gw, 40, 46);
  await feedsConverge(t, bus, feeds, 'and on after it');
});
