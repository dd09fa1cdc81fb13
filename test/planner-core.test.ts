// Sequence tests of the planner core: the same scenario folded in order, in different batch sizes,
// with every event duplicated, and with independent aggregates interleaved differently must give byte-identical
// cell states; a reader that applies the outputs must end equal to the derived states; a restart from a
// checkpoint must give exactly the outputs of an uninterrupted run; partitions must add up to the whole.
import t, { type Test } from 'tap';
import type { DomainEvent, RecordedEvent } from '../events/catalogue.ts';
import { cellHashOf, deriveCellState, emptyCellState } from '../projections/cell.ts';
import { CellReplica, type PlannerOutput, outputMessage } from '../projections/cell-stream.ts';
import { canonicalJson } from '../projections/canonical.ts';
import { PlannerCore, type PlannerCheckpoint } from '../services/topology-planner/core.ts';
import { HeartbeatWatch } from '../services/topology-planner/membership.ts';
import { ev, record } from './harness/events.ts';
import { foldEventsInPlace, initialModel } from '../projections/model.ts';

const opts = (owns: (c: string) => boolean = () => true) => ({ domain: 'apps.internal', snapshotEvery: 4, owns });

/** Independent streams: each keeps its order; different merges must give the same cell states. */
function scenario(): { prefix: DomainEvent[]; streams: DomainEvent[][] } {
  const apps = ['web', 'api', 'db', 'cache', 'queue'];
  const prefix = apps.map((a, i) => ev.registered(`app-${a}`, a, i < 3 ? 's1' : 's2'));
  const policies: DomainEvent[] = [
    ev.created('app-web', 'app-api'),
    ev.created('app-api', 'app-db', 5432),
    ev.created('app-api', 'app-cache', 6379, 6380),
    ev.created('app-queue', 'app-api', 9000, 9100, 'udp'),
    ev.removed('app-web', 'app-api'),
    ev.created('app-web', 'app-api', 8443),
    ev.renamed('app-db', 'database', 'db'),
    ev.deleted('app-cache'),
  ];
  const containers = apps.map((a, i) => {
    const app = `app-${a}`;
    const s: DomainEvent[] = [
      ev.started(`${a}-0`, app, `cell-${i % 3}`, `10.255.${i}.2`, 0),
      ev.started(`${a}-1`, app, `cell-${(i + 1) % 3}`, `10.255.${i}.3`, 1),
    ];
    if (i % 2 === 0) s.push(ev.stopped(`${a}-0`, app, `cell-${i % 3}`), ev.started(`${a}-2`, app, `cell-${(i + 2) % 3}`, `10.255.${i}.4`, 2));
    if (i === 1) s.push(ev.stopped(`${a}-9`), ev.started(`${a}-9`, app, 'cell-2', '10.255.9.9', 9));
    return s;
  });
  return { prefix, streams: [policies, ...containers] };
}

function mulberry32(seed: number) {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296;
  };
}

function merge(streams: DomainEvent[][], seed: number | null): DomainEvent[] {
  if (seed === null) return streams.flat();
  const rnd = mulberry32(seed);
  const idx = streams.map(() => 0);
  const out: DomainEvent[] = [];
  for (;;) {
    const open = streams.map((s, i) => i).filter((i) => idx[i]! < streams[i]!.length);
    if (open.length === 0) return out;
    const pick = open[Math.floor(rnd() * open.length)]!;
    out.push(streams[pick]![idx[pick]!++]!);
  }
}

/** One replica per cell: the readers' own code (projections/cell-stream.ts). */
type Reader = Map<string, CellReplica>;

/** Sends outputs over the wire format to the real replica, as an agent gets them; fails on a gap, mismatch or invalid message. */
function applyOutputs(t: Test, reader: Reader, outputs: PlannerOutput[]): void {
  for (const o of outputs) {
    const r = reader.get(o.cellId) ?? reader.set(o.cellId, new CellReplica(o.cellId)).get(o.cellId)!;
    const result = r.applyMessage(outputMessage(o).body, o.kind);
    if (result !== 'applied' && !(result === 'stale' && o.kind === 'snapshot')) t.fail(`${o.kind} of ${o.cellId} at ${o.revision}: ${result} (held ${r.revision})`);
    if (cellHashOf(r.state) !== r.hash) t.fail(`incremental hash differs from the full hash on ${o.cellId} at ${o.revision}`);
  }
}

function runCore(recs: RecordedEvent[], batchSize: number, owns?: (c: string) => boolean) {
  const core = new PlannerCore(opts(owns));
  const outputs: PlannerOutput[] = [];
  for (let i = 0; i < recs.length; i += batchSize) outputs.push(...core.ingest(recs.slice(i, i + batchSize)));
  return { core, outputs };
}

const cellsOf = (core: PlannerCore) => Object.keys(core.cells()).sort();
const statesOf = (core: PlannerCore) => canonicalJson(Object.fromEntries(cellsOf(core).map((c) => [c, core.cellState(c)])));


t.test('in order, batch sizes, duplicates, interleavings: identical cell states', async (t) => {
  const { prefix, streams } = scenario();
  const variants: { name: string; recs: RecordedEvent[]; batch: number }[] = [];
  const inOrder = record([...prefix, ...merge(streams, null)]);
  variants.push({ name: 'in order, one batch', recs: inOrder, batch: inOrder.length });
  for (const b of [1, 3, 7]) variants.push({ name: `in order, batches of ${b}`, recs: inOrder, batch: b });
  variants.push({ name: 'every event duplicated', recs: inOrder.flatMap((r) => [r, r]), batch: 5 });
  for (const seed of [1, 2, 3, 42, 1234]) variants.push({ name: `interleaving ${seed}`, recs: record([...prefix, ...merge(streams, seed)]), batch: 4 });

  let reference: string | undefined;
  for (const v of variants) {
    const { core, outputs } = runCore(v.recs, v.batch);
    const reader: Reader = new Map();
    applyOutputs(t, reader, outputs);
    for (const cellId of cellsOf(core)) {
      t.equal(canonicalJson(reader.get(cellId)?.state ?? emptyCellState()), canonicalJson(deriveCellState(core.model, cellId)), `${v.name}: reader equals derived state of ${cellId}`);
    }
    const states = statesOf(core);
    reference ??= states;
    t.equal(states, reference, `${v.name}: byte-identical cell states`);
  }
  t.ok(reference!.length > 200, 'the scenario produces real state');
});

t.test('what the cell states hold', async (t) => {
  const { prefix, streams } = scenario();
  const { core } = runCore(record([...prefix, ...merge(streams, null)]), 100);
  const cell1 = core.cellState('cell-1')!;
  // api-0 is on cell-1 (index 1 % 3): it may be reached from queue (udp 9000-9100) and from web on 8443.
  t.same(cell1.ingress['app-api'], {
    'app-queue|udp|9000|9100': { sourceAppId: 'app-queue', protocol: 'udp', startPort: 9000, endPort: 9100 },
    'app-web|tcp|8443|8443': { sourceAppId: 'app-web', protocol: 'tcp', startPort: 8443, endPort: 8443 },
  });
  t.same(Object.keys(cell1.sources['app-web'] ?? {}).sort(), ['10.255.0.3', '10.255.0.4'], 'web-0 stopped; web-1 and web-2 run');
  t.same(cell1.names['api.apps.internal'], { '10.255.1.2': true });
  t.same(cell1.names['0.api.apps.internal'], { '10.255.1.2': true });
  const all = statesOf(core);
  t.notMatch(all, /app-cache/, 'a deleted app leaves no trace in any cell');
  t.match(all, /database\.apps\.internal/, 'renames reach the names');
  t.notMatch(all, /"db\.apps\.internal"/);
  t.notMatch(all, /api-9/, 'a start after its stop never runs');
});

t.test('a change touches only the cells it affects; a no-op emits nothing', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, null)]);
  const core = new PlannerCore(opts());
  core.ingest(recs);
  const next = recs.length + 1;
  const out = core.ingest(record([ev.started('db-7', 'app-db', 'cell-9', '10.255.7.7', 7)], next));
  // db is a destination only (api -> db): its new container changes its own cell, nothing else.
  t.same(out.map((o) => o.cellId), ['cell-9']);
  const out2 = core.ingest(record([ev.started('api-7', 'app-api', 'cell-9', '10.255.7.8', 7)], next + 1));
  // api is a source of api -> db: every cell hosting db (db-1 on cell-0, db-2 on cell-1, db-7 on cell-9) gets the new IP.
  t.same([...new Set(out2.map((o) => o.cellId))].sort(), ['cell-0', 'cell-1', 'cell-9']);
  t.same(core.ingest(record([ev.registered('app-new', 'new')], next + 2)), [], 'registering an app changes no cell');
  t.same(core.ingest(record([ev.created('app-web', 'app-new')], next + 3)), [], 'a policy to an app with no containers changes no cell');
});

t.test('restart from a checkpoint gives exactly the outputs of an uninterrupted run', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 7)]);
  const whole = runCore(recs, 1).outputs;
  for (const cut of [1, 9, 17, recs.length - 2]) {
    const first = new PlannerCore(opts());
    const before = first.ingest(recs.slice(0, cut));
    const cp = JSON.parse(JSON.stringify(first.checkpoint())) as PlannerCheckpoint;
    t.notOk('model' in cp, 'the checkpoint holds no model');
    const resumed = new PlannerCore(opts(), { checkpoint: cp, model: foldEventsInPlace(structuredClone(initialModel()), recs.slice(0, cut)) });
    const after = resumed.ingest(recs); // replays from the start: events at or below the checkpoint are skipped
    t.equal(canonicalJson([...before, ...after]), canonicalJson(whole), `cut after ${cut} events`);
  }
});

t.test('partitions add up to the whole, and a take-over starts with a snapshot', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 3)]);
  const whole = runCore(recs, 5).outputs;
  const left = runCore(recs, 5, (c) => c === 'cell-0' || c === 'cell-2').outputs;
  const right = runCore(recs, 5, (c) => !(c === 'cell-0' || c === 'cell-2')).outputs;
  const byCell = (o: PlannerOutput[]) => canonicalJson([...o].sort((a, b) => (a.cellId < b.cellId ? -1 : a.cellId > b.cellId ? 1 : 0)));
  t.equal(byCell([...left, ...right]), byCell(whole));

  const core = new PlannerCore(opts((c) => c !== 'cell-1'));
  const reader: Reader = new Map();
  applyOutputs(t, reader, core.ingest(recs.slice(0, 20)));
  const taken = core.setOwnership(() => true);
  t.same(taken.map((o) => `${o.kind}:${o.cellId}`), ['snapshot:cell-1', 'delta:cell-1'], 'a snapshot, and a link to it');
  applyOutputs(t, reader, taken.slice(0, 1));
  // An agent that followed the old owner's deltas up to the same events moves onto the new chain by the link alone.
  const oldOwner = new CellReplica('cell-1');
  for (const o of runCore(recs.slice(0, 20), 5).outputs) if (o.cellId === 'cell-1') oldOwner.applyMessage(outputMessage(o).body, o.kind);
  const link = taken[1]!;
  t.ok(link.kind === 'delta' && link.ops.length === 0 && link.prevRevision === 0 && link.revision === taken[0]!.revision);
  const linked = oldOwner.applyMessage(outputMessage(link).body, 'delta'); // stale when its last delta was at the same event
  t.ok(linked === 'applied' || linked === 'stale', `the link applies over the old owner's state (${linked})`);
  t.same([oldOwner.revision, oldOwner.hash], [link.revision, link.hash], 'the agent is on the new chain');
  const behind = new CellReplica('cell-1');
  for (const o of runCore(recs.slice(0, 10), 5).outputs) if (o.cellId === 'cell-1') behind.applyMessage(outputMessage(o).body, o.kind);
  t.equal(behind.applyMessage(outputMessage(link).body, 'delta'), behind.hash === link.hash ? 'applied' : 'gap', 'an agent behind finds a gap');
  applyOutputs(t, reader, core.ingest(recs.slice(20)));
  t.equal(canonicalJson(reader.get('cell-1')!.state), canonicalJson(deriveCellState(core.model, 'cell-1')));
  t.same(core.setOwnership(() => false), []);
  t.same(core.cells(), {}, 'given-up cells are forgotten');
});

t.test("a take-over's link delta moves an agent on the old owner's chain to the new one", async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 3)]);
  const lastChange = (k: number) => Math.max(0, ...runCore(recs.slice(0, k), 5).outputs.filter((o) => o.cellId === 'cell-1').map((o) => o.revision));
  // a point where cell-1's last change lies before the take-over: the link's revision is past the old owner's
  const k = [...Array(recs.length).keys()].find((n) => n >= 15 && lastChange(n) > 0 && lastChange(n) < recs[n - 1]!.seq);
  if (k === undefined) return t.fail('the scenario has no such point');
  const oldOwner = new CellReplica('cell-1');
  for (const o of runCore(recs.slice(0, k), 5).outputs) if (o.cellId === 'cell-1') oldOwner.applyMessage(outputMessage(o).body, o.kind);
  const core = new PlannerCore(opts((c) => c !== 'cell-1'));
  core.ingest(recs.slice(0, k));
  const [snapshot, link] = core.setOwnership(() => true);
  t.ok(link && link.kind === 'delta' && link.revision > oldOwner.revision);
  t.equal(oldOwner.applyMessage(outputMessage(link!).body, 'delta'), 'applied', 'applied over the old state, no snapshot read');
  t.same([oldOwner.revision, oldOwner.hash], [snapshot!.revision, snapshot!.hash]);
  t.equal(canonicalJson(oldOwner.state), canonicalJson(deriveCellState(core.model, 'cell-1')));
});

t.test('a planner whose heartbeat stopped is dropped after deadMs, but not while the bus itself stalls', async (t) => {
  const watch = new HeartbeatWatch('p1', 1000);
  const entries = (beats: Record<string, number>) => new Map(Object.entries(beats).map(([id, at]) => [`m.${id}`, { at }]));
  t.same(watch.live(entries({ p1: 1, p2: 1, p3: 1 }), 0, 0), ['p1', 'p2', 'p3'], 'every member seen for the first time is live');
  t.same(watch.live(entries({ p1: 2, p2: 2, p3: 1 }), 600, 0), ['p1', 'p2', 'p3'], 'p3 silent for 600 ms: still live');
  t.same(watch.live(entries({ p1: 3, p2: 3, p3: 1 }), 1100, 0), ['p1', 'p2'], 'p3 silent for 1,100 ms: dead');
  t.same(watch.live(entries({ p1: 4, p2: 4, p3: 2 }), 1200, 0), ['p1', 'p2', 'p3'], 'p3 beats again: live again');
  // An election: nobody's heartbeat is stored for 5 s, our own included; afterwards p2 and p3 are not dead at once.
  t.same(watch.live(entries({ p1: 5, p2: 4, p3: 2 }), 6200, 6100), ['p1', 'p2', 'p3'], 'silent only while the bus stalled: live');
  t.same(watch.live(entries({ p1: 6, p2: 5, p3: 2 }), 7200, 6100), ['p1', 'p2'], 'p3 still silent 1,100 ms after the bus came back: dead');
  t.same(watch.live(entries({ p1: 7, p2: 5 }), 7300, 6100), ['p1', 'p2'], 'an entry gone (expired or deleted) is not a member');
  t.same(watch.live(entries({ p1: 8, p2: 5, p3: 9 }), 7400, 6100), ['p1', 'p2', 'p3'], 'a member that comes back is live at once');
});
