// The agent's side of the planner's output: a cell's desired state, kept current. Reads the cell's snapshot, then
// follows its deltas (live on a subscription, the stream read only to catch up: see CellFeed); a delta whose previous
// revision is not the one held (a gap), or whose resulting hash does not match, makes it re-read the snapshot and the
// retained deltas after it. Anything at or below the held revision is ignored, so duplicates and a planner replaying
// after a restart change nothing. A message that is not JSON or not of the expected shape never ends the feed: it is
// logged (warn `cell-feed-invalid-delta`/`-snapshot`), counted (`rejected`), remembered by message id (or stream
// sequence) so a re-read skips it, and answered with a resync. A snapshot is adopted only when its shape is valid and
// its state hashes to its hash.
import type { CellState } from '../../projections/cell.ts';
import {
  CELL_DELTAS_STREAM,
  CELL_SNAPSHOTS_STREAM,
  CellReplica,
  type CellDelta,
  type CellSnapshot,
  cellSubject,
  deltaRevisionOf,
  parseCellDelta,
  parseCellSnapshot,
} from '../../projections/cell-stream.ts';
import type { Registry } from '../../runtime/metrics.ts';
import type { Bus } from '../../runtime/nats.ts';
import type { Status, Subscription } from '@nats-io/nats-core';
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

/** A delta as the live subscription delivered it: its body, and the planner's message id (`d:<cell>:<rev>`) when set. */
type LiveDelta = { data: Uint8Array; msgId: string | undefined };

/**
 * The streaming feed. Deltas arrive **live**, on a plain subscription to the cell's delta subject: the server hands
 * every delta the planner publishes to the agent as it stores it, with no consumer, no pull and no acknowledgement.
 * The stream is read only to catch up: at start and after a resync (snapshot, then the retained deltas up to the
 * newest at the time, through a consumer that is dropped once caught up). The subscription is made before that
 * read, and what it delivers meanwhile waits in a buffer, so nothing falls between the two.
 *
 * Live delivery is at most once, so the feed checks for what it could miss: a delta that does not follow the
 * revision held is a gap (the replica keeps it a moment, then a resync); and every LIVE_CHECK_MS, and at once after
 * the connection comes back, it reads the newest stored delta's revision (a direct get) and resyncs when that stays
 * ahead of what it holds (`cell-feed-live-missed`: a delta lost in a reconnect or on a cluster route, with no later
 * one to show the gap). A server that refuses the subscription (permissions from before it) makes the feed follow
 * the stream with its consumer for good, as it did before.
 *
 * Following a thousand cells with a pull consumer each cost the server a thousand consumers' pulls and heartbeats,
 * and an unanswered pull delayed a delta by two missed heartbeats (bench:scale's 2–3 s churn outliers, issue 16).
 */
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
  /** Times the feed re-read its snapshot because of a gap, a hash mismatch, a bad message or a missed delta. */
  resyncs = 0;
  /** Messages refused: not JSON, not of the expected shape, or (snapshots) a state that does not hash to its hash. */
  rejected = 0;
  /** Times a check found a stored delta that live delivery had not brought (each answered with a resync). */
  missed = 0;
  readonly #refusals = new RefusalLog();
  /** Delta messages refused for their shape, by message id (or stream sequence): they never change, so a re-read skips them. */
  readonly #badDeltas = new Set<string>();
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
  #sub: Subscription | undefined;
  /** False once the server refused the live subscription: the feed then follows the stream by consumer. */
  #liveOk = true;
  /** Live deltas that arrived while the stream is read (undefined while following live: offered as they come). */
  #buffer: LiveDelta[] | undefined = [];
  #bufferOverflow = false;
  /** Ends the live phase (a resync is due, or the feed stops). */
  #endLive: (() => void) | undefined;
  #checkTimer: NodeJS.Timeout | undefined;
  #checking = false;
  /** A check was asked for (a reconnect) while one ran or while catching up: made as soon as it can be. */
  #checkDue = false;
  #status: (AsyncIterable<Status> & { stop?: () => void }) | undefined;
  readonly #liveCheckMs: number;

  /** `liveCheckMs`: how often a feed following live checks the stream for a delta it did not get (jittered ±50%). */
  constructor(bus: Bus, cellId: string, log: Logger, metrics?: Registry, opts: { liveCheckMs?: number } = {}) {
    this.#bus = bus;
    this.#liveCheckMs = opts.liveCheckMs ?? LIVE_CHECK_MS;
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

  #reject(kind: 'delta' | 'snapshot', message: number | string): void {
    this.rejected += 1;
    this.#mRejected?.(kind);
    this.#log.warn({ message, kind }, kind === 'delta' ? 'cell-feed-invalid-delta' : 'cell-feed-invalid-snapshot');
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

  /** True while deltas come by the live subscription (false: catching up, or the server refused it). */
  get live(): boolean {
    return this.#buffer === undefined;
  }

  onChange(listener: (view: CellView) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Subscribes, adopts the snapshot, then catches up and follows the deltas in the background. */
  async start(): Promise<void> {
    this.#subscribe();
    try {
      await this.#bus.nc.flush(); // the server has the subscription before the stream is read: no delta falls between
      await this.#adoptSnapshot();
    } catch (err) {
      this.#sub?.unsubscribe();
      throw err;
    }
    if (this.#stopped) return;
    this.#watchReconnects();
    this.#scheduleCheck();
    this.#loop = this.#run();
  }

  #subscribe(): void {
    const refused = (err: unknown) => {
      if (this.#stopped || !this.#liveOk) return;
      this.#liveOk = false;
      this.#log.warn({ err }, 'cell-feed-live-refused');
      this.#resync('live-refused');
    };
    try {
      this.#sub = this.#bus.nc.subscribe(cellSubject.delta(this.#cellId), {
        callback: (err, m) => {
          if (err) refused(err);
          else this.#onLive({ data: m.data, msgId: m.headers?.get('Nats-Msg-Id') || undefined });
        },
      });
      void this.#sub.closed.then((err) => err && refused(err));
    } catch (err) {
      refused(err);
    }
  }

  /**
   * Runs inside nats.js's reading of the socket, which has no guard of its own: an exception here (a listener's)
   * would stop the connection reading for every user of it. Caught, logged and answered with a resync.
   */
  #onLive(d: LiveDelta): void {
    if (this.#stopped || !this.#liveOk) return;
    if (this.#buffer !== undefined) {
      if (this.#buffer.length < MAX_BUFFERED) this.#buffer.push(d);
      else this.#bufferOverflow = true;
      return;
    }
    try {
      this.#offerMessage(d.data, d.msgId);
    } catch (err) {
      this.#log.error({ err }, 'cell-feed-live-failed');
      this.#resync('failed');
    }
  }

  /**
   * Catches up from the stream, then follows live until a resync is due (a gap that does not close, a hash mismatch, a
   * bad message, a missed delta); then re-reads the snapshot and does it again, with a backoff, while it runs.
   */
  async #run(): Promise<void> {
    let failures = 0;
    while (!this.#stopped) {
      try {
        await this.#readStored();
        if (this.#resyncReason === undefined && this.#liveOk) await this.#followLive();
        failures = 0;
      } catch (err) {
        if (this.#stopped) return;
        failures += 1;
        this.#log.error({ err }, 'cell-feed-failed');
      }
      clearTimeout(this.#gapTimer);
      this.#gapTimer = undefined;
      if (this.#stopped) return;
      this.#gapStreak = this.#resyncReason === 'gap' ? this.#gapStreak + 1 : 0;
      if (this.#resyncReason !== undefined) this.#log.warn({ reason: this.#resyncReason, revision: this.#replica.revision }, 'cell-feed-resync');
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

  /** A resync is due: ends the live phase or the read in progress (the first reason is the one reported). */
  #resync(reason: string): void {
    this.#resyncReason ??= reason;
    this.#endLive?.();
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

  /**
   * The cell's newest stored delta: its stream sequence, and its revision (0 for none, and for a message this feed
   * refused: a check does not resync for ever on it).
   */
  async #newestDelta(retry: boolean): Promise<{ seq: number; revision: number }> {
    const read = async () => {
      try {
        const m = await this.#bus.jsm.direct.getMessage(CELL_DELTAS_STREAM, { last_by_subj: cellSubject.delta(this.#cellId) });
        if (!m) return { seq: 0, revision: 0 };
        const msgId = m.header?.get('Nats-Msg-Id') || undefined;
        if (this.#badDeltas.has(msgId ?? `#${m.seq}`)) return { seq: m.seq, revision: 0 };
        const revision = deltaRevisionOf(msgId, this.#cellId) ?? parseCellDelta(m.data, this.#cellId)?.revision ?? 0;
        return { seq: m.seq, revision };
      } catch (err) {
        if (isNoMessageFound(err)) return { seq: 0, revision: 0 };
        throw err;
      }
    };
    return retry ? withNatsRetry('cell last delta', read) : read(); // (a check that fails is made again later)
  }

  /**
   * Reads every retained delta of the cell (up to the newest one at the call) and applies them in revision order,
   * whatever order they were stored in. Returns then, or when a resync is due; when the server refused the live
   * subscription it goes on applying new ones as they are stored, until a resync is due.
   */
  async #readStored(): Promise<void> {
    this.#resyncReason = undefined;
    // Live deltas wait in the buffer (since the live phase ended) and are offered after the read: one delivered live
    // is not always stored yet, or visible to the replica that answers the read of `until`, when it is read.
    this.#buffer ??= [];
    const until = (await this.#newestDelta(true)).seq;
    const stopWhenCaughtUp = this.#liveOk;
    if (until === 0 && stopWhenCaughtUp) return;
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
    if (this.#stopped || this.#resyncReason !== undefined) return;
    let retained: CellDelta[] | undefined = until > 0 ? [] : undefined;
    try {
      for await (const m of tail) {
        const key = m.headers?.get('Nats-Msg-Id') || `#${m.seq}`;
        const refusedBefore = this.#badDeltas.has(key); // a re-read after a resync: not logged or counted again
        const d = refusedBefore ? null : parseCellDelta(m.data, this.#cellId);
        if (!d && !refusedBefore) {
          this.#badDeltas.add(key);
          this.#reject('delta', key);
          this.#resync('invalid-delta'); // it may have been a delta of the chain: read the snapshot again
        }
        if (d && retained) retained.push(d);
        else if (d) this.#offer(d);
        // (the newest delta at the start, or nothing pending: the one at `until` may have been deleted since)
        if (retained && (m.seq >= until || m.info.pending === 0)) {
          for (const r of retained.sort((a, b) => a.revision - b.revision)) this.#offer(r);
          retained = undefined;
          if (stopWhenCaughtUp) break;
        }
        if (this.#resyncReason !== undefined) break;
      }
    } finally {
      await tail.stop();
      if (this.#tail === tail) this.#tail = undefined;
    }
  }

  /** Offers the deltas that came live during the read, then each as it comes, until a resync is due or the feed stops. */
  async #followLive(): Promise<void> {
    const buffered = this.#buffer ?? [];
    const overflow = this.#bufferOverflow;
    this.#buffer = undefined;
    this.#bufferOverflow = false;
    await new Promise<void>((resolve) => {
      this.#endLive = resolve;
      for (const d of buffered) if (this.#resyncReason === undefined) this.#offerMessage(d.data, d.msgId);
      if (overflow) this.#resync('live-overflow'); // some were dropped: read the stream again
      if (this.#resyncReason !== undefined || this.#stopped) resolve();
      else if (this.#checkDue) void this.#check(); // a reconnect while catching up
    });
    this.#endLive = undefined;
    this.#buffer = [];
  }

  /** A live delta: parsed and applied; one refused for its shape is logged and counted once, and answered with a resync. */
  #offerMessage(data: Uint8Array, msgId: string | undefined): void {
    if (msgId !== undefined && this.#badDeltas.has(msgId)) return;
    const d = parseCellDelta(data, this.#cellId);
    if (d) return this.#offer(d);
    if (msgId !== undefined) this.#badDeltas.add(msgId);
    this.#reject('delta', msgId ?? 'live');
    this.#resync('invalid-delta');
  }

  /** Applies one delta; calls for a resync when the feed must start over. */
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
        this.#resync('gap');
        break;
      case 'mismatch': // undone by the replica: the state held is never one that was not planned
        if (this.#replica.revision !== held) this.#changed();
        this.#log.warn({ revision: d.revision }, 'cell-feed-hash-mismatch');
        this.#refusals.add('delta', 'hash-mismatch');
        this.#resync('hash-mismatch');
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
      this.#resync('gap');
      void this.#tail?.stop();
    }, GAP_GRACE_MS);
  }

  #scheduleCheck(delayMs = this.#liveCheckMs * (0.5 + Math.random())): void {
    if (this.#stopped) return;
    this.#checkTimer = setTimeout(() => void this.#check().finally(() => this.#scheduleCheck()), delayMs);
    this.#checkTimer.unref();
  }

  /** After a reconnect, what was published while the connection was down never comes live: check at once. */
  #watchReconnects(): void {
    const status = this.#bus.nc.status() as AsyncIterable<Status> & { stop?: () => void };
    this.#status = status;
    void (async () => {
      for await (const s of status) {
        if (this.#stopped) return;
        if (s.type === 'reconnect') void this.#check();
      }
    })().catch(() => undefined);
  }

  /**
   * While following live: reads the newest stored delta's revision; when it is past the one held, gives it
   * GAP_GRACE_MS to arrive (it may be on its way), then resyncs if it has not.
   */
  async #check(): Promise<void> {
    if (this.#stopped) return;
    if (!this.live || this.#checking) {
      this.#checkDue = true; // (made when the live phase begins, or when the running check ends)
      return;
    }
    this.#checking = true;
    this.#checkDue = false;
    try {
      const { revision } = await this.#newestDelta(false);
      if (revision <= this.#replica.revision) return;
      await new Promise((r) => setTimeout(r, GAP_GRACE_MS).unref());
      if (!this.live || this.#stopped || this.#replica.revision >= revision) return;
      this.missed += 1;
      this.#log.warn({ revision: this.#replica.revision, stored: revision }, 'cell-feed-live-missed');
      this.#resync('missed');
    } catch (err) {
      if (!this.#stopped) this.#log.debug({ err }, 'cell-feed-check-failed');
    } finally {
      this.#checking = false;
      if (this.#checkDue && this.live && !this.#stopped) void this.#check();
    }
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
    clearTimeout(this.#checkTimer);
    this.#status?.stop?.();
    this.#endLive?.();
    this.#progress.cancelAll('cell feed stopped');
    this.#sub?.unsubscribe();
    await this.#tail?.stop();
    await this.#loop;
  }
}

/** Live deltas kept while the stream is read; past it the feed reads the stream again once caught up. */
const MAX_BUFFERED = 4096;
/** How often a feed following live checks the stream for a delta it did not get, by default. */
const LIVE_CHECK_MS = 5000;
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
