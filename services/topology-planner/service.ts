// The topology planner service: restores its checkpoint, follows the event log from there with an ordered
// consumer, and publishes each owned cell's deltas and snapshots in order. Outputs go out with msg ids
// (`d:<cell>:<revision>`, `s:<cell>:<revision>`). At start it reads what the cell streams hold (each cell's head:
// its last delta or snapshot); the core continues every cell's chain from its head, and anything at or below a
// head is not sent again, so a restart from any checkpoint leaves every cell's stored chain unbroken. A checkpoint
// is written only once every output it covers is acknowledged.
import type { Subscription } from '@nats-io/nats-core';
import type { Bus } from '../../runtime/nats.ts';
import type { Config } from '../../runtime/config.ts';
import type { Logger } from '../../runtime/logger.ts';
import { EventLog, LogFollower, foldLog, type Fold } from '../../runtime/event-log.ts';
import { Registry } from '../../runtime/metrics.ts';
import { EVENTS_STREAM } from '../../runtime/subjects.ts';
import { quarantineGauge, quarantineReporter } from '../../runtime/quarantine-report.ts';
import { EMPTY_CELL_HASH, cellSubject, outputMessage } from '../../projections/cell-stream.ts';
import { initialModel, liveModelFold } from '../../projections/model.ts';
import { DEFAULT_DOMAIN, emptyCellState } from '../../projections/cell.ts';
import { PlannerCore } from './core.ts';
import { CheckpointStore, Checkpointer } from './checkpointer.ts';
import { OutputPump, type PumpItem } from './output-pump.ts';
import { publishedHeads } from './published.ts';
import { OutputPublisher } from './output-publisher.ts';
import { DEFAULT_MEMBER_DEAD_MS, Membership } from './membership.ts';

export type PlannerConfig = {
  /** Stable instance id: names its checkpoint and its membership entry. */
  plannerId: string;
  domain: string;
  snapshotEvery: number;
  checkpointIntervalMs: number;
  heartbeatMs: number;
  memberTtlMs: number;
  /** A member whose heartbeat has not changed for this long (while this planner's own were stored) is dead. */
  memberDeadMs: number;
  /** Events ahead at start beyond which a lone planner folds first and takes its cells over (see startPlanner). */
  foldFirstAfter: number;
  /** Events behind the log beyond which the planner folds without deriving, then settles its cells at once. */
  fastForwardAfter: number;
  /**
   * A fast-forwarded planner settles once the log has been quiet this long after it caught up (ms), or after 100,000
   * events fast-forwarded: a bulk change still being written is not settled again and again on the way.
   */
  settleQuietMs: number;
  replicas: number;
  /** Most outputs awaiting acknowledgement at once. */
  publishWindow: number;
};

/** Cells a settle derives per turn of the event loop (a few ms each at 50 containers a cell). */
const SETTLE_CHUNK = 50;

export const defaultPlannerConfig: PlannerConfig = {
  plannerId: 'planner',
  domain: DEFAULT_DOMAIN,
  snapshotEvery: 64,
  checkpointIntervalMs: 5000,
  heartbeatMs: 300,
  memberTtlMs: 5000,
  memberDeadMs: DEFAULT_MEMBER_DEAD_MS,
  foldFirstAfter: 50_000,
  fastForwardAfter: 5_000,
  settleQuietMs: 200,
  replicas: 1,
  publishWindow: 512,
};

/** The planner settings of the shared configuration. */
export function plannerConfigOf(c: Config): PlannerConfig {
  return { ...defaultPlannerConfig, plannerId: c.plannerId, domain: c.domain, replicas: c.replicas, checkpointIntervalMs: c.checkpointIntervalMs };
}

export type Planner = {
  core: PlannerCore;
  membership: Membership;
  /** Highest event-log sequence whose outputs are all acknowledged. */
  publishedThrough(): number;
  /** Resolves once every output for events up to `seq` is acknowledged. */
  waitPublished(seq: number, timeoutMs?: number): Promise<void>;
  stats: { deltas: number; snapshots: number; suppressed: number; checkpoints: number; fastForwarded: number };
  /** How it caught up at start: joined at once (continuing its cells' chains), or folded first and took them over. */
  catchUp: 'joined-first' | 'folded-first';
  stop(): Promise<void>;
};

/**
 * Wires the planner's parts: its checkpoint (CheckpointStore, Checkpointer), membership (which cells it owns), the
 * core (the fold and per-cell outputs, resumed from the checkpoint), the publisher of outputs (not sending again what
 * the streams hold), the ordered OutputPump, the log follower driving the core, and the state responder.
 */
export async function startPlanner(deps: { bus: Bus; log: Logger; config: PlannerConfig; metrics?: Registry }): Promise<Planner> {
  const cfg = deps.config;
  const log = deps.log.child({ service: 'topology-planner', planner: cfg.plannerId });
  const store = await CheckpointStore.open(deps.bus, cfg.plannerId, cfg.replicas);
  const checkpoint = await store.load();
  const membership = new Membership({
    bus: deps.bus,
    id: cfg.plannerId,
    log,
    heartbeatMs: cfg.heartbeatMs,
    ttlMs: cfg.memberTtlMs,
    deadMs: cfg.memberDeadMs,
    replicas: cfg.replicas,
  });
  // How to catch up (docs/architecture.md, "Planner start"): joining at once, this planner owns its cells while it
  // folds the log and continues their stored chains from the heads; folding first, it owns nothing and derives
  // nothing until it has caught up, then joins and takes its cells over (a snapshot and a link delta each). It folds
  // first when other planners serve the cells meanwhile, or when the log ahead is long (deriving per event would keep
  // the cells waiting longer than a take-over costs their agents).
  const peers = await membership.peers();
  const coreOptions = { domain: cfg.domain, snapshotEvery: cfg.snapshotEvery, owns: membership.owns };
  const resume = checkpoint
    ? { checkpoint, model: await foldLog(new EventLog(deps.bus), liveModelFold, initialModel({ subjectSeqs: false }), { toSeq: checkpoint.seq, log }) }
    : undefined;
  const ahead = (await deps.bus.jsm.streams.info(EVENTS_STREAM)).state.last_seq - (resume?.model.seq ?? 0);
  let joined = peers.length === 0 && ahead <= cfg.foldFirstAfter;
  const catchUp = joined ? 'joined-first' : 'folded-first';
  if (joined) await membership.start();
  // Each cell's head in the cell streams, read after the fold (a previous owner of a cell has had the most time to stop).
  const { heads, lastSeq } = await publishedHeads(deps.bus);
  const core = new PlannerCore(coreOptions, resume, heads);
  if (!joined) core.setOwnership(() => false); // the checkpoint's cells are taken over at the join instead
  log.info(
    { seq: core.seq, cells: Object.keys(core.cells()).length, heads: heads.size, fromCheckpoint: !!checkpoint, ahead, peers, foldFirst: !joined },
    'planner-restored',
  );

  const publisher = new OutputPublisher(deps.bus, heads, lastSeq, log);
  const pump = new OutputPump({
    // Fenced per subject (output-publisher.ts): an output is stored right after what its subject held, or dropped
    // when the subject holds a newer plan of the cell.
    publish: async (o) => void (await publisher.publish(o)),
    writeCheckpoint: (_seq, json) => store.write(json),
    window: cfg.publishWindow,
    // The follower waits while more outputs are queued (beyond those in flight) than two per cell, or 256: when the
    // cell streams cannot store (a stream leader lost), events are then read on in larger batches once they can,
    // not folded one batch per turn into thousands of one-event deltas that each cell's chain publishes one round
    // trip at a time (bench:chaos, deltas-leader). A settle holds the follower anyway.
    highWater: () => Math.max(256, 2 * core.cellCount),
    from: core.seq,
    onPublishedThrough: (seq, members) => membership.reportProgress(seq, members),
    log,
  });
  const checkpointer = new Checkpointer(core, cfg.checkpointIntervalMs);
  const checkpointTimer = setInterval(() => pump.enqueue(checkpointer.due()), cfg.checkpointIntervalMs);

  const metrics = deps.metrics ?? new Registry();
  const mFolded = metrics.counter('netfold_planner_events_folded_total', 'events folded by the planner');
  publisher.countInto(metrics.counter('netfold_planner_outputs_total', 'per-cell outputs published, by kind'));
  metrics.onCollect(() => {
    metrics.gauge('netfold_planner_revision', 'event-log revision folded / published').set({ planner: cfg.plannerId, of: 'folded' }, core.seq);
    metrics
      .gauge('netfold_planner_revision', 'event-log revision folded / published')
      .set({ planner: cfg.plannerId, of: 'published' }, pump.publishedThrough.value);
    metrics.gauge('netfold_planner_cells_owned', 'cells this planner owns').set({ planner: cfg.plannerId }, Object.keys(core.cells()).length);
    metrics
      .gauge('netfold_planner_fast_forwarded_events', 'events folded without deriving cells (far behind the log, or before joining)')
      .set({ planner: cfg.plannerId }, core.fastForwarded);
    quarantineGauge(metrics, `planner-${cfg.plannerId}`, core.model);
  });

  // ---- following the log: the core folds each batch, its outputs and a "published through" mark go to the pump ----
  const reportQuarantine = quarantineReporter(log);
  reportQuarantine(core.model);
  // Settling after a fast-forward derives every owned cell (seconds at 1,000 cells): done SETTLE_CHUNK cells per turn
  // of the event loop, so heartbeats, the state responder and acknowledgements go on, with the follower held until
  // the pass ends (drained); its "published through" mark follows the last cell.
  let settling: Promise<void> | undefined;
  let stopped = false;
  let settledAt = 0; // events fast-forwarded before the last settle (for the log)
  let quiet: NodeJS.Timeout | undefined; // a settle waiting for the log to stay quiet
  const settleInTurns = () => {
    clearTimeout(quiet);
    quiet = undefined;
    settling ??= new Promise<void>((resolve) => {
      const t0 = performance.now();
      const step = () => {
        pump.enqueue(core.settle(SETTLE_CHUNK).map((output) => ({ output })));
        if (core.stale && !stopped) return void setImmediate(step);
        const ff = core.fastForwarded;
        log.info({ seq: core.seq, fastForwarded: ff - settledAt, ms: Math.round(performance.now() - t0) }, 'planner-settled');
        settledAt = ff;
        if (!core.stale) pump.enqueue([{ through: core.seq }, ...checkpointer.due()]);
        settling = undefined;
        resolve();
      };
      step();
    });
  };
  const fold: Fold<PlannerCore> = {
    initial: () => core,
    apply(c, batch) {
      mFolded.inc({}, batch.length);
      const behind = follower.behind;
      const items: PumpItem[] = [];
      // Far behind (a bulk change, a long catch-up): fold only, and bring every owned cell up at once when caught up
      // (PlannerCore.settle: one delta per changed cell); nothing is marked published meanwhile. Worth it when the
      // events ahead outnumber a few times the cells (deriving a cell whole costs about what deriving 4 events does).
      const ahead = batch.length + behind;
      const far = Math.max(cfg.fastForwardAfter, 4 * c.cellCount);
      if (!joined || c.stale || ahead > far) {
        c.fastForward(batch);
        // Caught up, and the log then quiet for settleQuietMs (a bulk change may still be being written: one settle
        // per catch-up made three of a 65,000-command load, each seconds of CPU for the planner and the agents), or
        // after a long run of fast-forwarding, so cells never wait for ever: settle, then ingest.
        clearTimeout(quiet);
        quiet = undefined;
        if (joined && c.stale && c.fastForwarded - settledAt > 100_000) settleInTurns();
        else if (joined && c.stale && behind === 0) quiet = setTimeout(settleInTurns, cfg.settleQuietMs);
      } else {
        items.push(...c.ingest(batch).map((output) => ({ output })));
      }
      reportQuarantine(c.model);
      if (!c.stale) items.push({ through: c.seq }, ...checkpointer.due()); // (stale: nothing about its cells is published yet)
      pump.enqueue(items);
      return c;
    },
    skip(c, seq, subject, error) {
      liveModelFold.skip(c.model, seq, subject, error);
      return c;
    },
    seqOf: (c) => c.seq,
    drained: () => settling ?? pump.drained(),
  };
  const follower = new LogFollower<PlannerCore>(deps.bus, fold, log, { initialState: core, metrics });

  const reconcileOwnership = () => {
    const taken = core.setOwnership(membership.owns);
    if (taken.length > 0) log.info({ cells: taken.map((o) => o.cellId) }, 'planner-cells-taken-over');
    pump.enqueue([...taken.map((output) => ({ output })), { through: core.seq, members: membership.members }]);
  };
  if (joined) reconcileOwnership(); // the members may have changed since the checkpoint
  membership.onChange(reconcileOwnership);
  const stateResponder = serveCellState(deps.bus, membership.owns, core);
  await follower.start();
  if (!joined) {
    await membership.start();
    joined = true; // between two batches: the next is ingested, and the cells owned now are taken over first
    reconcileOwnership();
  }
  log.info({ seq: core.seq, members: membership.members }, 'planner-started');

  return {
    core,
    membership,
    stats: {
      get deltas() {
        return publisher.stats.deltas;
      },
      get snapshots() {
        return publisher.stats.snapshots;
      },
      get suppressed() {
        return publisher.stats.suppressed;
      },
      get checkpoints() {
        return pump.stats.checkpoints;
      },
      get fastForwarded() {
        return core.fastForwarded;
      },
    },
    catchUp,
    publishedThrough: () => pump.publishedThrough.value,
    waitPublished: (seq, timeoutMs = 10_000) => pump.publishedThrough.until((at) => at >= seq, timeoutMs, `planner outputs through ${seq}`),
    async stop() {
      stopped = true;
      clearTimeout(quiet);
      clearInterval(checkpointTimer);
      stateResponder.unsubscribe();
      await follower.stop();
      await membership.stop();
      publisher.close();
      pump.enqueue(checkpointer.due(true));
      await pump.stop();
      log.info({ seq: core.seq }, 'planner-stopped');
    },
  };
}

/**
 * Pull access to a cell's current state, for agents that poll (the Cloud Foundry model, kept as a baseline): only
 * the owner answers, with a snapshot body (agents parse it with parseCellSnapshot); the others stay silent.
 */
function serveCellState(bus: Bus, owns: (cellId: string) => boolean, core: PlannerCore): Subscription {
  return bus.nc.subscribe(cellSubject.allStates, {
    callback: (_err, msg) => {
      const cellId = msg.subject.slice(cellSubject.state('').length);
      if (!owns(cellId) || !msg.reply) return;
      const view = core.cellView(cellId) ?? { revision: 0, hash: EMPTY_CELL_HASH, state: emptyCellState() };
      msg.respond(outputMessage({ kind: 'snapshot', cellId, ...view }).body);
    },
  });
}
