// Sequence tests of the planner core: the same scenario folded in order, in different batch sizes,
// with every event duplicated, and with independent aggregates interleaved differently must give byte-identical
// cell states; a reader that applies the outputs (one coalesced delta per cell per batch) must end equal to the
// derived states, and every delta must carry the cell's state after the event it is stamped with; restarts from
// checkpoints, with the outputs after them stored only in part, must leave every cell's stored chain unbroken and
// ending at an uninterrupted run's state; partitions must add up to the whole.
import t, { type Test } from 'tap';
import type { DomainEvent, RecordedEvent } from '../events/catalogue.ts';
import { type CellOp, applyCellOps, cellHashOf, deriveCellState, emptyCellState } from '../projections/cell.ts';
import { CellReplica, type CellDelta, type CellSnapshot, EMPTY_CELL_HASH, type PlannerOutput, outputMessage } from '../projections/cell-stream.ts';
import { canonicalJson } from '../projections/canonical.ts';
import { PlannerCore, type PlannerCheckpoint } from '../services/topology-planner/core.ts';
import { isAlreadyPlanned } from '../services/topology-planner/published.ts';
import { HeartbeatWatch } from '../services/topology-planner/membership.ts';
import { plannerProgress } from '../services/topology-planner/enforcement.ts';
import { ev, record } from './harness/events.ts';
import { chainProblems } from './harness/chains.ts';
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

/**
 * A random but plausible history over a few apps and cells: apps registered, renamed and deleted, containers started
 * and stopped, policies created and deleted (ports from a small set, so the same rule comes and goes), cells
 * registered and decommissioned; a change is often undone by the very next event.
 */
function randomHistory(seed: number, length: number): DomainEvent[] {
  const rnd = mulberry32(seed);
  const pick = <T>(xs: readonly T[]): T | undefined => xs[Math.floor(rnd() * xs.length)];
  const cells = ['cell-1', 'cell-2', 'cell-3', 'cell-4'];
  const unregistered = ['app-a', 'app-b', 'app-c', 'app-d', 'app-e', 'app-f'];
  const live = new Map<string, string>(); // app -> name
  const running = new Map<string, { app: string; cell: string }>();
  const instances = new Map<string, number>();
  let nextContainer = 0;
  let nextName = 0;
  const out: DomainEvent[] = [];
  const undo = (e: DomainEvent) => rnd() < 0.25 && out.push(e);
  while (out.length < length) {
    const r = rnd();
    const app = pick([...live.keys()]);
    if (r < 0.1 || !app) {
      const fresh = unregistered.shift();
      if (!fresh && !app) break; // every app deleted: the history ends here
      if (!fresh) continue;
      live.set(fresh, fresh.slice(4));
      out.push(ev.registered(fresh, fresh.slice(4)));
    } else if (r < 0.4) {
      const cell = pick(cells)!;
      const id = `c-${nextContainer}`;
      const index = instances.get(app) ?? 0;
      instances.set(app, index + 1);
      out.push(ev.started(id, app, cell, `10.255.${cell.slice(5)}.${10 + nextContainer++}`, index));
      running.set(id, { app, cell });
      if (undo(ev.stopped(id, app, cell))) running.delete(id);
    } else if (r < 0.58) {
      const id = pick([...running.keys()]);
      if (!id) continue;
      const c = running.get(id)!;
      running.delete(id);
      out.push(ev.stopped(id, c.app, c.cell));
    } else if (r < 0.75) {
      const dest = pick([...live.keys()])!;
      const port = pick([80, 443, 8080])!;
      out.push(ev.created(app, dest, port));
      undo(ev.removed(app, dest, port));
    } else if (r < 0.85) {
      out.push(ev.removed(app, pick([...live.keys()])!, pick([80, 443, 8080])!));
    } else if (r < 0.9) {
      const name = `n${nextName++}`;
      out.push(ev.renamed(app, name, live.get(app)!));
      live.set(app, name);
    } else if (r < 0.93) {
      for (const [id, c] of running) if (c.app === app) (running.delete(id), out.push(ev.stopped(id, c.app, c.cell)));
      out.push(ev.deleted(app));
      live.delete(app);
    } else if (r < 0.97) {
      const cell = pick(cells)!;
      // Half the registrations give an underlay address: those cells enter every registered cell's topology.
      out.push(ev.cell(cell, undefined, rnd() < 0.5 ? `192.0.2.${cells.indexOf(cell) + 1}` : null));
    } else {
      const cell = pick(cells)!;
      out.push(ev.decommissioned(cell));
      undo(ev.cell(cell));
    }
  }
  return out.slice(0, length);
}

/** Batch sizes 1..max, at random. */
function randomBatches(recs: readonly RecordedEvent[], seed: number, max: number): RecordedEvent[][] {
  const rnd = mulberry32(seed);
  const out: RecordedEvent[][] = [];
  for (let i = 0; i < recs.length;) {
    const n = 1 + Math.floor(rnd() * max);
    out.push(recs.slice(i, i + n));
    i += n;
  }
  return out;
}

/** Per cell, its hash after every event (one event per batch: the per-event reference). */
function hashesPerEvent(recs: readonly RecordedEvent[]): Map<string, Map<number, string>> {
  const core = new PlannerCore(opts());
  const out = new Map<string, Map<number, string>>();
  for (const rec of recs) {
    core.ingest([rec]);
    for (const [cellId, c] of Object.entries(core.cells())) {
      const m = out.get(cellId) ?? out.set(cellId, new Map()).get(cellId)!;
      m.set(rec.seq, c.hash);
    }
  }
  return out;
}

/** One replica per cell: the readers' own code (projections/cell-stream.ts). */
type Reader = Map<string, CellReplica>;

/** Sends outputs over the wire format to the real replica, as an agent gets them; fails on a gap, mismatch or invalid message. */
function applyOutputs(t: Test, reader: Reader, outputs: PlannerOutput[]): void {
  for (const o of outputs) {
    const r = reader.get(o.cellId) ?? reader.set(o.cellId, new CellReplica(o.cellId)).get(o.cellId)!;
    const result = r.applyMessage(outputMessage(o).body, o.kind);
    if (result !== 'applied' && !(result === 'stale' && o.kind === 'snapshot'))
      t.fail(`${o.kind} of ${o.cellId} at ${o.revision}: ${result} (held ${r.revision})`);
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
      t.equal(
        canonicalJson(reader.get(cellId)?.state ?? emptyCellState()),
        canonicalJson(deriveCellState(core.model, cellId)),
        `${v.name}: reader equals derived state of ${cellId}`,
      );
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
  t.same(
    out.map((o) => o.cellId),
    ['cell-9'],
  );
  const out2 = core.ingest(record([ev.started('api-7', 'app-api', 'cell-9', '10.255.7.8', 7)], next + 1));
  // api is a source of api -> db: every cell hosting db (db-1 on cell-0, db-2 on cell-1, db-7 on cell-9) gets the new IP.
  t.same([...new Set(out2.map((o) => o.cellId))].sort(), ['cell-0', 'cell-1', 'cell-9']);
  t.same(core.ingest(record([ev.registered('app-new', 'new')], next + 2)), [], 'registering an app changes no cell');
  t.same(core.ingest(record([ev.created('app-web', 'app-new')], next + 3)), [], 'a policy to an app with no containers changes no cell');
});

t.test('a reader applies net operations: a delete of an entry it lacks, a set to the value it has, change nothing', async (t) => {
  const state = emptyCellState();
  const c = { appId: 'app-a', appName: 'a', instanceIndex: 0, ip: '10.255.1.2' };
  let hash = applyCellOps(state, EMPTY_CELL_HASH, [{ path: ['containers', 'c-0'], value: c }]);
  const held = hash;
  const netOps: CellOp[] = [
    { path: ['containers', 'c-9'] }, // never had it
    { path: ['containers', 'c-0'], value: structuredClone(c) }, // the value it already has
    { path: ['names', 'a.apps.internal'] },
  ];
  hash = applyCellOps(state, hash, netOps);
  t.equal(hash, held, 'the hash is unchanged');
  t.equal(cellHashOf(state), hash, 'and is the hash of the state');
  t.same(state.containers, { 'c-0': c });
});

t.test('coalesced deltas, random histories and random batches: each is the state after its revision; readers end at the planner', async (t) => {
  for (let seed = 1; seed <= 40; seed++) {
    const recs = record(randomHistory(seed, 150));
    const perEvent = hashesPerEvent(recs);
    const max = [1, 4, 16, 64, 200][seed % 5]!;
    const core = new PlannerCore(opts());
    const reader: Reader = new Map();
    let deltas = 0;
    let failed = 0;
    for (const batch of randomBatches(recs, seed * 7, max)) {
      const outputs = core.ingest(batch);
      const perCell = new Map<string, number>();
      for (const o of outputs) {
        if (o.kind !== 'delta') continue;
        deltas++;
        perCell.set(o.cellId, (perCell.get(o.cellId) ?? 0) + 1);
        const last = batch[batch.length - 1]!.seq;
        if (o.revision < batch[0]!.seq || o.revision > last) failed += +!t.fail(`seed ${seed}: ${o.cellId} at ${o.revision} outside its batch`);
        if (perEvent.get(o.cellId)?.get(o.revision) !== o.hash)
          failed += +!t.fail(`seed ${seed}: ${o.cellId} at ${o.revision}: not the state after that event`);
        if (new Set(o.ops.map((op) => op.path.join('\u0000'))).size !== o.ops.length) failed += +!t.fail(`seed ${seed}: an entry twice in one delta`);
        // Net: every operation changes what a reader at prevRevision holds.
        const held = reader.get(o.cellId)?.state ?? emptyCellState();
        for (const op of o.ops) {
          const had = (held[op.path[0]] as Record<string, unknown>)[op.path[1]];
          if (op.value === undefined ? had === undefined : canonicalJson(had ?? null) === canonicalJson(op.value))
            failed += +!t.fail(`seed ${seed}: a no-op in ${o.revision}`);
        }
      }
      if ([...perCell.values()].some((n) => n > 1)) failed += +!t.fail(`seed ${seed}: a cell got two deltas from one batch`);
      applyOutputs(t, reader, outputs);
    }
    for (const [cellId, view] of Object.entries(core.cells())) {
      const r = reader.get(cellId);
      const state = core.cellState(cellId)!;
      t.equal(r?.hash ?? EMPTY_CELL_HASH, view.hash, `seed ${seed}: ${cellId}: the reader's hash is the planner's`);
      t.equal(canonicalJson(r?.state ?? emptyCellState()), canonicalJson(state), `seed ${seed}: ${cellId}: and its state`);
      t.equal(cellHashOf(state), view.hash, `seed ${seed}: ${cellId}: cellHashOf(state) is the hash`);
      t.equal(canonicalJson(state), canonicalJson(deriveCellState(core.model, cellId)), `seed ${seed}: ${cellId}: the derived state`);
    }
    t.equal(failed, 0, `seed ${seed}: ${deltas} deltas from ${recs.length} events in batches of up to ${max}`);
  }
});

t.test('a batch coalesces: one delta per cell, an entry changed and changed back is no operation, a net no-op is no delta', async (t) => {
  const recs = record([
    ev.cell('cell-1'),
    ev.registered('app-a', 'a'),
    ev.registered('app-b', 'b'),
    ev.started('a-0', 'app-a', 'cell-1', '10.255.1.2', 0),
    ev.started('b-0', 'app-b', 'cell-1', '10.255.1.3', 0),
    ev.created('app-b', 'app-a', 80),
    ev.removed('app-b', 'app-a', 80),
    ev.started('a-1', 'app-a', 'cell-1', '10.255.1.4', 1),
    ev.stopped('a-1', 'app-a', 'cell-1'),
  ]);
  const core = new PlannerCore(opts());
  const first = core.ingest(recs.slice(0, 5));
  t.same(
    first.map((o) => [o.kind, o.revision]),
    [['delta', 5]],
    'five events, one delta',
  );
  t.equal(first[0]!.kind === 'delta' && first[0]!.at, recs[4]!.event.at, 'stamped with the time of the last event that changed the cell');
  t.same(core.ingest(recs.slice(5)), [], 'a policy created and deleted, a container started and stopped: nothing');
  t.equal(core.cells()['cell-1']!.revision, 5, 'the revision stays');
  const later = core.ingest(record([ev.created('app-b', 'app-a', 80), ev.registered('app-c', 'c')], recs.length + 1));
  t.match(later, [{ kind: 'delta', cellId: 'cell-1', revision: recs.length + 1, prevRevision: 5 }]);
});

/** What the cell streams hold, per cell, in the order stored; a publish is suppressed exactly as the service does. */
class Store {
  readonly deltas = new Map<string, CellDelta[]>();
  readonly snapshots = new Map<string, CellSnapshot[]>();
  /** Per cell the revision of its last stored delta or snapshot (latestPlannedPerCell). */
  heads(): Map<string, number> {
    const heads = new Map<string, number>();
    for (const [cell, list] of [...this.deltas, ...this.snapshots]) heads.set(cell, Math.max(heads.get(cell) ?? 0, list[list.length - 1]!.revision));
    return heads;
  }
  publish(outputs: readonly PlannerOutput[], heads: ReadonlyMap<string, number>): void {
    for (const o of outputs) {
      if (isAlreadyPlanned(o, heads.get(o.cellId))) continue;
      const { kind: _kind, ...body } = o;
      const into = o.kind === 'delta' ? this.deltas : this.snapshots;
      const list = into.get(o.cellId) ?? into.set(o.cellId, []).get(o.cellId)!;
      (list as unknown[]).push(JSON.parse(JSON.stringify(body)));
    }
  }
}

/** Every cell's stored chain, checked as readers use it (test/harness/chains.ts), against an uninterrupted run. */
function checkChains(t: Test, store: Store, expected: Record<string, { hash: string }>, what: string): number {
  let problems = 0;
  for (const [cellId, { hash }] of Object.entries(expected)) {
    for (const p of chainProblems(cellId, store.deltas.get(cellId) ?? [], store.snapshots.get(cellId) ?? [], hash)) problems += +!t.fail(`${what}: ${p}`);
  }
  return problems;
}

t.test(
  'restarts from checkpoints with outputs lost after them, ownership changing: every stored chain unbroken, the states of an uninterrupted run',
  async (t) => {
    const { prefix, streams } = scenario();
    const histories = [record([...prefix, ...merge(streams, 7)]), ...[11, 12, 13, 14, 15, 16].map((seed) => record(randomHistory(seed, 160)))];
    let restarts = 0;
    for (const [h, recs] of histories.entries()) {
      const whole = new PlannerCore(opts());
      for (const b of randomBatches(recs, h, 50)) whole.ingest(b);
      const expected = whole.cells();
      for (let trial = 0; trial < 12; trial++) {
        const rnd = mulberry32(1000 * h + trial);
        const store = new Store();
        let checkpoint: PlannerCheckpoint | undefined;
        // Up to three runs killed at random, then one that reaches the end of the log.
        for (let run = 0; ; run++) {
          const last = run === 3 || rnd() < 0.25;
          const heads = store.heads();
          const model = foldEventsInPlace(structuredClone(initialModel()), recs.slice(0, checkpoint?.seq ?? 0));
          // Runs before the last own a random part of the cells, which changes now and then between batches (members
          // joining and leaving); the last one owns every cell, so every chain reaches the end of the log.
          const owned = new Map<string, boolean>();
          const owns = (c: string) => last || (owned.get(c) ?? owned.set(c, rnd() < 0.7).get(c)!);
          const core = checkpoint
            ? new PlannerCore(opts(owns), { checkpoint: JSON.parse(JSON.stringify(checkpoint)), model }, heads)
            : new PlannerCore(opts(owns), undefined, heads);
          const outputs: PlannerOutput[] = [...core.setOwnership(owns)]; // the service's reconcile at start
          const checkpoints: { at: number; cp: PlannerCheckpoint }[] = [];
          for (const b of randomBatches(recs.slice(core.seq), rnd() * 1e9, 1 + Math.floor(rnd() * 40))) {
            if (!last && rnd() < 0.1) {
              owned.clear();
              outputs.push(...core.setOwnership(owns));
            }
            outputs.push(...core.ingest(b));
            checkpoints.push({ at: outputs.length, cp: core.checkpoint() });
          }
          if (last) {
            store.publish(outputs, heads);
            break;
          }
          // Killed: a prefix of its outputs is stored, and any checkpoint written covers only stored outputs.
          const kill = Math.floor(rnd() * (outputs.length + 1));
          store.publish(outputs.slice(0, kill), heads);
          const written = checkpoints.filter((c) => c.at <= kill);
          if (written.length > 0 && rnd() < 0.85) checkpoint = written[Math.floor(rnd() * written.length)]!.cp;
          restarts++;
        }
        t.equal(checkChains(t, store, expected, `history ${h}, trial ${trial}`), 0, `history ${h}, trial ${trial}: every chain unbroken`);
      }
    }
    t.ok(restarts > 100, `${restarts} restarts`);
  },
);

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
  t.same(
    taken.map((o) => `${o.kind}:${o.cellId}`),
    ['snapshot:cell-1', 'delta:cell-1'],
    'a snapshot, and a link to it',
  );
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
  t.same(
    core.setOwnership(() => false),
    [],
  );
  t.same(core.cells(), {}, 'given-up cells are forgotten');
});

t.test("a take-over's link delta moves an agent on the old owner's chain to the new one", async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 3)]);
  const lastChange = (k: number) =>
    Math.max(
      0,
      ...runCore(recs.slice(0, k), 5)
        .outputs.filter((o) => o.cellId === 'cell-1')
        .map((o) => o.revision),
    );
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
  // An election longer than the bucket's TTL: every entry expired; ours is stored first.
  t.same(watch.live(entries({ p1: 9 }), 14_000, 13_900), ['p1', 'p2', 'p3'], 'the others, gone only while the bus stalled, are still members');
  t.same(watch.live(entries({ p1: 10, p2: 6 }), 14_300, 13_900), ['p1', 'p2', 'p3'], 'p2 beats again; p3 not yet, still within deadMs');
  t.same(watch.live(entries({ p1: 11, p2: 7 }), 15_000, 13_900), ['p1', 'p2'], 'p3 gone 1,100 ms after the bus came back: dead');
  t.same(watch.live(entries({ p1: 12, p2: 8 }), 15_100, 13_900), ['p1', 'p2'], 'and stays gone');
  t.same(watch.live(entries({ p1: 13 }), 15_200, 13_900, new Set(['m.p2'])), ['p1'], 'a deleted entry (a clean stop): gone at once');
});

t.test('the enforcement answer stops waiting for a dead planner only once the live ones have taken its cells over', async (t) => {
  type Entry = { value: unknown; time: number };
  const entries = (planners: Record<string, { beat: number; through?: number; members?: string[] }>) => {
    const m = new Map<string, Entry>();
    for (const [id, p] of Object.entries(planners)) {
      m.set(`m.${id}`, { value: { at: 0 }, time: p.beat });
      if (p.through !== undefined) m.set(`p.${id}`, { value: { publishedThrough: p.through, ...(p.members && { members: p.members }) }, time: p.beat });
    }
    return m;
  };
  const both = ['p1', 'p2'];
  t.same(
    plannerProgress(entries({ p1: { beat: 10_000, through: 40, members: both }, p2: { beat: 10_100, through: 50, members: both } }), 50, 1200),
    { members: both, plannersBehind: ['p1'], plannersStopped: [] },
    'both beating: the one behind is waited for',
  );
  t.same(
    plannerProgress(entries({ p1: { beat: 8_000, through: 40, members: both }, p2: { beat: 10_000, through: 50, members: both } }), 50, 1200),
    { members: both, plannersBehind: ['p1'], plannersStopped: [] },
    'p1 silent for 2 s, but p2 has not said it took its cells over: still waited for',
  );
  t.same(
    plannerProgress(entries({ p1: { beat: 8_000, through: 40, members: both }, p2: { beat: 10_000, through: 50, members: ['p2'] } }), 50, 1200),
    { members: both, plannersBehind: [], plannersStopped: ['p1'] },
    'p2 published through 50 under members without p1: p1 is not waited for',
  );
  t.same(
    plannerProgress(entries({ p1: { beat: 8_000, through: 40, members: both }, p2: { beat: 10_000, through: 45, members: ['p2'] } }), 50, 1200),
    { members: both, plannersBehind: ['p2'], plannersStopped: ['p1'] },
    'the live planner itself behind: waited for',
  );
  t.same(
    plannerProgress(entries({ p1: { beat: 9_000, through: 40, members: both }, p2: { beat: 10_000, through: 50, members: ['p2'] } }), 50, 1200),
    { members: both, plannersBehind: ['p1', 'p2'], plannersStopped: [] },
    'p1 silent for less than deadMs: live, waited for; and p2, which published under members without it, too',
  );
  t.same(
    plannerProgress(
      entries({
        p1: { beat: 10_000, through: 50, members: both },
        p2: { beat: 10_000, through: 50, members: both },
        p3: { beat: 10_000, through: 50, members: [] },
      }),
      50,
      1200,
    ),
    { members: ['p1', 'p2', 'p3'], plannersBehind: ['p1', 'p2', 'p3'], plannersStopped: [] },
    'p3 joined: nobody has published under the new members yet (p3 has not taken its cells over, p1 and p2 not let them go)',
  );
  const three = ['p1', 'p2', 'p3'];
  t.same(
    plannerProgress(
      entries({
        p1: { beat: 10_000, through: 50, members: three },
        p2: { beat: 10_000, through: 50, members: three },
        p3: { beat: 10_000, through: 50, members: three },
      }),
      50,
      1200,
    ),
    { members: three, plannersBehind: [], plannersStopped: [] },
    'every one published through 50 under the three: none behind',
  );
  t.same(
    plannerProgress(entries({ p1: { beat: 8_000, through: 40 }, p2: { beat: 10_000, through: 50 } }), 50, 1200),
    { members: both, plannersBehind: ['p1'], plannersStopped: [] },
    'a planner that does not say under which members it published covers nobody',
  );
  t.same(
    plannerProgress(entries({ p1: { beat: 8_000, through: 40, members: ['p1'] } }), 50, 1200),
    { members: ['p1'], plannersBehind: ['p1'], plannersStopped: [] },
    'the only planner is never stopped (nobody beats newer)',
  );
});

t.test('folding first, owning nothing, then taking every cell over: the same states as ingesting', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 5)]);
  const { core: reference } = runCore(recs, 7);
  const folded = new PlannerCore(opts(() => false));
  for (let i = 0; i < recs.length; i += 7) folded.fastForward(recs.slice(i, i + 7));
  folded.fastForward(recs.slice(0, 10)); // a batch already folded changes nothing
  t.same(folded.cells(), {}, 'nothing derived while owning nothing');
  const outputs = folded.setOwnership(() => true);
  t.same(cellsOf(folded), cellsOf(reference), 'every cell an event named is taken over');
  t.equal(statesOf(folded), statesOf(reference), 'the states taken over equal the ingested ones');
  for (const cellId of cellsOf(folded)) {
    const snap = outputs.find((o) => o.kind === 'snapshot' && o.cellId === cellId);
    t.equal(snap?.revision, recs.at(-1)!.seq, `${cellId}: a snapshot at the sequence folded to`);
  }
});

t.test('fast-forward then settle: one delta per changed cell that readers apply on their chains, the same states', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 9)]);
  const { core: reference } = runCore(recs, 5);
  const third = Math.floor(recs.length / 3);
  const core = new PlannerCore(opts());
  const reader: Reader = new Map();
  applyOutputs(t, reader, core.ingest(recs.slice(0, third)));
  t.notOk(core.stale, 'not stale after ingesting');
  core.fastForward(recs.slice(third, 2 * third));
  t.ok(core.stale, 'stale after a fast-forward over owned cells');
  t.throws(() => core.checkpoint(), /settles/, 'no checkpoint while stale');
  const settled = core.settle();
  t.ok(settled.length > 0, `settled: ${settled.length} outputs`);
  const perCell = new Map<string, number>();
  for (const o of settled.filter((o) => o.kind === 'delta')) perCell.set(o.cellId, (perCell.get(o.cellId) ?? 0) + 1);
  t.ok(
    [...perCell.values()].every((n) => n === 1),
    'one delta per changed cell',
  );
  t.ok(
    settled.every((o) => o.kind === 'snapshot' || o.revision === recs[2 * third - 1]!.seq),
    'stamped with the last event folded',
  );
  applyOutputs(t, reader, settled);
  t.same(core.settle(), [], 'settling again changes nothing');
  core.fastForward(recs.slice(2 * third, 2 * third + 3));
  applyOutputs(t, reader, core.ingest(recs.slice(2 * third + 3))); // ingest settles first
  t.equal(statesOf(core), statesOf(reference), 'the same states as ingesting everything');
  for (const cellId of cellsOf(core)) t.equal(reader.get(cellId)?.hash, core.cells()[cellId]!.hash, `${cellId}: the reader followed to the hash`);
});

t.test('a fast-forward past a stored head takes that cell over (snapshot and link delta) when it settles', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 3)]);
  const half = Math.floor(recs.length / 2);
  const first = new PlannerCore(opts());
  first.ingest(recs.slice(0, half));
  const checkpoint = first.checkpoint();
  const model = foldEventsInPlace(structuredClone(initialModel()), recs.slice(0, half));
  const cellId = cellsOf(first)[0]!;
  const heads = new Map([[cellId, half + 2]]); // an earlier run stored this cell's chain past the checkpoint
  const core = new PlannerCore(opts(), { checkpoint, model }, heads);
  core.fastForward(recs.slice(half));
  const outs = core.settle();
  const mine = outs.filter((o) => o.cellId === cellId);
  t.same(
    mine.map((o) => [o.kind, o.revision, o.kind === 'delta' ? o.prevRevision : null]),
    [
      ['snapshot', recs.at(-1)!.seq, null],
      ['delta', recs.at(-1)!.seq, 0],
    ],
    'the cell whose head was passed: a take-over at the last event',
  );
});

t.test('a settle spread over calls (limit) ends as one whole settle does; a fast-forward in the middle begins it again', async (t) => {
  const { prefix, streams } = scenario();
  const recs = record([...prefix, ...merge(streams, 11)]);
  const half = Math.floor(recs.length / 2);
  const make = () => {
    const core = new PlannerCore(opts());
    core.ingest(recs.slice(0, half));
    core.fastForward(recs.slice(half, recs.length - 5));
    return core;
  };
  const whole = make();
  const once = whole.settle();
  const spread = make();
  const parts: typeof once = [];
  let calls = 0;
  while (spread.stale) {
    parts.push(...spread.settle(1));
    calls += 1;
  }
  t.ok(calls > 1, `settled one cell per call (${calls} calls)`);
  t.equal(JSON.stringify(parts), JSON.stringify(once), 'the same outputs, in the same order');
  const interrupted = make();
  const reader: Reader = new Map();
  applyOutputs(t, reader, new PlannerCore(opts()).ingest(recs.slice(0, half)));
  applyOutputs(t, reader, interrupted.settle(1));
  t.ok(interrupted.stale, 'stale until the last cell');
  interrupted.fastForward(recs.slice(recs.length - 5));
  const rest: typeof once = [];
  while (interrupted.stale) rest.push(...interrupted.settle(2));
  applyOutputs(t, reader, rest);
  const { core: reference } = runCore(recs, 5);
  t.equal(statesOf(interrupted), statesOf(reference), 'the states of the whole log');
  for (const cellId of cellsOf(interrupted)) t.equal(reader.get(cellId)?.hash, interrupted.cells()[cellId]!.hash, `${cellId}: followed`);
});
