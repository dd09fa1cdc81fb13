// The streaming cell feed follows its deltas live (a plain subscription) and reads the stream only to catch up, on a
// real, secured nats-server, signed in as the cell's agent: no consumer is left once caught up; a delta stored that
// never came live is found by the feed's check and read from the stream; a server that refuses the subscription
// leaves the feed following by consumer. The deltas are a made-up chain with real hashes (projections/cell.ts).
import t from 'tap';
import type { Test } from 'tap';
import { startNats, eventually, type NatsFixture } from './harness/nats.ts';
import { type CellOp, applyCellOps, emptyCellState } from '../projections/cell.ts';
import { CELL_DELTAS_STREAM, EMPTY_CELL_HASH, type CellDelta, cellSubject, outputMessage } from '../projections/cell-stream.ts';
import { CellFeed } from '../services/cell-agent/feed.ts';
import type { Bus } from '../runtime/nats.ts';
import { headers } from '@nats-io/nats-core';

/** A chain of `n` deltas of one cell from the empty state, each adding one name (with the hash a reader checks). */
function chainOf(cellId: string, n: number, from = 0): CellDelta[] {
  const state = emptyCellState();
  let hash = EMPTY_CELL_HASH;
  const out: CellDelta[] = [];
  for (let rev = 1; rev <= from + n; rev++) {
    const ops: CellOp[] = [{ path: ['names', `n${rev}.apps.internal`], value: { [`10.255.0.${rev}`]: true } }];
    hash = applyCellOps(state, hash, ops);
    if (rev > from) out.push({ cellId, revision: rev, prevRevision: rev - 1, ops, hash, at: new Date(0).toISOString() });
  }
  return out;
}

/** Stores a delta as the planner does (its message id names the revision). */
async function store(bus: Bus, d: CellDelta): Promise<void> {
  const { subject, msgId, body } = outputMessage({ kind: 'delta', ...d, at: d.at! });
  await bus.js.publish(subject, body, { msgID: msgId });
}

async function consumersOn(bus: Bus): Promise<number> {
  return (await bus.jsm.streams.info(CELL_DELTAS_STREAM)).state.consumer_count;
}

async function setUp(t: Test): Promise<{ nats: NatsFixture; admin: Bus; agent: Bus }> {
  const nats = await startNats(t);
  return { nats, admin: await nats.connect('admin'), agent: await nats.connectAs('agent_cell-1') };
}

/** Starts a feed of cell-1 on `bus` (stopped at teardown) and waits until it holds `revision` and follows live. */
async function liveFeed(t: Test, bus: Bus, nats: NatsFixture, revision: number, opts: { liveCheckMs?: number } = {}): Promise<CellFeed> {
  const feed = new CellFeed(bus, 'cell-1', nats.log, undefined, opts);
  await feed.start();
  t.teardown(() => feed.stop());
  await feed.waitUntil((v) => v.revision === revision, 10_000, 'the stored deltas');
  await eventually(() => (feed.live ? true : undefined), 10_000, 'live');
  return feed;
}

t.test('caught up, the feed holds no consumer and applies each delta as it is stored', async (t) => {
  const { nats, admin, agent } = await setUp(t);
  const chain = chainOf('cell-1', 6);
  for (const d of chain.slice(0, 3)) await store(admin, d);
  const feed = await liveFeed(t, agent, nats, 3);
  // (the tail deletes its consumer without waiting for the answer)
  await eventually(async () => ((await consumersOn(admin)) === 0 ? true : undefined), 10_000, 'the consumer that caught up deleted');
  t.pass('the consumer that caught up is gone');
  for (const d of chain.slice(3)) await store(admin, d);
  await feed.waitUntil((v) => v.revision === 6, 10_000, 'the live deltas');
  t.equal(feed.view.hash, chain[5]!.hash, 'the state the planner planned');
  t.equal(await consumersOn(admin), 0, 'followed with no consumer');
  t.equal(feed.resyncs, 0, 'no resync');
  t.equal(feed.missed, 0, 'nothing missed');
});

t.test('a delta stored that never came live is found by the check and read from the stream', async (t) => {
  const { nats, admin, agent } = await setUp(t);
  const chain = chainOf('cell-1', 3);
  await store(admin, chain[0]!);
  // The agent's live subscription is made on a subject that never carries its deltas: every later delta is
  // "lost" on the way, as in a reconnect or on a cluster route; only the stream has them.
  const deaf: Bus = {
    ...agent,
    nc: new Proxy(agent.nc, { get: (nc, k) => (k === 'subscribe' ? () => nc.subscribe('_INBOX.agent.cell-1.deaf') : Reflect.get(nc, k)) }),
  };
  const feed = await liveFeed(t, deaf, nats, 1, { liveCheckMs: 200 });
  await store(admin, chain[1]!);
  await store(admin, chain[2]!);
  await feed.waitUntil((v) => v.revision === 3, 10_000, 'the deltas that never came live');
  t.equal(feed.view.hash, chain[2]!.hash);
  t.ok(feed.missed >= 1, `the check found them (missed ${feed.missed})`);
  t.ok(feed.resyncs >= 1, 'and read them with a resync');
});

t.test('a server that refuses the subscription: the feed follows by consumer', async (t) => {
  const { nats, admin, agent } = await setUp(t);
  const chain = chainOf('cell-1', 4);
  await store(admin, chain[0]!);
  // As on a server whose permissions predate live delivery: the subscription is refused (cell-2's subject here).
  const refused: Bus = {
    ...agent,
    nc: new Proxy(agent.nc, {
      get: (nc, k) => (k === 'subscribe' ? (_s: string, o: object) => nc.subscribe(cellSubject.delta('cell-2'), o) : Reflect.get(nc, k)),
    }),
  };
  const feed = new CellFeed(refused, 'cell-1', nats.log);
  await feed.start();
  t.teardown(() => feed.stop());
  await feed.waitUntil((v) => v.revision === 1, 10_000, 'the stored delta');
  for (const d of chain.slice(1)) await store(admin, d);
  await feed.waitUntil((v) => v.revision === 4, 10_000, 'the deltas, by consumer');
  t.equal(feed.view.hash, chain[3]!.hash);
  t.equal(feed.live, false, 'not live');
  t.equal(await consumersOn(admin), 1, 'its consumer follows the stream');
});

t.test('a live delta of the wrong shape is refused once and answered with a resync; the chain goes on', async (t) => {
  const { nats, admin, agent } = await setUp(t);
  const chain = chainOf('cell-1', 2);
  await store(admin, chain[0]!);
  const feed = await liveFeed(t, agent, nats, 1);
  const h = headers();
  h.set('Nats-Msg-Id', 'd:cell-1:99');
  await admin.js.publish(cellSubject.delta('cell-1'), JSON.stringify({ cellId: 'cell-1', revision: 99, prevRevision: 1, ops: 'all' }), { headers: h });
  await eventually(() => (feed.resyncs >= 1 ? true : undefined), 10_000, 'the resync');
  await eventually(() => (feed.live ? true : undefined), 10_000, 'live again');
  t.equal(feed.rejected, 1, 'refused once: the re-read of the stream knows it by its message id');
  t.equal(feed.view.revision, 1, 'nothing of it applied');
  await store(admin, chain[1]!);
  await feed.waitUntil((v) => v.revision === 2, 10_000, 'the next valid delta');
  t.equal(feed.view.hash, chain[1]!.hash);
});

t.test('a listener that throws on a live delta does not stop the connection: caught, answered with a resync', async (t) => {
  const { nats, admin, agent } = await setUp(t);
  const chain = chainOf('cell-1', 3);
  await store(admin, chain[0]!);
  const feed = await liveFeed(t, agent, nats, 1);
  let calls = 0;
  feed.onChange(() => {
    calls += 1;
    if (calls === 1) throw new Error('a listener failed');
  });
  await store(admin, chain[1]!);
  await eventually(() => (feed.resyncs >= 1 ? true : undefined), 10_000, 'the resync');
  await store(admin, chain[2]!);
  await feed.waitUntil((v) => v.revision === 3, 10_000, 'the next delta');
  t.equal(feed.view.hash, chain[2]!.hash);
  await agent.nc.flush();
  t.pass('the connection still reads');
});
