// Availability under faults (issue 14), correctness only: the whole system on a real 3-node cluster with R3 streams
// (test/harness/cluster.ts), every service its own process signed in with its role (test/harness/chaos.ts), a
// bounded load through the real intake paths (container starts and stops over NATS intake, policy creates and
// deletes over HTTP, each retried with its request id until acknowledged), and during the load one fault at a time,
// each a kill -9 and a restart:
//   (a) the node leading the event log's stream, (b) the node holding the writer's log consumer, (c) the node
//   leading the cell-deltas stream, (d) a planner (the other planner takes its cells over, then it comes back) and
//   a cell agent.
// After each: every acknowledged command is in the log exactly once, a replay of the log agrees with the planners
// on every cell, and every cell converges (its agent applied the planned hash; the log's last revision enforced).
// No timing is asserted; waits are generous (a stalled reader may take a minute and more to recover). The times
// each phase took are written as comments; `npm run bench:chaos` measures them properly.
import t, { type Test } from 'tap';
import { startCluster, type ClusterFixture } from './harness/cluster.ts';
import type { LogLine } from './harness/processes.ts';
import { ChaosLoad, checkLog, deltasOutOfOrder, startChaosSystem, waitConverged, warningsSince, type ChaosSystem } from './harness/chaos.ts';
import { EVENTS_STREAM } from '../runtime/subjects.ts';
import { CELL_DELTAS_STREAM } from '../projections/cell-stream.ts';
import { createRootLogger, silentLogger } from '../runtime/logger.ts';

// On the code before the reader fixes a fault can stall a reader for 60-90 s; with the file's budget for that.
t.setTimeout(20 * 60_000);

/** How long a killed node or process stays down: the fault itself, not a wait for progress. */
const DOWN_MS = 5000;
// Generous: on the code before the fixes, readers stalled for up to ~90 s after a fault.
const CONVERGE_MS = 180_000;
const PER_PHASE = 90;
const CONCURRENCY = 6;

const log = process.env.NETFOLD_TEST_LOG ? createRootLogger({ level: process.env.NETFOLD_TEST_LOG }) : silentLogger();
const cluster: ClusterFixture = await startCluster({ log });
// a failed start throws from the top level, where tap's teardown may not run: take the cluster down first
const system: ChaosSystem = await startChaosSystem(cluster).catch(async (err: unknown) => {
  await cluster.stop();
  throw err;
});
t.teardown(async () => {
  await system.stop();
  await cluster.stop();
});
const load = new ChaosLoad(system);
const down = () => new Promise((r) => setTimeout(r, DOWN_MS));

/** The longest time between two acknowledgements from `since` on (ms): how long writes stood still. */
function longestWriteGap(since: number): number {
  const acks = load.acked
    .map((c) => c.ackedAt!)
    .filter((a) => a >= since)
    .sort((a, b) => a - b);
  let gap = 0;
  for (let i = 1; i < acks.length; i++) gap = Math.max(gap, acks[i]! - acks[i - 1]!);
  return gap;
}

/**
 * A phase: PER_PHASE commands; once a third of them are acknowledged, `fault` runs (kill, stay down, restart). Then
 * every command must be acknowledged, the log must hold each exactly once, and every cell must converge.
 */
async function underFault(tt: Test, fault: () => Promise<string>): Promise<void> {
  const since = Date.now();
  const first = load.commands.length;
  let faulted: Promise<string> | undefined;
  const startFault = (acked: number) => {
    if (!faulted && acked >= first + PER_PHASE / 3) faulted = fault();
  };
  await load.runCount(PER_PHASE, CONCURRENCY, startFault);
  const what = await (faulted ?? fault());
  await cluster.waitHealthy();
  const mine = load.commands.slice(first);
  const failures: Record<string, number> = {};
  for (const c of mine) for (const [code, n] of Object.entries(c.failures)) failures[code] = (failures[code] ?? 0) + n;
  const samples = Object.fromEntries(Object.keys(failures).map((code) => [code, load.failureSamples[code]]));
  tt.comment(`${what}; longest write gap ${longestWriteGap(since)} ms; failed attempts ${JSON.stringify(failures)} ${JSON.stringify(samples)}`);
  tt.same(
    mine.filter((c) => c.gaveUp).map((c) => `${c.kind} ${c.requestId}: ${c.gaveUp}`),
    [],
    'every command of the phase was acknowledged',
  );
  const logged = await checkLog(system.bus, load.commands);
  tt.same(logged.lost, [], `no acknowledged command missing from the log (${logged.acked} acknowledged, ${logged.events} events)`);
  tt.same(logged.duplicated, [], 'no command in the log twice');
  await converges(tt, since);
}

/** Every cell converges. */
async function converges(tt: Test, since: number): Promise<void> {
  const conv = await waitConverged(system.bus, system.planners.keys(), system.cells, CONVERGE_MS);
  tt.comment(
    `converged after ${conv.ms} ms (${conv.last?.ok ? 'done' : 'NOT converged'}); readers last seen behind (ms): ${JSON.stringify(conv.lastBehindMs)}; ` +
      `full checks ${JSON.stringify(conv.fullChecks)}`,
  );
  tt.comment(`warnings logged: ${JSON.stringify(warningsSince(system.history, since))}`);
  if (!conv.last?.ok) {
    for (const cellId of system.cells) {
      const d = await deltasOutOfOrder(system.bus, cellId).catch((err: unknown) => ({ error: (err as Error).message }));
      if (!('outOfOrder' in d) || d.outOfOrder > 0) tt.comment(`${cellId}: deltas as stored ${JSON.stringify(d)}`);
    }
  }
  tt.ok(conv.last?.replayOk, `a replay of the log agrees with the planners on every cell${conv.error ? ` (${conv.error})` : ''}`);
  tt.ok(conv.last?.ok, `every cell converged: applied hash = planned = replayed, revision enforced ${JSON.stringify(conv.last)}`);
}

/** Steps a stream's leader away from the given servers (a few tries; elections pick at random). */
async function leaderAvoiding(stream: string, avoid: (string | undefined)[]): Promise<string> {
  let leader = await cluster.streamLeader(stream);
  for (let i = 0; i < 4 && avoid.includes(leader); i++) leader = await cluster.stepDownStream(stream);
  return leader;
}

async function killNode(name: string): Promise<void> {
  await cluster.kill(name);
  await down();
  await cluster.restart(name);
}

t.test('before any fault: the system converges', async (t) => {
  await load.runCount(30, CONCURRENCY);
  t.same(load.gaveUp, []);
  await converges(t, 0);
});

t.test('(a) the node leading the event log is killed -9 and restarted', async (t) => {
  await underFault(t, async () => {
    const consumerAt = await system.writerConsumerServer();
    const victim = await leaderAvoiding(EVENTS_STREAM, [consumerAt]);
    const meta = await cluster.metaLeader();
    await killNode(victim);
    const also = [meta === victim && 'meta leader', consumerAt === victim && "holding the writer's consumer"].filter(Boolean);
    return `killed ${victim} (leader of ${EVENTS_STREAM}${also.map((a) => `, ${a}`).join('')})`;
  });
});

t.test("(b) the node holding the writer's log consumer is killed -9 and restarted", async (t) => {
  await underFault(t, async () => {
    const victim = await system.writerConsumerServer();
    if (!victim) throw new Error("the writer's log consumer was not found");
    const leader = await leaderAvoiding(EVENTS_STREAM, [victim]);
    await killNode(victim);
    return `killed ${victim} (the writer's log consumer; ${EVENTS_STREAM} led by ${leader})`;
  });
});

// Before the fixes the take-over did not converge when nothing changed on the cell after it: the planner taking a
// cell over published only its snapshot, which an agent following its deltas never read. Now a link delta follows.
t.test('(d) a planner is killed -9: the other planner takes its cells over', async (t) => {
  await underFault(t, async () => {
    await system.planners.get('p1')!.kill();
    return 'killed planner p1 (not restarted in this phase)';
  });
});

t.test('(d) the killed planner comes back', async (t) => {
  // Back before the load, and the load only once the other planner has seen it: the cells it takes back start from
  // its snapshot and the link delta after it.
  await system.planners.get('p1')!.kill(); // already, unless the phase above was left out (--grep)
  const back = Date.now();
  await system.startPlanner('p1');
  t.comment(`p1 started after ${Date.now() - back} ms`);
  const seen = (l: LogLine) => l.msg === 'planner-members-changed' && Array.isArray(l.members) && l.members.includes('p1');
  await system.planners.get('p2')!.waitLog(seen, 30_000, 'p2 seeing p1 back', back);
  await underFault(t, async () => 'planner p1 restarted before the phase');
});

t.test('(d) a cell agent is killed -9 and restarted', async (t) => {
  await underFault(t, async () => {
    await system.agents.get('cell-1')!.kill();
    await down();
    await system.startAgent('cell-1');
    return 'killed the agent of cell-1';
  });
});

// Last: before the reader fixes this one did not converge, and its wedged cells failed the faults after it. A
// planner's deltas re-sent after the leader loss were stored after later ones; the agent's feed found a gap on every
// re-read of the retained deltas. Now the feed applies retained deltas in revision order and holds early ones, the
// planner follows a re-sent delta with a snapshot, and a feed whose stored chain stays broken (seen in 1 of 3 runs:
// a delta missing from the stream after the leader change) asks the owning planner for the cell's state.
t.test('(c) the node leading the cell-deltas stream is killed -9 and restarted', async (t) => {
  await underFault(t, async () => {
    const consumerAt = await system.writerConsumerServer();
    const eventsLeader = await cluster.streamLeader(EVENTS_STREAM);
    const victim = await leaderAvoiding(CELL_DELTAS_STREAM, [consumerAt, eventsLeader]);
    await killNode(victim);
    return `killed ${victim} (leader of ${CELL_DELTAS_STREAM}; ${EVENTS_STREAM} led by ${eventsLeader}, writer's consumer on ${consumerAt})`;
  });
});
