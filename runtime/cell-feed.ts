// The agent's side of the planner's output: a cell's desired state, kept current. Reads the cell's snapshot, then
// follows its deltas; a delta whose previous revision is not the one held (a gap), or whose resulting hash does not
// match, makes it re-read the snapshot and the retained deltas after it. Anything at or below the held revision is
// ignored, so duplicates and a planner replaying after a restart change nothing.
import { DeliverPolicy, JetStreamApiCodes, JetStreamApiError, type ConsumerMessages } from '@nats-io/jetstream';
import { type CellOp, type CellState, applyCellOps, cellHashOf, emptyCellState } from '../projections/cell.ts';
import type { Bus } from './nats.ts';
import type { Logger } from './logger.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, cellSubject } from './subjects.ts';
import { withNatsRetry } from './retry.ts';
import { Progress } from './progress.ts';

export type CellDeltaMessage = { cellId: string; revision: number; prevRevision: number; ops: CellOp[]; hash: string; at?: string };
export type CellSnapshotMessage = { cellId: string; revision: number; hash: string; state: CellState };

/** `eventAt`: time of the event behind the last delta applied (absent after a snapshot). */
export type CellView = { cellId: string; revision: number; hash: string; state: CellState; eventAt?: string };

export class CellFeed {
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
  /** Times the feed re-read its snapshot because of a gap or a hash mismatch. */
  resyncs = 0;

  constructor(bus: Bus, cellId: string, log: Logger) {
    this.#bus = bus;
    this.#cellId = cellId;
    this.#log = log.child({ component: 'cell-feed', cell: cellId });
    this.#progress = new Progress(this.view);
  }

  #eventAt: string | undefined;

  get view(): CellView {
    const v: CellView = { cellId: this.#cellId, revision: this.#revision, hash: this.#hash, state: this.#state };
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

  async #readSnapshot(): Promise<CellSnapshotMessage | null> {
    return withNatsRetry('cell snapshot', async () => {
      try {
        const m = await this.#bus.jsm.direct.getMessage(CELL_SNAPSHOTS_STREAM, { last_by_subj: cellSubject.snapshot(this.#cellId) });
        return m ? (m.json() as CellSnapshotMessage) : null;
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === JetStreamApiCodes.NoMessageFound) return null;
        throw err;
      }
    });
  }

  async #follow(messages: ConsumerMessages): Promise<void> {
    try {
      for await (const m of messages) {
        const d = m.json<CellDeltaMessage>();
        if (d.revision <= this.#revision) continue;
        if (d.prevRevision !== this.#revision) {
          this.#log.info({ revision: this.#revision, expected: d.prevRevision }, 'cell-feed-gap');
          return this.#resync();
        }
        const next = structuredClone(this.#state);
        const hash = applyCellOps(next, this.#hash, d.ops);
        if (hash !== d.hash) {
          this.#log.warn({ revision: d.revision }, 'cell-feed-hash-mismatch');
          return this.#resync();
        }
        this.#adopt(next, d.revision, hash, d.at);
      }
    } catch (err) {
      if (!this.#stopped) this.#log.error({ err }, 'cell-feed-failed');
    }
  }

  async #resync(): Promise<void> {
    if (this.#stopped) return;
    this.resyncs += 1;
    await new Promise((r) => setTimeout(r, Math.min(50 * this.resyncs, 1000)));
    if (this.#stopped) return;
    await this.#sync().catch((err: unknown) => this.#log.error({ err }, 'cell-feed-resync-failed'));
  }

  #adopt(state: CellState, revision: number, hash: string, eventAt: string | undefined): void {
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
