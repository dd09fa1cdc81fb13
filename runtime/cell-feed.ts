// The agent's side of the planner's output: a cell's desired state, kept current. Reads the cell's snapshot, then
// follows its deltas; a delta whose previous revision is not the one held (a gap), or whose resulting hash does not
// match, makes it re-read the snapshot and the retained deltas after it. Anything at or below the held revision is
// ignored, so duplicates and a planner replaying after a restart change nothing. A message that is not JSON or not
// of the expected shape never ends the feed: it is logged (warn `cell-feed-invalid-delta`/`-snapshot`), counted
// (`rejected`), remembered by stream sequence so a re-read skips it, and answered with a resync. A snapshot is
// adopted only when its shape is valid and its state hashes to its hash.
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError, type ConsumerMessages } from '@nats-io/jetstream';
import { type CellOp, type CellState, SECTIONS, applyCellOps, cellHashOf, emptyCellState } from '../projections/cell.ts';
import type { Registry } from './metrics.ts';
import type { Bus } from './nats.ts';
import type { Logger } from './logger.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, cellSubject } from './subjects.ts';
import { withNatsRetry } from './retry.ts';
import { Progress } from './progress.ts';

export type CellDeltaMessage = { cellId: string; revision: number; prevRevision: number; ops: CellOp[]; hash: string; at?: string };
export type CellSnapshotMessage = { cellId: string; revision: number; hash: string; state: CellState };

/**
 * `state` is the feed's own, changed in place as deltas arrive: read it when told of a change, copy what must be
 * kept. `namesSeq` moves whenever the discovery names may have changed. `eventAt`: time of the event behind the
 * last delta applied (absent after a snapshot). `verified`: the state came from the planner with its hash checked
 * (false for the initial empty state, before any snapshot or delta was adopted).
 */
export type CellView = { cellId: string; revision: number; hash: string; state: CellState; namesSeq: number; verified: boolean; eventAt?: string };

const HASH = /^[0-9a-f]{32}$/;
const isRevision = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Parses a delta message: null when it is not JSON or not of the delta's shape (the ops' values are checked by the hash). */
export function parseCellDelta(data: Uint8Array | string, cellId: string): CellDeltaMessage | null {
  let d: unknown;
  try {
    d = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
  } catch {
    return null;
  }
  if (!isRecord(d) || d.cellId !== cellId || !isRevision(d.revision) || !isRevision(d.prevRevision) || d.revision <= d.prevRevision) return null;
  if (typeof d.hash !== 'string' || !HASH.test(d.hash) || (d.at !== undefined && typeof d.at !== 'string')) return null;
  if (!Array.isArray(d.ops) || !d.ops.every((o: unknown) => isRecord(o) && Array.isArray(o.path) && o.path.length === 2 && SECTIONS.includes(o.path[0]) && typeof o.path[1] === 'string')) return null;
  return d as CellDeltaMessage;
}

/** Parses a snapshot message: null unless it is JSON of the snapshot's shape whose state hashes to its hash. */
export function parseCellSnapshot(data: Uint8Array | string, cellId: string): CellSnapshotMessage | null {
  let s: unknown;
  try {
    s = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
  } catch {
    return null;
  }
  if (!isRecord(s) || s.cellId !== cellId || !isRevision(s.revision) || typeof s.hash !== 'string' || !HASH.test(s.hash)) return null;
  const state = s.state;
  if (!isRecord(state) || !Object.keys(state).every((k) => (SECTIONS as readonly string[]).includes(k))) return null;
  // Sections become dicts (outside ids such as `constructor` are then ordinary keys); a section an older planner
  // did not write is empty. The hash decides whether the whole is what was planned.
  const full = emptyCellState();
  for (const section of SECTIONS) {
    const entries = state[section];
    if (entries === undefined) continue;
    if (!isRecord(entries)) return null;
    Object.assign(full[section], entries);
  }
  if (cellHashOf(full) !== s.hash) return null;
  return { cellId, revision: s.revision, hash: s.hash, state: full };
}

/** Where an agent gets its cell's desired state from: the planner's stream (CellFeed) or a poll (PollingCellFeed). */
export interface DesiredStateFeed {
  readonly view: CellView;
  onChange(listener: (view: CellView) => void): () => void;
  start(): Promise<void>;
  waitUntil(check: (v: CellView) => boolean, timeoutMs?: number, what?: string): Promise<void>;
  stop(): Promise<void>;
}

export class CellFeed implements DesiredStateFeed {
  readonly #bus: Bus;
  readonly #cellId: string;
  readonly #log: Logger;
  #state: CellState = emptyCellState();
  #revision = 0;
  #hash = cellHashOf(emptyCellState());
  #messages: ConsumerMessages | undefined;
  #loop: Promise<void> | undefined;
  #stopped = false;
  readonly #progress: Progress<CellView>;
  readonly #listeners = new Set<(view: CellView) => void>();
  /** Times the feed re-read its snapshot because of a gap, a hash mismatch or a bad message. */
  resyncs = 0;
  /** Messages refused: not JSON, not of the expected shape, or (snapshots) a state that does not hash to its hash. */
  rejected = 0;
  /** Stream sequences of delta messages refused for their shape: they never change, so a re-read skips them. */
  readonly #badDeltas = new Set<number>();
  /** The snapshot message last refused (by stream sequence): re-reading it is not logged or counted again. */
  #badSnapshot = -1;
  #verified = false;
  readonly #mRejected: ((kind: 'delta' | 'snapshot') => void) | undefined;

  constructor(bus: Bus, cellId: string, log: Logger, metrics?: Registry) {
    this.#bus = bus;
    this.#cellId = cellId;
    this.#log = log.child({ component: 'cell-feed', cell: cellId });
    this.#progress = new Progress(this.view);
    if (metrics) {
      const c = metrics.counter('netfold_cell_feed_rejected_total', 'cell snapshot or delta messages refused (not JSON, malformed, hash mismatch), each answered with a resync');
      this.#mRejected = (kind) => c.inc({ cell: cellId, kind });
    }
  }

  #reject(kind: 'delta' | 'snapshot', seq: number): void {
    this.rejected += 1;
    this.#mRejected?.(kind);
    this.#log.warn({ seq, kind }, kind === 'delta' ? 'cell-feed-invalid-delta' : 'cell-feed-invalid-snapshot');
  }

  #eventAt: string | undefined;
  #namesSeq = 0;

  get view(): CellView {
    const v: CellView = { cellId: this.#cellId, revision: this.#revision, hash: this.#hash, state: this.#state, namesSeq: this.#namesSeq, verified: this.#verified };
    if (this.#eventAt) v.eventAt = this.#eventAt;
    return v;
  }

  onChange(listener: (view: CellView) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async start(): Promise<void> {
    await this.#sync();
  }

  /** Reads the snapshot (if newer than what is held) and follows the retained deltas from the start. */
  async #sync(): Promise<void> {
    await this.#messages?.close();
    const snap = await this.#readSnapshot();
    if (snap && snap.revision >= this.#revision) this.#adopt(snap.state, snap.revision, snap.hash, undefined);
    const consumer = await withNatsRetry('cell delta consumer', () =>
      this.#bus.js.consumers.get(CELL_DELTAS_STREAM, { filter_subjects: cellSubject.delta(this.#cellId), deliver_policy: DeliverPolicy.All }),
    );
    const messages = await consumer.consume({ max_messages: 256 });
    this.#messages = messages;
    this.#loop = this.#follow(messages);
  }

  /** The cell's snapshot when there is a valid one; a bad one is refused (logged and counted once) and not adopted. */
  async #readSnapshot(): Promise<CellSnapshotMessage | null> {
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
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return null;
        throw err;
      }
    });
  }

  async #follow(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const m of messages) {
        if (this.#badDeltas.has(m.seq)) continue; // refused before (a re-read after a resync)
        const d = parseCellDelta(m.data, this.#cellId);
        if (!d) {
          this.#badDeltas.add(m.seq);
          this.#reject('delta', m.seq);
          return this.#resync();
        }
        if (d.revision <= this.#revision) continue;
        if (d.prevRevision !== this.#revision) {
          this.#log.warn({ revision: this.#revision, expected: d.prevRevision }, 'cell-feed-gap');
          return this.#resync();
        }
        // In place, with an undo list: a delta costs the entries it changes, not the cell. A mismatching hash
        // puts the old entries back before the resync, so the state held is never one that was not planned.
        const undo = d.ops.map(({ path: [section, key] }) => [section, key, this.#state[section][key]] as const);
        const hash = applyCellOps(this.#state, this.#hash, d.ops);
        if (hash !== d.hash) {
          for (const [section, key, old] of undo.reverse()) {
            const entries = this.#state[section] as Record<string, unknown>;
            if (old === undefined) delete entries[key];
            else entries[key] = old;
          }
          this.#log.warn({ revision: d.revision }, 'cell-feed-hash-mismatch');
          return this.#resync();
        }
        if (d.ops.some((o) => o.path[0] === 'names')) this.#namesSeq += 1;
        this.#adopt(this.#state, d.revision, hash, d.at);
      }
    } catch (err) {
      // Anything else (the consumer failing, a bug): never end the feed while it is meant to run.
      if (this.#stopped) return;
      this.#log.error({ err }, 'cell-feed-failed');
      return this.#resync();
    }
  }

  async #resync(): Promise<void> {
    if (this.#stopped) return;
    this.resyncs += 1;
    await new Promise((r) => setTimeout(r, Math.min(50 * this.resyncs, 1000)));
    if (this.#stopped) return;
    try {
      await this.#sync();
    } catch (err) {
      this.#log.error({ err }, 'cell-feed-resync-failed');
      return this.#resync(); // backed off above; the feed never gives up while it runs
    }
  }

  #adopt(state: CellState, revision: number, hash: string, eventAt: string | undefined): void {
    if (state !== this.#state) this.#namesSeq += 1;
    this.#verified = true;
    this.#eventAt = eventAt;
    this.#state = state;
    this.#revision = revision;
    this.#hash = hash;
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
    this.#progress.cancelAll('cell feed stopped');
    await this.#messages?.close();
    await this.#loop;
  }
}

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
  #view: CellView;
  readonly #progress: Progress<CellView>;
  readonly #listeners = new Set<(view: CellView) => void>();
  #timer: NodeJS.Timeout | undefined;
  #polling: Promise<void> | undefined;
  #stopped = false;

  constructor(bus: Bus, cellId: string, log: Logger, intervalMs: number, random: () => number = Math.random) {
    this.#bus = bus;
    this.#cellId = cellId;
    this.#log = log.child({ component: 'cell-poll', cell: cellId });
    this.#intervalMs = intervalMs;
    this.#phase = Math.floor(random() * intervalMs);
    const empty = emptyCellState();
    this.#view = { cellId, revision: 0, hash: cellHashOf(empty), state: empty, namesSeq: 0, verified: false };
    this.#progress = new Progress(this.#view);
  }

  get view(): CellView {
    return this.#view;
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
      const answer = parseCellSnapshot(m.data, this.#cellId);
      if (!answer) {
        this.#log.warn({}, 'cell-poll-invalid-state');
        return;
      }
      if (answer.revision < this.#view.revision || (answer.revision === this.#view.revision && this.#view.verified)) return;
      this.#view = { cellId: this.#cellId, revision: answer.revision, hash: answer.hash, state: answer.state, namesSeq: this.#view.namesSeq + 1, verified: true };
      for (const l of this.#listeners) l(this.#view);
      this.#progress.advance(this.#view);
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
