// Readers that do not stall and do not wedge (issue 14): the StreamTail under a lost consumer and a server killed
// and restarted, and a cell's deltas stored out of order (a publish retried across a leader change) applied in
// revision order by the replica and by the feed — with no later write to rescue it.
import t from 'tap';
import type { Test } from 'tap';
import { AckPolicy, type JsMsg } from '@nats-io/jetstream';
import { startNats, eventually } from './harness/nats.ts';
import { ev, record } from './harness/events.ts';
import { CELL_DELTAS_STREAM, CellReplica, cellSubject, type CellDelta, type PlannerOutput, outputMessage, parseCellDelta } from '../projections/cell-stream.ts';
import { canonicalJson } from '../projections/canonical.ts';
import { PlannerCore } from '../services/topology-planner/core.ts';
import { CellFeed } from '../services/cell-agent/feed.ts';
import { StreamTail } from '../runtime/stream-tail.ts';
import { Registry } from '../runtime/metrics.ts';
import type { Bus } from '../runtime/nats.ts';
import { silentLogger } from '../runtime/logger.ts';

/** A real chain of one cell's deltas, from the planner's own core: 12 containers started, then 4 stopped, one batch each. */
function chain(core = chainCore()): { deltas: Extract<PlannerOutput, { kind: 'delta' }>[]; final: { revision: number; hash: string; state: string } } {
  const outputs = record(chainEvents()).flatMap((rec) => core.ingest([rec]));
  const deltas = outputs.filter((o): o is Extract<PlannerOutput, { kind: 'delta' }> => o.kind === 'delta' && o.cellId === 'cell-x');
  const view = core.cellView('cell-x')!;
  return { deltas, final: { revision: view.revision, hash: view.hash, state: canonicalJson(view.state) } };
}

function chainEvents() {
  const events = [ev.registered('app-a', 'a', 's1')];
  for (let i = 0; i < 12; i++) events.push(ev.started(`c-${i}`, 'app-a', 'cell-x', `10.255.1.${i + 2}`, i));
  for (let i = 0; i < 4; i++) events.push(ev.stopped(`c-${i}`, 'app-a', 'cell-x'));
  return events;
}

/** The planner core chain() folds with (a test passes its own to go on from the chain's end). */
function chainCore(): PlannerCore {
  return new PlannerCore({ domain: 'apps.internal', snapshotEvery: 100_000, owns: () => true });
}

const asDelta = (o: PlannerOutput): CellDelta => parseCellDelta(outputMessage(o).body, o.cellId)!;

/** The state a replica holds after a chain of deltas, applied in order. */
function chainState(deltas: readonly PlannerOutput[]) {
  const r = new CellReplica('cell-x');
  for (const d of deltas) r.offerDelta(asDelta(d));
  return r.state;
}

/** Swaps neighbours pairwise from `from` on: 1,2,3,4,5 → 1,3,2,5,4 (every later delta stored before its predecessor). */
function scrambled<T>(xs: readonly T[], from = 1): T[] {
  const out = [...xs];
  for (let i = from; i + 1 < out.length; i += 2) [out[i], out[i + 1]] = [out[i + 1]!, out[i]!];
  return out;
}

t.test('the replica applies deltas that come before the one they follow as soon as it arrives', async (t) => {
  const { deltas, final } = chain();
  t.ok(deltas.length >= 10, `a chain of ${deltas.length} deltas`);
  const r = new CellReplica('cell-x');
  const results = scrambled(deltas).map((d) => r.offerDelta(asDelta(d)));
  t.ok(results.includes('held'), 'some deltas were held for their predecessor');
  t.notOk(results.includes('gap'), 'none was refused as a gap');
  t.equal(r.revision, final.revision, 'the last planned revision is reached');
  t.equal(r.hash, final.hash);
  t.equal(canonicalJson(r.state), final.state);
  t.equal(r.waiting, 0, 'nothing is left waiting');

  // Held deltas wait through a snapshot that lands before them, then apply on top of it.
  const s = new CellReplica('cell-x');
  const [first, second, ...rest] = deltas.map(asDelta);
  for (const d of rest) t.equal(s.offerDelta(d), 'held');
  t.equal(s.offerDelta(second!), 'held', 'the second follows the first, not yet held');
  const snapAfterFirst = new CellReplica('cell-x');
  snapAfterFirst.offerDelta(first!);
  t.equal(
    s.applySnapshot({ cellId: 'cell-x', revision: snapAfterFirst.revision, hash: snapAfterFirst.hash, state: structuredClone(snapAfterFirst.state) }),
    'applied',
  );
  t.equal(s.revision, final.revision, 'the snapshot released the whole held chain');
  t.equal(s.hash, final.hash);

  // A held delta whose result does not hash to its hash is dropped; the state stays the last one planned.
  const m = new CellReplica('cell-x');
  const forged = { ...asDelta(deltas[1]!), hash: '0'.repeat(64) };
  t.equal(m.offerDelta(forged), 'held');
  t.equal(m.offerDelta(asDelta(deltas[0]!)), 'mismatch', 'the held delta did not match');
  t.equal(m.revision, deltas[0]!.revision, 'the state is the one before the forged delta');
  t.equal(m.waiting, 0);

  // Two planners' chains for one cell (a take-over, then the old owner's next delta, coalesced over a batch): a delta
  // that follows an older revision but leads past the one held applies when it yields its hash from the state held.
  const [d2, d3] = deltas.slice(4, 6).map(asDelta);
  const two = new CellReplica('cell-x');
  for (const d of deltas.slice(0, 5)) two.offerDelta(asDelta(d));
  t.equal(two.revision, d2!.revision, "held: the new owner's state");
  const oldOwners = { ...d3!, prevRevision: d2!.prevRevision, ops: [...d2!.ops, ...d3!.ops] };
  t.equal(two.offerDelta(oldOwners), 'applied', "the old owner's delta over the same events applies");
  t.equal(two.hash, d3!.hash);
  t.equal(canonicalJson(two.state), canonicalJson(chainState(deltas.slice(0, 6))), 'the planned state at its revision');

  // A delta that follows a revision older than the one held and does not yield its hash: a gap (the feed re-reads).
  const g = new CellReplica('cell-x');
  for (const d of deltas.slice(0, 3)) g.offerDelta(asDelta(d));
  t.equal(g.offerDelta({ ...asDelta(deltas[4]!), prevRevision: deltas[0]!.revision }), 'gap');
});

t.test('a cell whose deltas were stored out of order converges with no later write', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('deltas');
  const { deltas, final } = chain();
  const ordered = deltas.map((d) => outputMessage(d));
  const publish = async (msgs: typeof ordered) => {
    for (const m of msgs) await bus.js.publish(m.subject, m.body, { msgID: m.msgId });
  };

  // A feed that is already following when the scrambled deltas arrive (the live path)...
  const live = new CellFeed(bus, 'cell-x', nats.log);
  await live.start();
  t.teardown(() => live.stop());
  await publish(scrambled(ordered.slice(0, 8)));
  // ... and one that starts after they are stored (the re-read path), while more come in scrambled.
  const late = new CellFeed(bus, 'cell-x', nats.log);
  await late.start();
  t.teardown(() => late.stop());
  await publish(scrambled(ordered.slice(8), 0));

  for (const [name, feed] of [
    ['live', live],
    ['late', late],
  ] as const) {
    await feed.waitUntil((v) => v.revision === final.revision, 20_000, 'the last planned revision');
    t.equal(feed.view.hash, final.hash, `${name}: the planned hash`);
    t.equal(canonicalJson(feed.view.state), final.state, `${name}: the planned state`);
    t.equal(feed.refusals.count, 0, `${name}: nothing refused`);
  }
  const stored = await storedRevisions(bus);
  t.not(stored.join(','), [...stored].sort((a, b) => a - b).join(','), 'the stream really held them out of order');
});

t.test('a delta missing from the stream: the feed asks the owning planner for the state instead of waiting for ever', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('deltas');
  const { deltas, final } = chain();
  const missing = deltas[5]!;
  for (const d of deltas.filter((d) => d !== missing)) {
    const m = outputMessage(d);
    await bus.js.publish(m.subject, m.body, { msgID: m.msgId });
  }
  // The owner answers as the planner does (services/topology-planner/service.ts serveCellState), with its state.
  let asked = 0;
  const owner = bus.nc.subscribe(cellSubject.state('cell-x'), {
    callback: (_err, msg) => {
      asked += 1;
      msg.respond(outputMessage({ kind: 'snapshot', cellId: 'cell-x', revision: final.revision, hash: final.hash, state: JSON.parse(final.state) }).body);
    },
  });
  t.teardown(() => owner.unsubscribe());
  const feed = new CellFeed(bus, 'cell-x', nats.log);
  await feed.start();
  t.teardown(() => feed.stop());
  await feed.waitUntil((v) => v.revision === final.revision, 20_000, 'the planned revision, past the hole');
  t.equal(feed.view.hash, final.hash, 'the planned hash');
  t.equal(canonicalJson(feed.view.state), final.state, 'the planned state');
  t.ok(asked >= 1 && feed.stateRequests >= 1, `the owner was asked (${asked} times)`);
  t.ok(feed.resyncs >= 2, 'only after the stored chain failed to bridge the hole twice');
  t.equal(feed.refusals.count, 0, 'nothing refused');

  // A later delta continues from the adopted state.
  const core = chainCore();
  chain(core);
  const more = record([ev.stopped('c-4', 'app-a', 'cell-x')], chainEvents().length + 1).flatMap((rec) => core.ingest([rec]));
  const next = more.find((o) => o.kind === 'delta' && o.cellId === 'cell-x')!;
  const m = outputMessage(next);
  await bus.js.publish(m.subject, m.body, { msgID: m.msgId });
  await feed.waitUntil((v) => v.revision === next.revision, 20_000, 'the next delta');
  t.equal(feed.view.hash, next.hash, 'the next delta applied on top of the adopted state');
});

t.test('no owner answers: the feed keeps the state it holds and keeps trying', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('deltas');
  const { deltas } = chain();
  for (const d of deltas.filter((_, i) => i !== 5)) {
    const m = outputMessage(d);
    await bus.js.publish(m.subject, m.body, { msgID: m.msgId });
  }
  const feed = new CellFeed(bus, 'cell-x', nats.log);
  await feed.start();
  t.teardown(() => feed.stop());
  await eventually(() => (feed.stateRequests >= 2 ? true : undefined), 30_000, 'two unanswered state requests');
  t.equal(feed.view.revision, deltas[4]!.revision, 'the state before the hole is held, nothing after it was applied');
  t.equal(feed.refusals.count, 0, 'nothing refused');
});

async function storedRevisions(bus: Bus): Promise<number[]> {
  const out: number[] = [];
  const tail = new StreamTail(bus, { stream: CELL_DELTAS_STREAM, start: { seq: 1 }, reader: 'test', log: silentLogger() });
  for await (const m of tail) {
    out.push((m.json() as { revision: number }).revision);
    if (m.info.pending === 0) break;
  }
  return out;
}

t.test('a tail delivers everything once, in order, across a lost consumer and a server killed and restarted', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('tail');
  await bus.jsm.streams.add({ name: 'TAIL_TEST', subjects: ['tail.>'] });
  const metrics = new Registry();
  const tail = new StreamTail(bus, { stream: 'TAIL_TEST', filter: 'tail.x', start: { seq: 1 }, reader: 'test', log: nats.log, metrics });
  const got: number[] = [];
  const reading = (async () => {
    for await (const m of tail as AsyncIterable<JsMsg>) got.push(Number(m.string()));
  })();
  t.teardown(async () => {
    await tail.stop();
    await reading;
  });
  let n = 0;
  const write = async (count: number) => {
    for (let i = 0; i < count; i++) {
      n += 1;
      await bus.js.publish(n % 3 === 0 ? 'tail.other' : 'tail.x', String(n));
    }
  };
  const expected = () => Array.from({ length: n }, (_, i) => i + 1).filter((v) => v % 3 !== 0);
  const caughtUp = (what: string) => eventually(() => (got.length >= expected().length ? true : undefined), 30_000, what);

  await write(30);
  await caughtUp('the first messages');

  // 1. The consumer disappears from the server while the reader waits.
  for await (const c of await bus.jsm.consumers.list('TAIL_TEST')) await bus.jsm.consumers.delete('TAIL_TEST', c.name);
  await write(30);
  await caughtUp('the messages after the consumer was deleted');

  // 2. The server dies and comes back (the stream is on disk; the consumer is gone).
  await nats.server.kill();
  await nats.restart();
  await eventually(
    async () =>
      await bus.jsm.streams
        .info('TAIL_TEST')
        .then(() => true)
        .catch(() => undefined),
    30_000,
    'the stream back',
  );
  await write(30);
  await caughtUp('the messages after the restart');

  t.same(got, expected(), 'every message of the subject, once, in order');
  t.equal(tail.lastSeq, n - (n % 3 === 0 ? 1 : 0), 'the last sequence delivered is the last of the subject');
  const counted = metrics
    .render()
    .split('\n')
    .filter((l) => l.startsWith('netfold_stream_tail_recoveries_total{'))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
  t.equal(counted, tail.recoveries, `each recovery is counted (${tail.recoveries})`);
});

t.test('the watchdog recreates a consumer that went silent long before nats.js would notice', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('watchdog');
  await bus.jsm.streams.add({ name: 'TAIL_SLOW', subjects: ['slow.>'] });
  // Pulls of a minute with heartbeats every 30 s: left to itself, nats.js would see the loss after two missed beats.
  const tail = new StreamTail(bus, { stream: 'TAIL_SLOW', start: { seq: 1 }, reader: 'test', log: nats.log, expiresMs: 60_000, idleHeartbeatMs: 30_000 });
  const got: string[] = [];
  const reading = (async () => {
    for await (const m of tail) got.push(m.string());
  })();
  t.teardown(async () => {
    await tail.stop();
    await reading;
  });
  await bus.js.publish('slow.a', 'one');
  await eventually(() => (got.length === 1 ? true : undefined), 10_000, 'the first message');
  for await (const c of await bus.jsm.consumers.list('TAIL_SLOW')) await bus.jsm.consumers.delete('TAIL_SLOW', c.name);
  await bus.js.publish('slow.a', 'two');
  await bus.js.publish('slow.b', 'three');
  // Well before two missed heartbeats (60 s): only the watchdog can have brought these.
  await eventually(() => (got.length === 3 ? true : undefined), 20_000, 'the messages after the consumer vanished');
  t.same(got, ['one', 'two', 'three'], 'in order, once');
  t.ok(tail.recoveries >= 1, `the watchdog recreated the consumer (${tail.recoveries})`);
});

/**
 * A tail (that may read directly) of a new stream that takes one consumer at most, read into `got`; `block()` takes
 * the tail's consumer away and fills the slot, so no consumer can be created (as while the meta leader is lost), yet
 * the stream still answers direct gets.
 */
async function tailOfOneConsumerStream(t: Test, stream: string, subjects: string, filter?: string) {
  const nats = await startNats(t);
  const bus = await nats.connect('stuck');
  await bus.jsm.streams.add({ name: stream, subjects: [subjects], max_consumers: 1, allow_direct: true });
  const tail = new StreamTail(bus, { stream, ...(filter && { filter }), start: { seq: 1 }, reader: 'test', log: nats.log, readDirectWhenStuck: true });
  const got: number[] = [];
  const reading = (async () => {
    for await (const m of tail) got.push(Number(m.string()));
  })();
  t.teardown(async () => {
    await tail.stop();
    await reading;
  });
  const block = async () => {
    for await (const c of await bus.jsm.consumers.list(stream)) await bus.jsm.consumers.delete(stream, c.name);
    await bus.jsm.consumers.add(stream, { durable_name: 'blocker', ack_policy: AckPolicy.None });
  };
  return { bus, tail, got, block };
}

t.test('while no consumer can be created, a tail that may reads on with direct gets, then takes a consumer again', async (t) => {
  const { bus, tail, got, block } = await tailOfOneConsumerStream(t, 'TAIL_STUCK', 'stuck.>', 'stuck.>');
  let n = 0;
  const write = async (count: number) => {
    for (let i = 0; i < count; i++) await bus.js.publish(`stuck.${n % 2 ? 'a' : 'b'}`, String(++n));
  };
  const all = () => Array.from({ length: n }, (_, i) => i + 1);
  await write(10);
  await eventually(() => (got.length === 10 ? true : undefined), 10_000, 'the first messages, through a consumer');
  t.equal(tail.readDirect, 0, 'none read directly while the consumer works');

  await block();
  await write(10);
  await eventually(() => (got.length === 20 ? true : undefined), 20_000, 'the messages written while no consumer can be created');
  t.ok(tail.readDirect >= 10, `read directly: ${tail.readDirect}`);
  t.same(got, all(), 'in order, once');

  await bus.jsm.consumers.delete('TAIL_STUCK', 'blocker');
  await write(10);
  await eventually(() => (got.length === 30 ? true : undefined), 20_000, 'the messages after the slot is free again');
  t.same(got, all(), 'in order, once, across both switches');
  const direct = tail.readDirect;
  await eventually(
    async () => ((await bus.jsm.consumers.info('TAIL_STUCK', (await firstConsumer(bus, 'TAIL_STUCK'))!)) ? true : undefined),
    20_000,
    'a consumer again',
  );
  await write(5);
  await eventually(() => (got.length === 35 ? true : undefined), 20_000, 'the messages after that');
  t.same(got, all());
  t.equal(tail.readDirect, direct, 'read through the consumer again, not directly');
});

t.test('a tail of a whole stream reading with direct gets reads ahead when behind: in order, once', async (t) => {
  const { bus, tail, got, block } = await tailOfOneConsumerStream(t, 'TAIL_AHEAD', 'ahead.>');
  let n = 0;
  const write = async (count: number) => {
    await Promise.all(Array.from({ length: count }, () => bus.js.publish(`ahead.${n % 3}`, String(++n))));
  };
  await write(5);
  await eventually(() => (got.length === 5 ? true : undefined), 10_000, 'the first messages, through a consumer');
  await block();
  await write(500);
  await eventually(() => (got.length === 505 ? true : undefined), 20_000, 'the messages written while no consumer can be created');
  t.same(
    got,
    Array.from({ length: n }, (_, i) => i + 1),
    'in order, once',
  );
  t.ok(tail.readAhead > 0, `read ahead: ${tail.readAhead} of ${tail.readDirect} read directly`);
});

async function firstConsumer(bus: Bus, stream: string): Promise<string | undefined> {
  for await (const c of await bus.jsm.consumers.list(stream)) return c.name;
  return undefined;
}
