// npm run bench:chaos — availability under faults (issue 14): the whole system on a real 3-node nats-server cluster
// with R3 streams (test/harness/cluster.ts), every service its own process signed in with its role
// (test/harness/chaos.ts: the policy-writer, planners p1 and p2, one agent per cell on the memory dataplane), a
// steady intake load of BENCH_RATE commands a second (container starts and stops over NATS intake, policy creates and
// deletes over HTTP, each retried with its request id until acknowledged; at most BENCH_MAX_IN_FLIGHT at once), and
// one fault per run, each on a fresh cluster, after BENCH_WARMUP_S of load:
//   events-leader    kill -9 the node leading the event log's stream (not the one holding the writer's consumer)
//   writer-consumer  kill -9 the node holding the writer's log consumer (the event log led elsewhere)
//   deltas-leader    kill -9 the node leading the cell-deltas stream (neither of the above)
//   planner          kill -9 planner p1 (p2 takes its cells over once p1's member entry expires)
//   agent            kill -9 the agent of cell-1
// The node or process stays down BENCH_DOWN_S, then restarts. Measured per fault:
//   - election: JetStream's own recovery, from the kill until a raw publish to the stream the fault concerns is
//     answered by its leader again (a probe connection on a surviving node, every 20 ms; each probe carries an
//     expected last sequence that never matches, so the leader answers and nothing is stored);
//   - take-over while down (planner fault): from the kill until a revision written just after it is enforced on
//     every cell, the other planner having taken the dead one's cells over;
//   - longest write gap: the longest time between two acknowledged commands of the load, from the kill on;
//   - back up after return: from the restart until the node answers or the process has logged its start line;
//   - re-converged after return: from the restart until the log's revision at the restart is enforced on every
//     cell by the enforcement answer's rule (every live planner published through it, every agent applied its cell's
//     latest plan up to it), read every 250 ms with direct gets (no consumers); the slowest reader is named (the last
//     planner or cell to get there, and when);
//   - at the end (load stopped, every command settled): every cell's applied hash = planned = replayed, and the
//     log read back: acknowledged commands lost, commands stored twice.
// Stdout: one JSON document (BENCH_FORMAT=json) or JSON then a markdown table. Exit 1 when a command was lost or
// stored twice.
import { headers, type Msg } from '@nats-io/nats-core';
import { startCluster, type ClusterFixture } from '../test/harness/cluster.ts';
import {
  ChaosLoad,
  checkLog,
  deltasOutOfOrder,
  progressOf,
  startChaosSystem,
  waitConverged,
  warningsSince,
  type ChaosSystem,
  type Convergence,
} from '../test/harness/chaos.ts';
import { connectBus } from '../runtime/nats.ts';
import { silentLogger } from '../runtime/logger.ts';
import { EVENTS_STREAM } from '../runtime/subjects.ts';
import { CELL_DELTAS_STREAM } from '../projections/cell-stream.ts';
import { envNumber, machine, progress } from './lib.ts';

const FAULTS = ['events-leader', 'writer-consumer', 'deltas-leader', 'planner', 'agent'] as const;
type Fault = (typeof FAULTS)[number];

const settings = {
  RATE: envNumber('BENCH_RATE', 200),
  DOWN_S: envNumber('BENCH_DOWN_S', 10),
  WARMUP_S: envNumber('BENCH_WARMUP_S', 10),
  /** Once the node or process is up again, the load goes on at least this long, and until every cell has re-converged (or MAX_WAIT_S). */
  TAIL_S: envNumber('BENCH_TAIL_S', 5),
  MAX_WAIT_S: envNumber('BENCH_MAX_WAIT_S', 180),
  MAX_IN_FLIGHT: envNumber('BENCH_MAX_IN_FLIGHT', 512),
  CELLS: envNumber('BENCH_CELLS', 3),
  FAULTS: (process.env.BENCH_FAULTS ?? FAULTS.join(',')).split(',').filter((f): f is Fault => (FAULTS as readonly string[]).includes(f)),
};

const seconds = (ms: number | null | undefined) => (ms === null || ms === undefined ? null : Math.round(ms / 100) / 10);

/** Steps a stream's leader away from the given servers (a few tries; elections pick at random). */
async function leaderAvoiding(cluster: ClusterFixture, stream: string, avoid: (string | undefined)[]): Promise<string> {
  let leader = await cluster.streamLeader(stream);
  for (let i = 0; i < 4 && avoid.includes(leader); i++) leader = await cluster.stepDownStream(stream);
  return leader;
}

/** A JetStream PubAck (a stored message's or a refusal's), not the 503 of no responders. */
function isPubAck(m: Msg): boolean {
  if (m.headers?.code === 503) return false;
  try {
    const ack = m.json<{ stream?: string; error?: unknown }>();
    return ack.stream !== undefined || ack.error !== undefined;
  } catch {
    return false;
  }
}

/**
 * From `measure(t0)` on, publishes to `subject` of `stream` every 20 ms from a connection to `via` (a node that stays up)
 * until the stream's leader answers (a connection made before the kill).
 * The expected last sequence never matches: the leader answers with an error and stores nothing.
 */
async function electionProbe(cluster: ClusterFixture, via: string, stream: string, subject: string) {
  const bus = await connectBus({ servers: cluster.node(via).url, name: 'bench-probe', log: silentLogger(), credential: cluster.credentials.get('admin')! });
  const h = headers();
  h.set('Nats-Expected-Stream', stream);
  h.set('Nats-Expected-Last-Sequence', String(Number.MAX_SAFE_INTEGER));
  return {
    /** Ms from `t0` (the kill) to the first answer; null after `timeoutMs`. */
    async measure(t0: number, timeoutMs: number): Promise<number | null> {
      try {
        while (Date.now() - t0 < timeoutMs) {
          const sent = Date.now();
          // any PubAck (here always the refusal of the expected sequence) is the leader's; 503 is "no responders"
          const answered = await bus.nc
            .request(subject, '', { headers: h, timeout: 500 })
            .then(isPubAck)
            .catch(() => false);
          if (answered) return sent - t0;
          await new Promise((r) => setTimeout(r, 20));
        }
        return null;
      } finally {
        await bus.close();
      }
    },
  };
}

/**
 * The planner fault: from the kill until a revision written after it (the log's end 200 ms after the kill) is
 * enforced on every cell by the enforcement answer's rule — the other planner has taken the dead one's cells over
 * and published through it (the dead one is not waited for once the live one says so). Null if not while down.
 */
async function takeOverTime(system: ChaosSystem, tKill: number, until: number): Promise<number | null> {
  await new Promise((r) => setTimeout(r, 200));
  const revision = (await system.bus.jsm.streams.info(EVENTS_STREAM)).state.last_seq;
  while (Date.now() < until) {
    const p = await progressOf(system.bus, system.planners.keys(), system.cells, revision).catch(() => undefined);
    if (p?.enforced) return Date.now() - tKill;
    await new Promise((r) => setTimeout(r, 50));
  }
  return null;
}

type Run = {
  fault: Fault;
  what: string;
  results: {
    'election (s)': number | null;
    'take-over while down (s)': number | null;
    'longest write gap (s)': number | null;
    'back up after return (s)': number | null;
    're-converged after return (s)': number | null;
    'slowest reader after return': string;
    'commands acknowledged / sent': string;
    'commands given up': number;
    'ticks dropped (backlog full)': number;
    'lost / duplicated': string;
    'deltas stored out of order': number;
    'converged at the end (s after the load)': number | null;
  };
  /** Failed attempts of the load's commands by answer code, and one answer of each. */
  failures: Record<string, number>;
  failureSamples: Record<string, string>;
  /** Warnings and errors the services logged from the kill on, by process and message. */
  warnings: Record<string, number>;
  /** The wait for the end state: which readers were behind until when (ms), full checks made and abandoned. */
  end: {
    lastBehindMs: Record<string, number>;
    fullChecks: { made: number; stalled: number };
    /** When not converged: each cell's hashes as replayed, planned and applied. */
    cells?: Convergence['cells'];
    error?: string;
  };
  check: { lost: number; duplicated: number; converged: boolean };
};

async function runFault(fault: Fault): Promise<Run> {
  progress(`[${fault}] starting a 3-node cluster and the services`);
  const cluster = await startCluster();
  let sys: ChaosSystem | undefined;
  live.add(cluster);
  try {
    sys = await startChaosSystem(cluster, { cells: settings.CELLS });
    const system = sys;
    live.add(system);
    const load = new ChaosLoad(system, { runningPerCell: 60, policies: 100 });
    let stopLoad = false;
    const loading = load.runRate(settings.RATE, () => stopLoad, settings.MAX_IN_FLIGHT);
    progress(`[${fault}] load at ${settings.RATE}/s, warming up ${settings.WARMUP_S} s`);
    await new Promise((r) => setTimeout(r, settings.WARMUP_S * 1000));

    // ---- the fault ----
    let what: string;
    let victim: string | undefined;
    let probed: { stream: string; subject: string } | undefined;
    const consumerAt = await system.writerConsumerServer();
    if (fault === 'events-leader') {
      victim = await leaderAvoiding(cluster, EVENTS_STREAM, [consumerAt]);
      const meta = await cluster.metaLeader();
      what = `node ${victim}: leader of ${EVENTS_STREAM}${meta === victim ? ' and meta leader' : ''}${victim === consumerAt ? ", writer's consumer" : ''}`;
      probed = { stream: EVENTS_STREAM, subject: 'nf.evt.cell.chaos-probe' };
    } else if (fault === 'writer-consumer') {
      if (!consumerAt) throw new Error("the writer's log consumer was not found");
      victim = consumerAt;
      const leader = await leaderAvoiding(cluster, EVENTS_STREAM, [victim]);
      what = `node ${victim}: the writer's log consumer (${EVENTS_STREAM} led by ${leader})`;
      probed = { stream: EVENTS_STREAM, subject: 'nf.evt.cell.chaos-probe' };
    } else if (fault === 'deltas-leader') {
      const eventsLeader = await cluster.streamLeader(EVENTS_STREAM);
      victim = await leaderAvoiding(cluster, CELL_DELTAS_STREAM, [consumerAt, eventsLeader]);
      what = `node ${victim}: leader of ${CELL_DELTAS_STREAM} (${EVENTS_STREAM} led by ${eventsLeader}, writer's consumer on ${consumerAt})`;
      probed = { stream: CELL_DELTAS_STREAM, subject: 'nf.cell.delta.chaos-probe' };
    } else {
      what = fault === 'planner' ? 'planner p1 (p2 takes its cells over)' : 'the agent of cell-1';
    }
    const via = victim ? cluster.nodes.find((n) => n.name !== victim)!.name : undefined;
    const probe = probed && via ? await electionProbe(cluster, via, probed.stream, probed.subject) : undefined;
    progress(`[${fault}] kill -9 ${what}; down ${settings.DOWN_S} s`);
    const tKill = Date.now();
    if (victim) await cluster.kill(victim);
    else if (fault === 'planner') await system.planners.get('p1')!.kill();
    else await system.agents.get('cell-1')!.kill();
    const election = probe ? probe.measure(tKill, settings.MAX_WAIT_S * 1000) : Promise.resolve(null);
    const takeOver = fault === 'planner' ? await takeOverTime(system, tKill, tKill + settings.DOWN_S * 1000) : null;
    await new Promise((r) => setTimeout(r, Math.max(0, tKill + settings.DOWN_S * 1000 - Date.now())));
    // the return: the moment the node or process is started again (a process's start-up counts in what follows)
    const revision = (await system.bus.jsm.streams.info(EVENTS_STREAM)).state.last_seq;
    const tReturn = Date.now();
    // watched from the return on, while the node or process starts (a planner's start-up takes seconds, during
    // which the other planner keeps serving every cell)
    let tUp: number | undefined;
    const restarting = (victim ? cluster.restart(victim) : fault === 'planner' ? system.startPlanner('p1') : system.startAgent('cell-1')).then(() => {
      tUp = Date.now();
      progress(`[${fault}] back after ${seconds(tUp - tReturn)} s`);
    });
    progress(`[${fault}] restarting; waiting until revision ${revision} is enforced on every cell`);

    // ---- re-convergence: the revision at the return enforced everywhere; when each reader got there ----
    // (direct and stream gets only: the enforcement answer creates consumers, and polling it would load the cluster)
    const readyAt = new Map<string, number>();
    const readers = [...[...system.planners.keys()].map((id) => `planner ${id}`), ...system.cells.map((c) => `cell ${c}`)];
    let reconverged: number | null = null;
    const lastAck = () => Math.max(0, ...load.acked.slice(-50).map((c) => c.ackedAt!));
    for (;;) {
      const now = Date.now();
      if (reconverged === null) {
        const p = await progressOf(system.bus, system.planners.keys(), system.cells, revision).catch(() => undefined);
        if (p) {
          for (const reader of readers) {
            if (p.behind.includes(reader)) readyAt.delete(reader);
            else if (!readyAt.has(reader)) readyAt.set(reader, now - tReturn);
          }
          if (p.enforced) reconverged = now - tReturn;
        }
      }
      const flowing = now - lastAck() < 1000;
      if ((reconverged !== null && flowing && tUp !== undefined && now - tUp >= settings.TAIL_S * 1000) || now - tReturn > settings.MAX_WAIT_S * 1000) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    await restarting;
    stopLoad = true;
    const { sent, dropped } = await loading;
    progress(`[${fault}] load stopped (${sent} sent); settling the commands in flight`);
    await load.settle();
    const tEnd = Date.now();
    const slowest = [...readyAt.entries()].sort((a, b) => b[1] - a[1])[0];

    // ---- the end: converged, the log read back ----
    await cluster.waitHealthy();
    const final = await waitConverged(system.bus, system.planners.keys(), system.cells, settings.MAX_WAIT_S * 1000);
    const logged = await checkLog(system.bus, load.commands);
    let outOfOrder = 0;
    for (const cellId of system.cells) outOfOrder += (await deltasOutOfOrder(system.bus, cellId)).outOfOrder;
    const acks = load.acked
      .map((c) => c.ackedAt!)
      .filter((a) => a >= tKill - 1000 && a <= tEnd)
      .sort((a, b) => a - b);
    let gap = 0;
    for (let i = 1; i < acks.length; i++) gap = Math.max(gap, acks[i]! - acks[i - 1]!);
    const failures: Record<string, number> = {};
    for (const c of load.commands) for (const [code, n] of Object.entries(c.failures)) failures[code] = (failures[code] ?? 0) + n;
    const converged = final.last?.ok === true;
    if (!converged) progress(`[${fault}] NOT converged ${settings.MAX_WAIT_S} s after the load: ${JSON.stringify(final.last?.behind)}`);
    return {
      fault,
      what,
      results: {
        'election (s)': seconds(await election),
        'take-over while down (s)': seconds(takeOver),
        'longest write gap (s)': seconds(gap),
        'back up after return (s)': seconds(tUp === undefined ? null : tUp - tReturn),
        're-converged after return (s)': seconds(reconverged),
        'slowest reader after return': slowest ? `${slowest[0]} (${seconds(slowest[1])} s)` : 'none behind',
        'commands acknowledged / sent': `${load.acked.length} / ${load.commands.length}`,
        'commands given up': load.gaveUp.length,
        'ticks dropped (backlog full)': dropped,
        'lost / duplicated': `${logged.lost.length} / ${logged.duplicated.length}`,
        'deltas stored out of order': outOfOrder,
        'converged at the end (s after the load)': converged ? seconds(final.ms) : null,
      },
      failures,
      failureSamples: load.failureSamples,
      warnings: warningsSince(system.history, tKill),
      end: {
        lastBehindMs: final.lastBehindMs,
        fullChecks: final.fullChecks,
        ...(!converged && { cells: final.last?.cells }),
        ...(final.error && { error: final.error }),
      },
      check: { lost: logged.lost.length, duplicated: logged.duplicated.length, converged },
    };
  } finally {
    if (sys) {
      await sys.stop();
      live.delete(sys);
    }
    await cluster.stop();
    live.delete(cluster);
  }
}

// Interrupted (Ctrl-C): take every process this run started down with it.
const live = new Set<{ stop(): Promise<void> }>();
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    void Promise.all([...live].reverse().map((x) => x.stop().catch(() => undefined))).finally(() => process.exit(130));
  });
}

const runs: Run[] = [];
for (const fault of settings.FAULTS) runs.push(await runFault(fault));
console.log(JSON.stringify({ machine: machine(), settings, runs }, null, 2));
if (process.env.BENCH_FORMAT !== 'json') {
  const keys = Object.keys(runs[0]?.results ?? {}) as (keyof Run['results'])[];
  const cell = (v: unknown) => (v === null ? '—' : String(v));
  console.log(
    [
      '',
      `| measurement | ${runs.map((r) => r.fault).join(' | ')} |`,
      `|---|${runs.map(() => '---|').join('')}`,
      `| killed | ${runs.map((r) => r.what).join(' | ')} |`,
      ...keys.map((k) => `| ${k} | ${runs.map((r) => cell(r.results[k])).join(' | ')} |`),
    ].join('\n'),
  );
}
const broken = runs.filter((r) => r.check.lost > 0 || r.check.duplicated > 0);
if (broken.length > 0) {
  process.stderr.write(`bench: commands lost or stored twice: ${JSON.stringify(broken.map((r) => ({ fault: r.fault, ...r.check })))}\n`);
  process.exitCode = 1;
}
