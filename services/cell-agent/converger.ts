// The converger: the feed's view → rules → the dataplane, only when the rules change. The expander keeps the
// cell's expansion and updates it from what changed; the dataplane gets that difference (a whole load only for the
// first load, after drift or a failed load, or when the dataplane cannot apply a difference). It owns what is enforced:
// the rules loaded, the fail-closed adoption of a table found at start (`adoptionOf`), the drift checks and
// repairs, and the enforced revision with the containers it covers (what the ready gate and `waitApplied` wait on).
// One pass at a time: a change while a pass runs makes the loop run again with the latest view. After every pass
// it hands the outcome to `passed` (the status record); after a successful one, `applied` runs before the revision
// is announced (the discovery names); after a repair, `repaired`.
import type { Logger } from '../../runtime/logger.ts';
import { Progress } from '../../runtime/progress.ts';
import { Registry } from '../../runtime/metrics.ts';
import type { Dataplane, FoundTable } from './dataplane.ts';
import type { CellView } from './feed.ts';
import { type AppliedStamp, RuleExpander, cellSubnetsOf } from './rules.ts';
import { adoptionOf } from './adoption.ts';
import { type EgressEnforcer, egressCounts } from './egress.ts';
import type { EgressStatus } from './status.ts';

/** What is enforced now: the applied revision and the containers it covers. */
export type Enforced = { revision: number; containers: ReadonlySet<string> };
/** Read access to the enforced state: its value, and a wait until a condition holds. */
export type EnforcedProgress = Pick<Progress<Enforced>, 'value' | 'until'>;

/** Drift repaired so far and the last repair (`at`, and what was found: `table-missing`, `table-changed`, …). */
export type Repairs = { count: number; last: { at: string; drift: string } | null };

/** The outcome of one pass that reached the dataplane (a pass keeping a found table has none). */
export type ConvergePass = {
  view: CellView;
  /** How many local addresses and allowed flows the cell's rules have. */
  rules: { local: number; allows: number };
  /** The load's error; null when loaded, or when nothing needed loading. */
  error: string | null;
  /** When the pass ended (ISO) and how long it took (ms, one decimal). */
  at: string;
  applyMs: number;
  repairs: Repairs;
  /** What the egress table holds after the pass (absent: this agent enforces no egress). */
  egress?: EgressStatus;
};

export type ConvergerOptions = {
  cellId: string;
  overlayCidr: string;
  /** The configured cell range (`--cell-subnet`), used while the cell's registration is not known. */
  subnets: readonly string[];
  driftIntervalMs: number;
  dataplane: Dataplane;
  /** Egress (application security groups), in its own table; absent: not enforced by this agent. */
  egress?: EgressEnforcer;
  /** What the dataplane held at start (`dataplane.found()`): kept until a view may replace it. */
  found: FoundTable;
  /** The desired state, read at each pass (the feed's state changes in place). */
  feed: { readonly view: CellView };
  log: Logger;
  metrics: Registry;
  passed?: (pass: ConvergePass) => Promise<void>;
  applied?: (view: CellView) => Promise<void>;
  repaired?: (repairs: Repairs) => Promise<void>;
};

export class Converger {
  readonly #o: ConvergerOptions;
  readonly #log: Logger;
  readonly #cell: { cell: string };
  readonly #m: ReturnType<typeof convergerMetrics>;
  readonly #expander = new RuleExpander();
  readonly #enforced = new Progress<Enforced>({ revision: -1, containers: new Set() });
  /**
   * What the dataplane held when this agent started, until the first load replaces it: that load must be a
   * verified state at least as new as its stamp (or exactly the stamped state). Undefined: nothing to protect.
   */
  #adopting: { stamp: AppliedStamp | null } | undefined;
  #keptLogged = false;
  /** A load succeeded and none failed since: the dataplane holds the expander's rules (else the next pass loads). */
  #loaded = false;
  /** Set by a drift check or a retry: load the rules whole even if they did not change (survives an apply already in flight). */
  #reload = false;
  #dirty = true;
  #running: Promise<void> | undefined;
  #checking = false;
  #stopped = false;
  #subnetWarned = false;
  /** The last pass's load failed: the next tick tries again. */
  #failed = false;
  #repairs: Repairs = { count: 0, last: null };
  #timer: NodeJS.Timeout | undefined;
  /** No periodic drift check before this (ms since the epoch): a check may take at most DRIFT_CHECK_SHARE of the time. */
  #nextDriftCheck = 0;

  constructor(opts: ConvergerOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'converger' });
    this.#cell = { cell: opts.cellId };
    this.#m = convergerMetrics(opts.metrics);
    this.#adopting = opts.found ?? undefined;
    const stamp = this.#adopting?.stamp;
    if (this.#adopting) this.#log.info({ tableRevision: stamp?.revision ?? null, tableHash: stamp?.hash ?? null }, 'table-found');
  }

  /** What is enforced now, for the ready gate and `waitApplied`. */
  get enforced(): EnforcedProgress {
    return this.#enforced;
  }

  get repairs(): Repairs {
    return this.#repairs;
  }

  /** A pass with the latest view soon (the feed changed); one pass runs at a time. */
  readonly schedule = (): void => {
    this.#dirty = true;
    this.#running ??= this.#converge().finally(() => {
      this.#running = undefined;
      if (this.#dirty && !this.#stopped) this.schedule();
    });
  };

  /** Runs a pass now and waits for the loop to end. */
  async converge(): Promise<void> {
    this.schedule();
    await this.#running;
  }

  /** The first pass, then a tick every `driftIntervalMs`. */
  async start(): Promise<void> {
    await this.converge();
    this.#timer = setInterval(() => this.tick(), this.#o.driftIntervalMs);
  }

  /**
   * The periodic work: retry a failed load, check for drift — less often than every tick when checks take long (a
   * large table lists slowly): at most DRIFT_CHECK_SHARE of the time goes to them.
   */
  tick(): void {
    if (this.#failed) {
      this.#reload = true; // the last apply failed: try again
      this.schedule();
    }
    if (Date.now() < this.#nextDriftCheck) return;
    void this.checkDrift().catch((err: unknown) => this.#log.error({ err }, 'drift-check-failed'));
  }

  async #converge(): Promise<void> {
    while (this.#dirty && !this.#stopped) {
      this.#dirty = false;
      const view = this.#o.feed.view;
      if (this.#adopting) {
        const stamp = this.#adopting.stamp;
        if (adoptionOf(stamp, view) === 'keep') {
          // Keep the table found: loading this state could weaken it (an older or unverified state).
          if (!this.#keptLogged) this.#log.info({ tableRevision: stamp?.revision ?? null, revision: view.revision, verified: view.verified }, 'table-kept');
          this.#keptLogged = true;
          continue;
        }
        this.#log.info({ tableRevision: stamp?.revision ?? null, revision: view.revision }, 'table-adopted');
        this.#adopting = undefined;
      }
      await this.#pass(view);
    }
  }

  async #pass(view: CellView): Promise<void> {
    const t0 = performance.now();
    const subnets = cellSubnetsOf(view.state, this.#o.cellId, this.#o.subnets);
    if (subnets.length === 0 && !this.#subnetWarned) {
      this.#subnetWarned = true;
      this.#log.warn({ overlayCidr: this.#o.overlayCidr }, 'cell-subnet-unknown'); // only the known local containers are guarded
    }
    const diff = this.#expander.update(view.state, subnets);
    const counts = this.#expander.counts;
    // the feed's state changes in place: the containers these rules cover are taken now, for the ready gate
    const covered = new Set(Object.keys(view.state.containers));
    let error: string | null = null;
    if (diff || this.#reload || !this.#loaded) {
      const whole = this.#reload || !this.#loaded;
      this.#reload = false;
      this.#loaded = false;
      try {
        const stamp = { revision: view.revision, hash: view.hash };
        const changed = !whole && diff !== null && (await this.#o.dataplane.change(diff, stamp));
        if (!changed) await this.#o.dataplane.apply(this.#expander.rules, stamp);
        this.#loaded = true;
        this.#m.apply.observe(this.#cell, (performance.now() - t0) / 1000);
        if (view.eventAt) this.#m.propagation.observe(this.#cell, Math.max(0, Date.now() - Date.parse(view.eventAt)) / 1000);
        const ms = Math.round(performance.now() - t0);
        const what = changed ? { added: diff.added.length, removed: diff.removed.length } : { whole: true };
        this.#log.info({ revision: view.revision, allows: counts.allows, ...what, ms }, 'rules-applied');
      } catch (err) {
        error = err instanceof Error ? err.message : String(err);
        this.#m.errors.inc(this.#cell);
        this.#log.error({ err, revision: view.revision }, 'rules-apply-failed');
      }
    }
    if (this.#o.egress) error = (await this.#egress(this.#o.egress, view, subnets)) ?? error;
    this.#failed = error !== null;
    const pass: ConvergePass = {
      view,
      rules: counts,
      error,
      at: new Date().toISOString(),
      applyMs: Math.round((performance.now() - t0) * 10) / 10,
      repairs: this.#repairs,
    };
    const egressPlan = this.#o.egress?.applied;
    if (egressPlan) pass.egress = { ...egressCounts(egressPlan), refused: egressPlan.refused.length };
    this.#m.rules.set({ ...this.#cell, kind: 'local' }, counts.local);
    this.#m.rules.set({ ...this.#cell, kind: 'allows' }, counts.allows);
    await this.#o.passed?.(pass);
    if (!error) {
      await this.#o.applied?.(view);
      this.#enforced.advance({ revision: view.revision, containers: covered });
    }
  }

  /** Brings the egress table to the view; the error's text when the load failed (the next tick loads it whole). */
  async #egress(egress: EgressEnforcer, view: CellView, subnets: readonly string[]): Promise<string | null> {
    const t0 = performance.now();
    try {
      const how = await egress.converge(view.state, subnets);
      if (how !== 'none') {
        const ms = Math.round(performance.now() - t0);
        this.#log.info({ revision: view.revision, how, ms, refused: egress.lastRefused.length }, 'egress-applied');
      }
      return null;
    } catch (err) {
      this.#m.errors.inc(this.#cell);
      this.#log.error({ err, revision: view.revision }, 'egress-apply-failed');
      return err instanceof Error ? err.message : String(err);
    }
  }

  /** Checks for drift now (also done every tick); true when something was repaired. */
  async checkDrift(): Promise<boolean> {
    if (this.#stopped || this.#checking) return false;
    this.#checking = true;
    try {
      const t0 = Date.now();
      const drifted = await this.#o.dataplane.drifted();
      const egressDrift = drifted ? undefined : await this.#o.egress?.drifted();
      this.#nextDriftCheck = Date.now() + (Date.now() - t0) * (1 / DRIFT_CHECK_SHARE - 1);
      if (!drifted && !egressDrift) return false;
      const drift = egressDrift ?? this.#o.dataplane.lastDrift ?? 'unknown';
      this.#log.warn({ drift }, 'drift-detected');
      this.#reload = true;
      this.schedule();
      await this.#running; // the loop runs until the reload has been applied
      // Counted once repaired, so a status showing the repair means the rules are back.
      this.#repairs = { count: this.#repairs.count + 1, last: { at: new Date().toISOString(), drift } };
      this.#m.repairs.inc(this.#cell);
      await this.#o.repaired?.(this.#repairs);
      this.#log.info({ repairs: this.#repairs.count, drift }, 'drift-repaired');
      return true;
    } finally {
      this.#checking = false;
    }
  }

  /** No pass starts after this is called; resolves once the one under way has ended, every wait on it cancelled. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    await this.#running;
    this.#enforced.cancelAll('cell agent stopped');
  }
}

/** The most of the time periodic drift checks may take (a check listing a large table for 2 s: one every 20 s). */
const DRIFT_CHECK_SHARE = 0.1;

function convergerMetrics(metrics: Registry) {
  return {
    apply: metrics.histogram('netfold_agent_apply_seconds', 'time to load a rule change into the dataplane'),
    propagation: metrics.histogram('netfold_propagation_seconds', 'from an event being decided to its rules being applied on the cell'),
    rules: metrics.gauge('netfold_agent_rules', 'rules enforced on the cell, by kind (local destinations, allowed flows)'),
    repairs: metrics.counter('netfold_agent_drift_repairs_total', 'dataplane drift detected and repaired'),
    errors: metrics.counter('netfold_agent_apply_errors_total', 'rule loads that failed'),
  };
}
