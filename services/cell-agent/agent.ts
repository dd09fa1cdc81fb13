// The cell agent: follows its cell's desired state (CellFeed), turns it into rules and applies them through a
// dataplane only when they change; repairs drift; reports what it applied (status KV) and publishes its
// containers' discovery names (discovery KV, re-put on every heartbeat). Stopping leaves the rules in place.
//
// Fail closed across restarts: every load is stamped with the revision and hash of the state it enforces (kept in
// the table itself). A (re)started agent that finds a table keeps it, loading nothing and repairing nothing, until
// its feed holds a verified state (from the planner, hash checked) at least as new as that stamp — or exactly the
// stamped one. Only a dataplane with nothing loaded gets the initial (empty, default-deny) rules right away.
import { Kvm } from '@nats-io/kv';
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { CellFeed, PollingCellFeed, type DesiredStateFeed } from './feed.ts';
import { Progress } from '../../runtime/progress.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { BucketWriter } from '../../runtime/buckets.ts';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET, readySubject } from '../../runtime/subjects.ts';
import { idOf } from '../../events/fields.ts';
import type { Dataplane } from './dataplane.ts';
import { type RuleSet, RuleExpander, cellSubnetsOf } from './rules.ts';
import { discoveryRecordOf } from '../../projections/discovery-record.ts';
import { Registry } from '../../runtime/metrics.ts';

export type CellAgentConfig = {
  cellId: string;
  overlayCidr: string;
  driftIntervalMs: number;
  heartbeatMs: number;
  replicas: number;
  /** 0: follow the planner's per-cell stream (netfold). > 0: pull the whole state this often (the Cloud Foundry model, a baseline). */
  pollIntervalMs: number;
  /**
   * CIDRs of this cell's container range (`--cell-subnet`), validated inside the overlay: every address in them is
   * denied from the overlay unless allowed. Empty: unknown, only the known local containers are guarded (warned once).
   */
  subnets: string[];
};

export const defaultCellAgentConfig: Omit<CellAgentConfig, 'cellId'> = { overlayCidr: '10.255.0.0/16', driftIntervalMs: 500, heartbeatMs: 5000, replicas: 1, pollIntervalMs: 0, subnets: [] };

export type CellStatus = {
  cellId: string;
  dataplane: Dataplane['kind'];
  /** Revision and hash of the desired state now enforced. */
  revision: number;
  hash: string;
  appliedAt: string;
  applyMs: number;
  rules: { local: number; allows: number };
  driftRepairs: number;
  /** The last repair: when, and what was found (`table-missing`, `table-changed`, …). */
  lastRepair: { at: string; drift: string } | null;
  error: string | null;
};


export type CellAgent = {
  feed: DesiredStateFeed;
  status(): CellStatus | undefined;
  /** Resolves once the applied revision is at least `revision`. */
  waitApplied(revision: number, timeoutMs?: number): Promise<void>;
  /** Checks for drift now (also done every driftIntervalMs); true when something was repaired. */
  checkDrift(): Promise<boolean>;
  stop(): Promise<void>;
};

/** Makes sure the status and discovery buckets exist (agents then write to them with BucketWriter). */
export async function createBuckets(bus: Bus, replicas: number): Promise<void> {
  const kvm = new Kvm(bus.js);
  await withNatsRetry('cell status bucket', () => kvm.create(CELL_STATUS_BUCKET, { history: 1, replicas }));
  await withNatsRetry('discovery bucket', () => kvm.create(DISCOVERY_BUCKET, { history: 1, replicas }));
}

export async function startCellAgent(deps: { bus: Bus; log: Logger; config: CellAgentConfig; dataplane: Dataplane; metrics?: Registry }): Promise<CellAgent> {
  const { config: cfg, dataplane } = deps;
  const log = deps.log.child({ service: 'cell-agent', cell: cfg.cellId });
  await createBuckets(deps.bus, cfg.replicas);
  const buckets = { status: new BucketWriter(deps.bus.nc, CELL_STATUS_BUCKET), discovery: new BucketWriter(deps.bus.nc, DISCOVERY_BUCKET) };
  const metrics = deps.metrics ?? new Registry();
  const cell = { cell: cfg.cellId };
  const mApply = metrics.histogram('netfold_agent_apply_seconds', 'time to load a rule change into the dataplane');
  const mPropagation = metrics.histogram('netfold_propagation_seconds', 'from an event being decided to its rules being applied on the cell');
  const mRules = metrics.gauge('netfold_agent_rules', 'rules enforced on the cell, by kind (local destinations, allowed flows)');
  const mRepairs = metrics.counter('netfold_agent_drift_repairs_total', 'dataplane drift detected and repaired');
  const mErrors = metrics.counter('netfold_agent_apply_errors_total', 'rule loads that failed');
  const feed: DesiredStateFeed = cfg.pollIntervalMs > 0 ? new PollingCellFeed(deps.bus, cfg.cellId, log, cfg.pollIntervalMs) : new CellFeed(deps.bus, cfg.cellId, log, metrics);
  /** What is enforced now: the applied revision and the containers it covers. */
  const applied = new Progress<{ revision: number; containers: ReadonlySet<string> }>({ revision: -1, containers: new Set() });
  let status: CellStatus | undefined;
  /** The rule set last loaded into the dataplane. */
  let lastRules: RuleSet | undefined;
  const expander = new RuleExpander();
  let driftRepairs = 0;
  let lastRepair: CellStatus['lastRepair'] = null;
  /** Set by a drift check: apply even if the rules did not change (survives an apply already in flight). */
  let reload = false;
  let checking = false;
  let dirty = true;
  let publishedNames = -1;
  let running: Promise<void> | undefined;
  let stopped = false;
  let subnetWarned = false;
  /**
   * What the dataplane held when this agent started, until the first load replaces it: that load must be a
   * verified state at least as new as its stamp (or exactly the stamped state). Undefined: nothing to protect.
   */
  let adopting: { stamp: { revision: number; hash: string } | null } | undefined = (await dataplane.found()) ?? undefined;
  let heldLogged = false;
  if (adopting) log.info({ tableRevision: adopting.stamp?.revision ?? null, tableHash: adopting.stamp?.hash ?? null }, 'table-found');

  const publishDiscovery = () =>
    buckets.discovery.put(cfg.cellId, JSON.stringify(discoveryRecordOf(cfg.cellId, new Date(), feed.view.state.names))).catch((err: unknown) => log.warn({ err }, 'discovery-put-failed'));

  async function applyLatest(): Promise<void> {
    while (dirty && !stopped) {
      dirty = false;
      const view = feed.view;
      if (adopting) {
        const stamp = adopting.stamp;
        const same = stamp !== null && view.revision === stamp.revision && view.hash === stamp.hash;
        if (!same && (!view.verified || view.revision < (stamp?.revision ?? 0))) {
          // Keep the table found: loading this state could weaken it (an older or unverified state).
          if (!heldLogged) log.info({ tableRevision: stamp?.revision ?? null, revision: view.revision, verified: view.verified }, 'table-kept');
          heldLogged = true;
          continue;
        }
        log.info({ tableRevision: stamp?.revision ?? null, revision: view.revision }, 'table-adopted');
        adopting = undefined;
      }
      const t0 = performance.now();
      const subnets = cellSubnetsOf(view.state, cfg.cellId, cfg.subnets);
      if (subnets.length === 0 && !subnetWarned) {
        subnetWarned = true;
        log.warn({ overlayCidr: cfg.overlayCidr }, 'cell-subnet-unknown'); // only the known local containers are guarded
      }
      // The same RuleSet object back means nothing the rules depend on changed since the last expansion.
      const rules: RuleSet = expander.expand(view.state, subnets);
      // the feed's state changes in place: the containers these rules cover are taken now, for the ready gate
      const covered = new Set(Object.keys(view.state.containers));
      let error: string | null = null;
      if (rules !== lastRules || reload) {
        reload = false;
        try {
          await dataplane.apply(rules, { revision: view.revision, hash: view.hash });
          lastRules = rules;
          mApply.observe(cell, (performance.now() - t0) / 1000);
          if (view.eventAt) mPropagation.observe(cell, Math.max(0, Date.now() - Date.parse(view.eventAt)) / 1000);
          log.info({ revision: view.revision, allows: rules.allows.length, ms: Math.round(performance.now() - t0) }, 'rules-applied');
        } catch (err) {
          error = err instanceof Error ? err.message : String(err);
          mErrors.inc(cell);
          log.error({ err, revision: view.revision }, 'rules-apply-failed');
        }
      }
      status = {
        cellId: cfg.cellId,
        dataplane: dataplane.kind,
        revision: error ? (status?.revision ?? 0) : view.revision,
        hash: error ? (status?.hash ?? '') : view.hash,
        appliedAt: new Date().toISOString(),
        applyMs: Math.round((performance.now() - t0) * 10) / 10,
        rules: { local: rules.local.length, allows: rules.allows.length },
        driftRepairs,
        lastRepair,
        error,
      };
      mRules.set({ ...cell, kind: 'local' }, rules.local.length);
      mRules.set({ ...cell, kind: 'allows' }, rules.allows.length);
      await buckets.status.put(cfg.cellId, JSON.stringify(status)).catch((err: unknown) => log.warn({ err }, 'status-put-failed'));
      if (!error) {
        // Before announcing the revision: "applied" includes the names; unchanged names need no put (the heartbeat
        // re-puts them).
        if (view.namesSeq !== publishedNames) {
          await publishDiscovery();
          publishedNames = view.namesSeq;
        }
        applied.advance({ revision: view.revision, containers: covered });
      }
    }
  }
  const schedule = () => {
    dirty = true;
    running ??= applyLatest().finally(() => {
      running = undefined;
      if (dirty && !stopped) schedule();
    });
  };

  async function checkDrift(): Promise<boolean> {
    if (stopped || checking) return false;
    checking = true;
    try {
      if (!(await dataplane.drifted())) return false;
      const drift = dataplane.lastDrift ?? 'unknown';
      log.warn({ drift }, 'drift-detected');
      reload = true;
      schedule();
      await running; // the loop runs until the reload has been applied
      // Counted once repaired, so a status showing the repair means the rules are back.
      driftRepairs += 1;
      lastRepair = { at: new Date().toISOString(), drift };
      mRepairs.inc(cell);
      if (status) {
        status = { ...status, driftRepairs, lastRepair };
        await buckets.status.put(cfg.cellId, JSON.stringify(status)).catch((err: unknown) => log.warn({ err }, 'status-put-failed'));
      }
      log.info({ repairs: driftRepairs, drift }, 'drift-repaired');
      return true;
    } finally {
      checking = false;
    }
  }

  // Ready gate: answered as soon as the container's policy is enforced here (or after the caller's timeout).
  const ready = deps.bus.nc.subscribe(readySubject(cfg.cellId), {
    callback: (_err, msg) => {
      void (async () => {
        let body: { containerId?: unknown; timeoutMs?: unknown } = {};
        try {
          body = msg.json();
        } catch {
          return msg.respond(JSON.stringify({ ready: false, code: 'invalid-json', error: 'request body is not valid JSON' }));
        }
        const issues: { path: string; message: string }[] = [];
        const containerId = idOf(body.containerId, 'containerId', issues);
        const timeoutMs = typeof body.timeoutMs === 'number' && body.timeoutMs >= 0 && body.timeoutMs <= 60_000 ? body.timeoutMs : 10_000;
        if (issues.length > 0) return msg.respond(JSON.stringify({ ready: false, code: 'invalid-input', error: issues.map((i) => `${i.path}: ${i.message}`).join('; ') }));
        try {
          await applied.until((a) => a.containers.has(containerId), timeoutMs, `container ${containerId} on ${cfg.cellId}`);
          msg.respond(JSON.stringify({ ready: true, cellId: cfg.cellId, revision: applied.value.revision }));
        } catch {
          msg.respond(JSON.stringify({ ready: false, code: 'timeout', error: `container ${containerId} is not enforced on ${cfg.cellId} yet` }));
        }
      })();
    },
  });

  feed.onChange(schedule);
  await feed.start();
  schedule();
  await running;
  const driftTimer = setInterval(() => {
    if (status?.error) {
      reload = true; // the last apply failed: try again
      schedule();
    }
    void checkDrift().catch((err: unknown) => log.error({ err }, 'drift-check-failed'));
  }, cfg.driftIntervalMs);
  const heartbeat = setInterval(() => void publishDiscovery(), cfg.heartbeatMs);
  log.info({ revision: feed.view.revision, dataplane: dataplane.kind, pollIntervalMs: cfg.pollIntervalMs }, 'cell-agent-started');

  return {
    feed,
    status: () => status,
    waitApplied: (revision, timeoutMs = 10_000) => applied.until((a) => a.revision >= revision, timeoutMs, `cell ${cfg.cellId} applied revision ${revision}`),
    checkDrift,
    async stop() {
      stopped = true;
      ready.unsubscribe();
      clearInterval(driftTimer);
      clearInterval(heartbeat);
      await feed.stop();
      await running;
      applied.cancelAll('cell agent stopped');
      log.info('cell-agent-stopped'); // the rules stay in place: containers keep their policy while we are away
    },
  };
}
