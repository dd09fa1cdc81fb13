// The topology planner service: restores its checkpoint, follows the event log from there with an ordered
// consumer, and publishes each owned cell's deltas and snapshots in order. Outputs go out with msg ids
// (`d:<cell>:<revision>`, `s:<cell>:<revision>`), and after a restart anything at or below what a cell's
// subjects already hold is not sent again, so a restart from any checkpoint leaves the same outputs as an
// uninterrupted run. A checkpoint is written only once every output it covers is acknowledged.
import { Objm, type ObjectStore } from '@nats-io/obj';
import type { Bus } from '../../runtime/nats.ts';
import type { Config } from '../../runtime/config.ts';
import type { Logger } from '../../runtime/logger.ts';
import { EventLog, LogFollower, type Fold } from '../../runtime/event-log.ts';
import { StreamPublisher } from '../../runtime/nats-adapter.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { Progress } from '../../runtime/progress.ts';
import { Registry } from '../../runtime/metrics.ts';
import { PLANNER_CHECKPOINT_BUCKET } from '../../runtime/subjects.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, EMPTY_CELL_HASH, type PlannerOutput, cellSubject, outputMessage } from '../../projections/cell-stream.ts';
import { lastPublishedPerCell } from './published.ts';
import { type Model, foldEventsInPlace, initialModel, liveModelFold } from '../../projections/model.ts';
import { quarantineGauge, quarantineReporter } from '../../runtime/quarantine-report.ts';
import type { RecordedEvent } from '../../events/catalogue.ts';
import { PlannerCore, type PlannerCheckpoint } from './core.ts';
import { DEFAULT_DOMAIN, emptyCellState } from '../../projections/cell.ts';
import { Membership } from './membership.ts';

export type PlannerConfig = {
  /** Stable instance id: names its checkpoint and its membership entry. */
  plannerId: string;
  domain: string;
  snapshotEvery: number;
  checkpointIntervalMs: number;
  heartbeatMs: number;
  memberTtlMs: number;
  replicas: number;
  /** Most outputs awaiting acknowledgement at once. */
  publishWindow: number;
};

export const defaultPlannerConfig: PlannerConfig = {
  plannerId: 'planner',
  domain: DEFAULT_DOMAIN,
  snapshotEvery: 64,
  checkpointIntervalMs: 5000,
  heartbeatMs: 1000,
  memberTtlMs: 5000,
  replicas: 1,
  publishWindow: 512,
};

/** The planner settings of the shared configuration. */
export function plannerConfigOf(c: Config): PlannerConfig {
  return { ...defaultPlannerConfig, plannerId: c.plannerId, domain: c.domain, replicas: c.replicas, checkpointIntervalMs: c.checkpointIntervalMs };
}

type QueueItem = { output: PlannerOutput } | { checkpoint: { seq: number; json: string } } | { through: number };

export type Planner = {
  core: PlannerCore;
  membership: Membership;
  /** Highest event-log sequence whose outputs are all acknowledged. */
  publishedThrough(): number;
  /** Resolves once every output for events up to `seq` is acknowledged. */
  waitPublished(seq: number, timeoutMs?: number): Promise<void>;
  stats: { deltas: number; snapshots: number; suppressed: number; checkpoints: number };
  stop(): Promise<void>;
};

export async function startPlanner(deps: { bus: Bus; log: Logger; config: PlannerConfig; metrics?: Registry }): Promise<Planner> {
  const cfg = deps.config;
  const log = deps.log.child({ service: 'topology-planner', planner: cfg.plannerId });
  const objects = await withNatsRetry('planner checkpoint bucket', () => new Objm(deps.bus.js).create(PLANNER_CHECKPOINT_BUCKET, { replicas: cfg.replicas }));
  const checkpointName = `planner-${cfg.plannerId}`;
  const checkpoint = await loadCheckpoint(objects, checkpointName);
  const membership = new Membership({ bus: deps.bus, id: cfg.plannerId, log, heartbeatMs: cfg.heartbeatMs, ttlMs: cfg.memberTtlMs, replicas: cfg.replicas });
  await membership.start();
  const coreOptions = { domain: cfg.domain, snapshotEvery: cfg.snapshotEvery, owns: membership.owns };
  const core = checkpoint
    ? new PlannerCore(coreOptions, { checkpoint, model: await foldLogTo(deps.bus, checkpoint.seq, log) })
    : new PlannerCore(coreOptions);
  log.info({ seq: core.seq, cells: Object.keys(core.cells()).length, fromCheckpoint: !!checkpoint }, 'planner-restored');

  const published = {
    delta: await lastPublishedPerCell(deps.bus, 'delta'),
    snapshot: await lastPublishedPerCell(deps.bus, 'snapshot'),
  };
  const deltas = new StreamPublisher(deps.bus.nc, CELL_DELTAS_STREAM);
  const snapshots = new StreamPublisher(deps.bus.nc, CELL_SNAPSHOTS_STREAM);
  const stats = { deltas: 0, snapshots: 0, suppressed: 0, checkpoints: 0 };
  const metrics = deps.metrics ?? new Registry();
  const mFolded = metrics.counter('netfold_planner_events_folded_total', 'events folded by the planner');
  const mOutputs = metrics.counter('netfold_planner_outputs_total', 'per-cell outputs published, by kind');
  metrics.onCollect(() => {
    metrics.gauge('netfold_planner_revision', 'event-log revision folded / published').set({ planner: cfg.plannerId, of: 'folded' }, core.seq);
    metrics.gauge('netfold_planner_revision', 'event-log revision folded / published').set({ planner: cfg.plannerId, of: 'published' }, publishedThrough.value);
    metrics.gauge('netfold_planner_cells_owned', 'cells this planner owns').set({ planner: cfg.plannerId }, Object.keys(core.cells()).length);
    quarantineGauge(metrics, `planner-${cfg.plannerId}`, core.model);
  });

  // ---- the ordered output pipeline ----
  const queue: QueueItem[] = [];
  const publishedThrough = new Progress(core.seq);
  let wakePump: (() => void) | undefined;
  let stopping = false;
  const enqueue = (items: QueueItem[]) => {
    queue.push(...items);
    wakePump?.();
  };
  // Backpressure: when the publisher falls behind, the follower stops reading the log until the queue drains.
  const HIGH_WATER = 20_000;
  let drainedWaiter: (() => void) | undefined;
  const drained = (): Promise<void> | undefined =>
    queue.length < HIGH_WATER ? undefined : new Promise<void>((resolve) => (drainedWaiter = resolve));
  const pump = (async () => {
    const inFlight = new Set<Promise<void>>();
    const settleAll = async () => {
      while (inFlight.size > 0) await Promise.race(inFlight);
      await marks;
    };
    let marks: Promise<void> = Promise.resolve();
    for (;;) {
      const item = queue.shift();
      if (drainedWaiter && queue.length < HIGH_WATER / 2) {
        drainedWaiter();
        drainedWaiter = undefined;
      }
      if (!item) {
        if (stopping) break;
        await new Promise<void>((r) => (wakePump = r));
        wakePump = undefined;
        continue;
      }
      if ('output' in item) {
        const p = publishOutput(item.output).catch((err: unknown) => log.error({ err, cell: item.output.cellId }, 'planner-publish-failed'));
        const tracked = p.finally(() => inFlight.delete(tracked));
        inFlight.add(tracked);
        if (inFlight.size >= cfg.publishWindow) await Promise.race(inFlight);
      } else if ('through' in item) {
        // Not a barrier: the pump goes on publishing while this batch's outputs are acknowledged (waiting here
        // cost a round trip per batch, which capped the planner at a few hundred small batches a second).
        // The chain keeps the marks in order: each waits for the outputs in flight when it was reached.
        const covering = [...inFlight];
        const through = item.through;
        marks = marks
          .then(() => Promise.all(covering))
          .then(() => {
            publishedThrough.advance(Math.max(publishedThrough.value, through));
            membership.reportProgress(publishedThrough.value);
          });
      } else {
        await settleAll();
        await withNatsRetry('planner checkpoint', () => objects.putBlob({ name: checkpointName }, new TextEncoder().encode(item.checkpoint.json)))
          .then(() => {
            stats.checkpoints += 1;
            log.debug({ seq: item.checkpoint.seq }, 'planner-checkpoint-written');
          })
          .catch((err: unknown) => log.error({ err }, 'planner-checkpoint-failed'));
      }
    }
    await settleAll();
  })();

  async function publishOutput(o: PlannerOutput): Promise<void> {
    const kind = o.kind;
    const already = published[kind].get(o.cellId) ?? 0;
    if (o.revision < already || (o.revision === already && kind === 'delta')) {
      stats.suppressed += 1;
      return;
    }
    const { subject, msgId, body } = outputMessage(o);
    await (kind === 'delta' ? deltas : snapshots).publish(subject, body, { msgId });
    if (kind === 'delta') stats.deltas += 1;
    else stats.snapshots += 1;
    mOutputs.inc({ kind });
  }

  // ---- following the log ----
  // A checkpoint is serialized between batches (the core is consistent there) and written by the pump once every
  // output before it is acknowledged.
  let lastCheckpointAt = Date.now();
  let lastCheckpointSeq = core.seq;
  const checkpointIfDue = (force = false): QueueItem[] => {
    if (core.seq <= lastCheckpointSeq || (!force && Date.now() - lastCheckpointAt < cfg.checkpointIntervalMs)) return [];
    lastCheckpointAt = Date.now();
    lastCheckpointSeq = core.seq;
    return [{ checkpoint: { seq: core.seq, json: JSON.stringify(core.checkpoint()) } }];
  };
  const checkpointTimer = setInterval(() => enqueue(checkpointIfDue()), cfg.checkpointIntervalMs);
  const reportQuarantine = quarantineReporter(log);
  reportQuarantine(core.model);
  const fold: Fold<PlannerCore> = {
    initial: () => core,
    apply(c, batch) {
      mFolded.inc({}, batch.length);
      reportQuarantine(c.model);
      const items: QueueItem[] = c.ingest(batch).map((output) => ({ output }));
      items.push({ through: c.seq }, ...checkpointIfDue());
      enqueue(items);
      return c;
    },
    skip(c, seq, subject, error) {
      liveModelFold.skip(c.model, seq, subject, error);
      return c;
    },
    seqOf: (c) => c.seq,
    drained,
  };
  const follower = new LogFollower<PlannerCore>(deps.bus, fold, log, { initialState: core });

  const reconcileOwnership = () => {
    const taken = core.setOwnership(membership.owns);
    if (taken.length > 0) log.info({ cells: taken.map((o) => o.cellId) }, 'planner-cells-taken-over');
    enqueue([...taken.map((output) => ({ output })), { through: core.seq }]);
  };
  reconcileOwnership(); // the members may have changed since the checkpoint
  membership.onChange(reconcileOwnership);
  // Pull access to a cell's current state, for agents that poll (the Cloud Foundry model, kept as a baseline):
  // only the owner answers; the others stay silent.
  const stateRequests = deps.bus.nc.subscribe(cellSubject.allStates, {
    callback: (_err, msg) => {
      const cellId = msg.subject.slice(cellSubject.state('').length);
      if (!membership.owns(cellId) || !msg.reply) return;
      const view = core.cellView(cellId) ?? { revision: 0, hash: EMPTY_CELL_HASH, state: emptyCellState() };
      msg.respond(outputMessage({ kind: 'snapshot', cellId, ...view }).body); // a snapshot body: agents parse it with parseCellSnapshot
    },
  });
  await follower.start();
  log.info({ seq: core.seq, members: membership.members }, 'planner-started');

  return {
    core,
    membership,
    stats,
    publishedThrough: () => publishedThrough.value,
    waitPublished: (seq, timeoutMs = 10_000) => publishedThrough.until((at) => at >= seq, timeoutMs, `planner outputs through ${seq}`),
    async stop() {
      clearInterval(checkpointTimer);
      stateRequests.unsubscribe();
      await follower.stop();
      await membership.stop();
      enqueue(checkpointIfDue(true));
      stopping = true;
      wakePump?.();
      await pump;
      drainedWaiter?.();
      publishedThrough.cancelAll('planner stopped');
      log.info({ seq: core.seq }, 'planner-stopped');
    },
  };
}

async function loadCheckpoint(objects: ObjectStore, name: string): Promise<PlannerCheckpoint | null> {
  const blob = await withNatsRetry('planner checkpoint read', () => objects.getBlob(name));
  if (!blob) return null;
  const cp = JSON.parse(new TextDecoder().decode(blob)) as PlannerCheckpoint;
  return cp.v === 2 ? cp : null; // an older checkpoint format is simply not used: the log is replayed instead
}

/** The model as of `seq`: the log folded up to it, fold only. */
async function foldLogTo(bus: Bus, seq: number, log: Logger): Promise<Model> {
  const model = initialModel();
  let batch: RecordedEvent[] = [];
  for await (const r of new EventLog(bus).read(1, log, seq)) {
    if ('event' in r) {
      batch.push(r);
      if (batch.length < 1000) continue;
    }
    foldEventsInPlace(model, batch);
    batch = [];
    if (!('event' in r)) liveModelFold.skip(model, r.seq, r.subject, r.invalid);
  }
  foldEventsInPlace(model, batch);
  return model;
}
