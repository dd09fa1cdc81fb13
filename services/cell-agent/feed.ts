// The agent's side of the planner's output: a cell's desired state, kept current. Reads the cell's snapshot, then
// follows its deltas; a delta whose previous revision is not the one held (a gap), or whose resulting hash does not
// match, makes it re-read the snapshot and the retained deltas after it. Anything at or below the held revision is
// ignored, so duplicates and a planner replaying after a restart change nothing. A message that is not JSON or not
// of the expected shape never ends the feed: it is logged (warn `cell-feed-invalid-delta`/`-snapshot`), counted
// (`rejected`), remembered by stream sequence so a re-read skips it, and answered with a resync. A snapshot is
// adopted only when its shape is valid and its state hashes to its hash.
import type { CellState } from '../../projections/cell.ts';
import {
  CELL_DELTAS_STREAM,
  CELL_SNAPSHOTS_STREAM,
  CellReplica,
  type CellDelta,
  type CellSnapshot,
  cellSubject,
  parseCellDelta,
  parseCellSnapshot,
} from '../../projections/cell-stream.ts';
import type { Registry } from '../../runtime/metrics.ts';
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { isNoMessageFound } from '../../runtime/nats-adapter.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { Progress } from '../../runtime/progress.ts';
import { StreamTail, AGENT_TAIL } from '../../runtime/stream-tail.ts';

/**
 * `state` is the feed's own, changed in place as deltas arrive: read it when told of a change, copy what must be
 * kept. `namesSeq` moves whenever the discovery names may have changed. `eventAt`: time of the event behind the
 * last delta applied (absent after a snapshot). `verified`: the state came from the planner with its hash checked
 * (false for the initial empty state, before any snapshot or delta was adopted).
 */
export type CellView = { cellId: string; revision: number; hash: string; state: CellState; namesSeq: number; verified: boolean; eventAt?: string };

function viewOf(r: CellReplica): CellView {
  const v: CellView = { cellId: r.cellId, revision: r.revision, hash: r.hash, state: r.state, namesSeq: r.namesSeq, verified: r.verified };
  if (r.eventAt) v.eventAt = r.eventAt;
  return v;
}

/**
 * Input the feed refused: a message that is not of the contract, a snapshot whose state does not hash to its hash,
 * a delta whose result does not (forged or corrupted input — never an ordinary gap). The agent reports them in its
 * status, so a cell that is being fed something it must refuse does not look healthy.
 */
export type Refusals = { count: number; last: { at: string; kind: 'delta' | 'snapshot' | 'state'; reason: 'invalid' | 'hash-mismatch' } | null };

/** Where an agent gets its cell's desired state from: the planner's stream (CellFeed) or a poll (PollingCellFeed). */
export interface DesiredStateFeed {
  readonly view: CellView;
  readonly refusals: Refusals;
  onChange(listener: (view: CellView) => void): () => void;
  /** Called after each refusal. */
  onRefused(listener: (refusals: Refusals) => void): () => void;
  start(): Promise<void>;
  waitUntil(check: (v: CellView) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  stop(): Promise<void>;
}

/** Counts refusals and tells listeners. */
class RefusalLog {
  value: Refusals = { count: 0, last: null };
  readonly #listeners = new Set<(r: Refusals) => void>();

  add(kind: NonNullable<Refusals['last']>['kind'], reason: NonNullable<Refusals['last']>['reason']): void {
    this.value = { count: this.value.count + 1, last: { at: new Date().toISOString(), kind, reason } };
    for (const l of this.#listeners) l(this.value);
  }

  listen(listener: (r: Refusals) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }
}

export class CellFeed implements DesiredStateFeed {
  readonly #bus: Bus;
  readonly #cellId: string;
  readonly #log: Logger;
  readonly #metrics: Registry | undefined;
  readonly #replica: CellReplica;
  #tail: StreamTail | undefined;
  #loop: Promise<void> | undefined;
  #stopped = false;
  readonly #progress: Progress<CellView>;
  readonly #listeners = new Set<(view: CellView) => void>();
  /** Times the feed re-read its snapshot because of a gap, a hash mismatch or a bad message. */
  resyncs = 0;
  /** Messages refused: not JSON, not of the expected shape, or (snapshots) a state that does not hash to its hash. */
  rejected = 0;
  readonly #refusals = new RefusalLog();
  /** Stream sequences of delta messages refused for their shape: they never change, so a re-read skips them. */
  readonly #badDeltas = new Set<number>();
  /** The snapshot message last refused (by stream sequence): re-reading it is not logged or counted again. */
  #badSnapshot = -1;
  readonly #mRejected: ((kind: 'delta' | 'snapshot') => void) | undefined;
  #gapTimer: NodeJS.Timeout | undefined;
  /** Why the current read ends early (a resync is due). */
  #resyncReason: string | undefined;
  /** Reads in a row that ended on a gap and applied no delta: the stored snapshot and deltas do not bridge it. */
  #gapStreak = 0;
  /** Times the owning planner's current state was asked for because the stored chain stayed broken. */
  stateRequests = 0;

  constructor(bus: Bus, cellId: string, log: Logger, metrics?: Registry) {
    this.#bus = bus;
    this.#cellId = cellId;
    this.#replica = new CellReplica(cellId);
    this.#log = log.child({ component: 'cell-feed', cell: cellId });
    this.#metrics = metrics;
    this.#progress = new Progress(this.view);
    if (metrics) {
      const c = metrics.counter(
        'netfold_cell_feed_rejected_total',
        'cell snapshot or delta messages refused (not JSON, malformed, hash mismatch), each answered with a resync',
      );
      this.#mRejected = (kind) => c.inc({ cell: cellId, kind });
    }
  }

  #reject(kind: 'delta' | 'snapshot', seq: number): void {
    this.rejected += 1;
    this.#mRejected?.(kind);
    this.#log.warn({ seq, kind }, kind === 'delta' ? 'cell-feed-invalid-delta' : 'cell-feed-invalid-snapshot');
    this.#refusals.add(kind, 'invalid');
  }

  get refusals(): Refusals {
    return this.#refusals.value;
  }

  onRefused(listener: (refusals: Refusals) => void): () => void {
    return this.#refusals.listen(listener);
  }

  get view(): CellView {
    return viewOf(this.#replica);
  }

  onChange(listener: (view: CellView) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Adopts the snapshot, then follows the deltas in the background. */
  async start(): Promise<void> {
    await this.#adoptSnapshot();
    this.#loop = this.#run();
  }

  /**
   * Reads the retained deltas and then follows new ones, until a read must start over (a gap that does not close, a
   * hash mismatch, a bad message); then re-reads the snapshot and does it again, with a backoff, while it runs.
   */
  async #run(): Promise<void> {
    let failures = 0;
    while (!this.#stopped) {
      try {
        await this.#followDeltas();
        failures = 0;
      } catch (err) {
        if (this.#stopped) return;
        failures += 1;
        this.#log.error({ err }, 'cell-feed-failed');
      }
      if (this.#stopped) return;
      this.resyncs += 1;
      await new Promise((r) => setTimeout(r, Math.min(50 * (failures + 1) * Math.min(this.resyncs, 20), 1000)));
      if (this.#stopped) return;
      try {
        await this.#adoptSnapshot();
        if (this.#gapStreak >= STATE_REQUEST_AFTER_GAPS) await this.#adoptOwnersState();
      } catch (err) {
        this.#log.error({ err }, 'cell-feed-resync-failed');
      }
    }
  }

  /**
   * The stored chain stays broken (a delta missing from the stream: a publish lost in a stream leader's failure, or
   * retention that passed the last snapshot), so waiting for the planner's next snapshot could take for ever: ask the
   * owning planner for the cell's current state, as a polling agent does (only planners may answer into an agent's
   * inbox), and adopt it when it is newer. Deltas stored after it continue it (CellReplica checks their hash).
   */
  async #adoptOwnersState(): Promise<void> {
    this.stateRequests += 1;
    const held = this.#replica.revision;
    let m;
    try {
      m = await this.#bus.nc.request(cellSubject.state(this.#cellId), '', { timeout: STATE_REQUEST_TIMEOUT_MS });
    } catch (err) {
      this.#log.warn({ err, revision: held }, 'cell-feed-state-unanswered'); // no owner now: the next read tries again
      return;
    }
    const snap = parseCellSnapshot(m.data, this.#cellId);
    if (!snap) {
      this.#reject('snapshot', -1);
      return;
    }
    const result = this.#replica.applySnapshot(snap);
    this.#log.warn({ revision: held, owners: snap.revision, result }, 'cell-feed-state-requested');
    if (result === 'applied') {
      this.#gapStreak = 0;
      this.#changed();
    }
  }

  async #adoptSnapshot(): Promise<void> {
    const snap = await this.#readSnapshot();
    if (snap && this.#replica.applySnapshot(snap) === 'applied') this.#changed();
  }

  /** The cell's snapshot when there is a valid one; a bad one is refused (logged and counted once) and not adopted. */
  async #readSnapshot(): Promise<CellSnapshot | null> {
    return withNatsRetry('cell snapshot', async () => {
      try {
        const m = await this.#bus.jsm.direct.getMessage(CELL_SNAPSHOTS_STREAM, { last_by_subj: cellSubject.snapshot(this.#cellId) });
        if (!m) return null;
        const snap = parseCellSnapshot(m.data, this.#cellId);
        if (!snap && m.seq !== this.#badSnapshot) {
          this.#badSnapshot = m.seq;
          this.#reject('snapshot', m.seq);
        }
        return snap;
      } catch (err) {
        if (isNoMessageFound(err)) return null;
        throw err;
      }
    });
  }

  /** The stream sequence of the cell's newest delta (0: none). */
  async #lastDeltaSeq(): Promise<number> {
    return withNatsRetry('cell last delta', async () => {
      try {
        const m = await this.#bus.jsm.direct.getMessage(CELL_DELTAS_STREAM, { last_by_subj: cellSubject.delta(this.#cellId) });
        return m?.seq ?? 0;
      } catch (err) {
        if (isNoMessageFound(err)) return 0;
        throw err;
      }
    });
  }

  /**
   * Reads every retained delta of the cell (up to the newest one at the call) and applies them in revision order,
   * whatever order they were stored in, then applies new ones as they come. Returns when a re-read is due.
   */
  async #followDeltas(): Promise<void> {
    const until = await this.#lastDeltaSeq();
    const tail = new StreamTail(this.#bus, {
      stream: CELL_DELTAS_STREAM,
      filter: cellSubject.delta(this.#cellId),
      start: { seq: 1 },
      reader: 'cell-feed',
      log: this.#log,
      ...(this.#metrics && { metrics: this.#metrics }),
      maxMessages: 256,
      ...AGENT_TAIL,
    });
    this.#tail = tail;
    this.#resyncReason = undefined;
    if (this.#stopped) return;
    let retained: CellDelta[] | undefined = until > 0 ? [] : undefined;
    try {
      for await (const m of tail) {
        const refusedBefore = this.#badDeltas.has(m.seq); // a re-read after a resync: not logged or counted again
        const d = refusedBefore ? null : parseCellDelta(m.data, this.#cellId);
        if (!d && !refusedBefore) {
          this.#badDeltas.add(m.seq);
          this.#reject('delta', m.seq);
          this.#resyncReason ??= 'invalid-delta'; // it may have been a delta of the chain: read the snapshot again
        }
        if (d && retained) retained.push(d);
        else if (d) this.#offer(d);
        // (the newest delta at the start, or nothing pending: the one at `until` may have been deleted since)
        if (retained && (m.seq >= until || m.info.pending === 0)) {
          for (const r of retained.sort((a, b) => a.revision - b.revision)) this.#offer(r);
          retained = undefined;
        }
        if (this.#resyncReason !== undefined) break;
      }
    } finally {
      clearTimeout(this.#gapTimer);
      this.#gapTimer = undefined;
      await tail.stop();
      if (this.#tail === tail) this.#tail = undefined;
    }
    this.#gapStreak = this.#resyncReason === 'gap' ? this.#gapStreak + 1 : 0;
    if (this.#resyncReason !== undefined) this.#log.warn({ reason: this.#resyncReason, revision: this.#replica.revision }, 'cell-feed-resync');
  }

  /** Applies one delta; marks the read for a resync when it must start over. */
  #offer(d: CellDelta): void {
    const held = this.#replica.revision;
    switch (this.#replica.offerDelta(d)) {
      case 'applied':
        this.#gapStreak = 0;
        this.#changed();
        break;
      case 'held': // a later delta came first: applied as soon as the one it follows arrives, else re-read
        this.#watchGap(held);
        break;
      case 'gap':
        this.#log.warn({ revision: held, expected: d.prevRevision }, 'cell-feed-gap');
        this.#resyncReason ??= 'gap';
        break;
      case 'mismatch': // undone by the replica: the state held is never one that was not planned
        if (this.#replica.revision !== held) this.#changed();
        this.#log.warn({ revision: d.revision }, 'cell-feed-hash-mismatch');
        this.#refusals.add('delta', 'hash-mismatch');
        this.#resyncReason ??= 'hash-mismatch';
        break;
      default: // stale: a duplicate, or a planner re-publishing after a restart
    }
  }

  /** A delta waits for an earlier one: if the chain is still broken after a short grace, read everything again. */
  #watchGap(held: number): void {
    if (this.#gapTimer) return;
    this.#gapTimer = setTimeout(() => {
      this.#gapTimer = undefined;
      if (this.#replica.waiting === 0 || this.#stopped) return;
      this.#log.warn({ revision: this.#replica.revision, heldAt: held, waiting: this.#replica.waiting }, 'cell-feed-gap');
      this.#resyncReason ??= 'gap';
      void this.#tail?.stop();
    }, GAP_GRACE_MS);
  }

  #changed(): void {
    const view = this.view;
    for (const l of this.#listeners) l(view);
    this.#progress.advance(view);
  }

  /** Resolves once the held state satisfies `check` (e.g. a revision or a hash reached). */
  waitUntil(check: (v: CellView) => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    return this.#progress.until(check, timeoutMs, `cell ${this.#cellId}: ${what}`);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#gapTimer);
    this.#progress.cancelAll('cell feed stopped');
    await this.#tail?.stop();
    await this.#loop;
  }
}

/** How long a delta that came before the one it follows may wait for it before the feed reads everything again. */
const GAP_GRACE_MS = 500;
/** Reads in a row ending on the same kind of gap after which the owning planner is asked for the cell's state. */
const STATE_REQUEST_AFTER_GAPS = 2;
const STATE_REQUEST_TIMEOUT_MS = 2000;

/**
 * The Cloud Foundry model, kept as a baseline for benchmarks: every `intervalMs` (first one at a random phase, so
 * a thousand agents do not ask at once) the agent asks the owning planner for its cell's whole current state and
 * adopts it if it is newer. Convergence then takes up to a whole interval, whatever the planner's speed.
 */
export class PollingCellFeed implements DesiredStateFeed {
  readonly #bus: Bus;
  readonly #cellId: string;
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #phase: number;
  readonly #replica: CellReplica;
  readonly #progress: Progress<CellView>;
  readonly #listeners = new Set<(view: CellView) => void>();
  readonly #refusals = new RefusalLog();
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  #stopped = false;

  constructor(bus: Bus, cellId: string, log: Logger, intervalMs: number, random: () => number = Math.random) {
    this.#bus = bus;
    this.#cellId = cellId;
    this.#log = log.child({ component: 'cell-poll', cell: cellId });
    this.#intervalMs = intervalMs;
    this.#phase = Math.floor(random() * intervalMs);
    this.#replica = new CellReplica(cellId);
    this.#progress = new Progress(this.view);
  }

  get view(): CellView {
    return viewOf(this.#replica);
  }

  get refusals(): Refusals {
    return this.#refusals.value;
  }

  onRefused(listener: (refusals: Refusals) => void): () => void {
    return this.#refusals.listen(listener);
  }

  onChange(listener: (view: CellView) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async start(): Promise<void> {
    await this.#poll();
    const tick = () => {
      if (this.#stopped) return;
      this.#polling = this.#poll().finally(() => {
        this.#polling = undefined;
        if (!this.#stopped) this.#timer = setTimeout(tick, this.#intervalMs);
      });
    };
    this.#timer = setTimeout(tick, this.#phase);
  }

  async #poll(): Promise<void> {
    try {
      const m = await this.#bus.nc.request(cellSubject.state(this.#cellId), '', { timeout: Math.min(this.#intervalMs, 5000) });
      const result = this.#replica.applyMessage(m.data, 'snapshot');
      if (result === 'invalid') {
        this.#log.warn({}, 'cell-poll-invalid-state');
        this.#refusals.add('state', 'invalid');
        return;
      }
      if (result !== 'applied') return;
      const view = this.view;
      for (const l of this.#listeners) l(view);
      this.#progress.advance(view);
    } catch (err) {
      if (!this.#stopped) this.#log.debug({ err }, 'cell-poll-failed');
    }
  }

  waitUntil(check: (v: CellView) => boolean, timeoutMs = 10_000, what = 'condition'): Promise<void> {
    return this.#progress.until(check, timeoutMs, `cell ${this.#cellId}: ${what}`);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#progress.cancelAll('cell poll stopped');
    await this.#polling;
  }
}
