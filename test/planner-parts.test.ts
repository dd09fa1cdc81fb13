// The planner's parts that need no NATS: the output pump's ordering rules and the checkpoint rule.
import t from 'tap';
import type { CellDelta, PlannerOutput } from '../projections/cell-stream.ts';
import type { CellOp } from '../projections/cell.ts';
import { CELL_DELTAS_STREAM, EMPTY_CELL_HASH, cellSubject, outputMessage, revisionOf } from '../projections/cell-stream.ts';
import { emptyCellState } from '../projections/cell.ts';
import { OutputPublisher } from '../services/topology-planner/output-publisher.ts';
import { lastStoredOn, latestPlanned, publishedHeads } from '../services/topology-planner/published.ts';
import { startNats } from './harness/nats.ts';
import { OutputPump } from '../services/topology-planner/output-pump.ts';
import { Checkpointer } from '../services/topology-planner/checkpointer.ts';
import { silentLogger } from '../runtime/logger.ts';

const delta = (cellId: string, revision: number): PlannerOutput => ({
  kind: 'delta',
  cellId,
  revision,
  prevRevision: revision - 1,
  ops: [],
  hash: EMPTY_CELL_HASH,
  at: new Date(0).toISOString(),
});

/** Lets every settled promise run its continuations (no timer involved). */
const settle = async () => {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
};

/** A publish whose acknowledgements the test gives, one output at a time. */
function controlledPublish() {
  const pending = new Map<string, { resolve: () => void; reject: (e: Error) => void }>();
  const started: string[] = [];
  return {
    started,
    publish: (o: PlannerOutput) =>
      new Promise<void>((resolve, reject) => {
        const id = `${o.cellId}@${o.revision}`;
        started.push(id);
        pending.set(id, { resolve, reject });
      }),
    ack: (id: string) => pending.get(id)!.resolve(),
    fail: (id: string) => pending.get(id)!.reject(new Error('refused')),
  };
}

t.test('a mark advances only once every output queued before it is acknowledged, in order', async (t) => {
  const p = controlledPublish();
  const seen: number[] = [];
  const pump = new OutputPump({
    publish: p.publish,
    writeCheckpoint: async () => undefined,
    window: 8,
    from: 4,
    onPublishedThrough: (s) => seen.push(s),
    log: silentLogger(),
  });
  pump.enqueue([{ output: delta('a', 5) }, { output: delta('b', 5) }, { through: 5 }, { output: delta('a', 6) }, { through: 6 }]);
  await settle();
  t.same(p.started, ['a@5', 'b@5', 'a@6'], 'marks never hold publishing back');
  p.ack('b@5');
  p.ack('a@6');
  await settle();
  t.equal(pump.publishedThrough.value, 4, 'a@5 is not acknowledged: nothing is published through 5, nor 6');
  p.ack('a@5');
  await pump.publishedThrough.until((v) => v >= 6, 1000, 'through 6');
  t.same(seen, [5, 6], 'each mark in order, announced');
  await pump.stop();
});

t.test('at most `window` outputs in flight; a failed publish is logged and does not stop the pump', async (t) => {
  const p = controlledPublish();
  const pump = new OutputPump({ publish: p.publish, writeCheckpoint: async () => undefined, window: 2, from: 0, log: silentLogger() });
  pump.enqueue([1, 2, 3, 4].map((r) => ({ output: delta('c', r) })).concat([{ through: 4 } as never]));
  await settle();
  t.same(p.started, ['c@1', 'c@2'], 'two in flight');
  p.fail('c@1');
  await settle();
  t.same(p.started, ['c@1', 'c@2', 'c@3'], 'one settled, one more started');
  t.equal(pump.stats.failed, 1);
  for (const id of ['c@2', 'c@3']) p.ack(id);
  await settle();
  p.ack('c@4');
  await pump.publishedThrough.until((v) => v >= 4, 1000, 'through 4');
  await pump.stop();
});

t.test('a checkpoint is written only after every output before it is acknowledged', async (t) => {
  const p = controlledPublish();
  const written: number[] = [];
  const pump = new OutputPump({ publish: p.publish, writeCheckpoint: async (seq) => void written.push(seq), window: 8, from: 0, log: silentLogger() });
  pump.enqueue([{ output: delta('a', 1) }, { through: 1 }, { checkpoint: { seq: 1, json: '{}' } }, { output: delta('a', 2) }]);
  await settle();
  t.same(written, [], 'a@1 is not acknowledged yet');
  t.same(p.started, ['a@1'], 'and nothing after the checkpoint starts before it is written');
  p.ack('a@1');
  await settle();
  t.same(written, [1]);
  t.same(p.started, ['a@1', 'a@2']);
  p.ack('a@2');
  await pump.stop();
  t.equal(pump.stats.checkpoints, 1);
});

t.test('backpressure: drained() holds the follower back while the queue is long', async (t) => {
  const p = controlledPublish();
  const pump = new OutputPump({ publish: p.publish, writeCheckpoint: async () => undefined, window: 1, from: 0, log: silentLogger(), highWater: 10 });
  t.equal(pump.drained(), undefined, 'an empty queue holds nothing back');
  pump.enqueue(Array.from({ length: 20 }, (_, i) => ({ output: delta('d', i + 1) })));
  await settle();
  const wait = pump.drained();
  t.ok(wait, 'a long queue holds the follower back');
  let released = false;
  void wait!.then(() => (released = true));
  for (let r = 1; r <= 8; r++) {
    p.ack(`d@${r}`);
    await settle();
  }
  t.equal(released, false, `still ${pump.queued} queued: not below half the high-water mark`);
  for (let r = 9; r <= 20; r++) {
    p.ack(`d@${r}`);
    await settle();
  }
  t.equal(released, true, 'released once the queue is below half');
  await pump.stop();
});

t.test('a long queue is published in order across the compaction of the taken items', async (t) => {
  const published: number[] = [];
  const pump = new OutputPump({
    publish: async (o) => void published.push(o.revision),
    writeCheckpoint: async () => undefined,
    window: 64,
    from: 0,
    log: silentLogger(),
  });
  for (let chunk = 0; chunk < 5; chunk++) pump.enqueue(Array.from({ length: 3000 }, (_, i) => ({ output: delta('q', chunk * 3000 + i + 1) })));
  pump.enqueue([{ through: 15_000 }]);
  await pump.publishedThrough.until((v) => v >= 15_000, 10_000, 'through 15,000');
  t.equal(published.length, 15_000, 'each output once');
  t.ok(
    published.every((r, i) => r === i + 1),
    'in the order queued',
  );
  t.equal(pump.queued, 0);
  await pump.stop();
});

t.test("a delta's body is JSON.stringify's, byte for byte, also when values are shared and written again", (t) => {
  const shared = Object.assign(Object.create(null), { '10.255.0.2': true, '10.255.0.3': true });
  const withOps = (cellId: string, revision: number, ops: CellOp[]): PlannerOutput => ({
    ...(delta(cellId, revision) as CellDelta & { kind: 'delta'; at: string }),
    ops,
  });
  const outputs: PlannerOutput[] = [
    withOps('cell-1', 7, [{ path: ['sources', 'app-1'], value: shared }, { path: ['names', 'x"y\\z.apps.internal'] }]),
    withOps('cell-2', 9, [
      { path: ['sources', 'app-1'], value: shared },
      { path: ['cell', 'k'], value: null },
      { path: ['tags', 't'], value: 5 },
    ]),
    withOps('cell-3', 2, [{ path: ['containers', 'c\u2028'], value: { ip: '10.255.0.9', appId: 'é' } }]),
    withOps('cell-4', 3, []),
  ];
  const { at: _, ...noAt } = delta('cell-5', 4) as PlannerOutput & { at?: string };
  outputs.push(noAt as PlannerOutput);
  for (const o of [...outputs, ...outputs]) {
    const { kind: _k, ...body } = o;
    t.equal(outputMessage(o).body, JSON.stringify(body), `${o.cellId}@${o.revision}`);
  }
  t.end();
});

t.test('a checkpoint is due when something new was folded and the interval passed (or forced)', async (t) => {
  let now = 1000;
  const core = { seq: 10, stale: false, checkpoint: () => ({ v: 2 as const, seq: core.seq, cells: {} }) };
  const c = new Checkpointer(core, 5000, () => now);
  t.same(c.due(), [], 'nothing new folded');
  core.seq = 12;
  t.same(c.due(), [], 'within the interval');
  now += 5000;
  t.same(c.due(), [{ checkpoint: { seq: 12, json: JSON.stringify({ v: 2, seq: 12, cells: {} }) } }]);
  t.same(c.due(), [], 'just written');
  core.seq = 13;
  t.same(c.due(true), [{ checkpoint: { seq: 13, json: JSON.stringify({ v: 2, seq: 13, cells: {} }) } }], 'forced at stop');
  t.same(c.due(true), [], 'forced, but nothing new');
  core.seq = 20;
  core.stale = true;
  now += 5000;
  t.same(c.due(true), [], 'never while fast-forwarded: its cells are behind the sequence');
  core.stale = false;
  t.same(c.due(true), [{ checkpoint: { seq: 20, json: JSON.stringify({ v: 2, seq: 20, cells: {} }) } }], 'once settled');
});

t.test('fenced outputs: two planners writing one cell never leave an older plan as the last message', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('fence');
  const log = silentLogger();
  const delta = (revision: number, prevRevision: number): PlannerOutput => ({
    kind: 'delta',
    cellId: 'cell-x',
    revision,
    prevRevision,
    ops: [],
    hash: EMPTY_CELL_HASH,
    at: '2026-11-29T00:00:00.000Z',
  });
  const snapshot = (revision: number): PlannerOutput => ({ kind: 'snapshot', cellId: 'cell-x', revision, hash: EMPTY_CELL_HASH, state: emptyCellState() });
  const stored = async () => {
    const out: number[] = [];
    for (const m of await readAll(bus, CELL_DELTAS_STREAM)) out.push(revisionOf(m)?.revision ?? -1); // -1: not a delta
    return out;
  };
  const readAll = async (b: typeof bus, stream: string) => {
    const info = await b.jsm.streams.info(stream);
    const msgs = [];
    for (let seq = info.state.first_seq; seq <= info.state.last_seq; seq++) {
      const m = await b.jsm.streams.getMessage(stream, { seq }).catch(() => null);
      if (m) msgs.push(m.data);
    }
    return msgs;
  };
  const start = await publishedHeads(bus);
  const p1 = new OutputPublisher(bus, start.heads, start.lastSeq, log);
  // the old owner stores its chain up to 165
  t.equal(await p1.publish(delta(160, 0)), 'sent');
  t.equal(await p1.publish(delta(165, 160)), 'sent');
  // a second planner takes the cell over (the first one was cut off): snapshot and link at 221
  const mid = await publishedHeads(bus);
  t.same([...mid.heads], [['cell-x', 165]], 'heads: the last delta');
  const p2 = new OutputPublisher(bus, mid.heads, mid.lastSeq, log);
  t.equal(await p2.publish(snapshot(221)), 'sent');
  t.equal(await p2.publish(delta(221, 0)), 'sent');
  // the old owner goes on with what it had folded: older than what is stored, so dropped, up to where it passes 221
  t.equal(await p1.publish(delta(166, 165)), 'superseded', 'an older delta after a newer plan is not stored');
  t.equal(await p1.publish(delta(170, 166)), 'suppressed', 'nor anything of the cell up to the stored plan');
  t.equal(await p1.publish(delta(221, 170)), 'suppressed');
  t.equal(await p1.publish(snapshot(200)), 'suppressed', 'snapshots likewise');
  t.equal(await p1.publish(delta(222, 221)), 'sent', 'newer: stored after it');
  t.equal(await p1.publish(snapshot(222)), 'sent', "a newer snapshot after the other planner's");
  t.same(await lastStoredOn(bus, 'snapshot', 'cell-x'), { revision: 222, seq: 2 });
  t.same(await stored(), [160, 165, 221, 222]);
  // the other one, newer still, publishes after the first one's message (its expected sequence was stale)
  t.equal(await p2.publish(delta(230, 221)), 'sent');
  t.same(await stored(), [160, 165, 221, 222, 230]);
  t.same(await latestPlanned(bus, 'cell-x'), { revision: 230, hash: EMPTY_CELL_HASH }, 'the latest plan is the newest');
  // something that is not a plan written on the subject (only admins and planners may): no newer plan, so the next
  // output is stored after it — never stuck on it
  await bus.js.publish(cellSubject.delta('cell-x'), 'not a delta');
  t.equal(await p1.publish(delta(231, 222)), 'sent', 'published after the garbage');
  t.same((await stored()).slice(-1), [231]);
  // outputs of one cell handed over together leave in order, one after the other
  const outcomes = await Promise.all([232, 233, 234, 235].map((r) => p2.publish(delta(r, r - 1))));
  t.same(outcomes, ['sent', 'sent', 'sent', 'sent']);
  t.same((await stored()).slice(-4), [232, 233, 234, 235]);
});
