// The planner's pure core: folds events into the global model and, for the cells this instance owns, turns each
// event's effect into per-cell outputs: a delta (operations, stamped with the event's sequence and the cell's
// previous revision, plus the hash of the resulting state) and, every `snapshotEvery` deltas or when a cell is
// taken over, a full snapshot. Per event it re-derives only the entries the event can change (dirtyEntries),
// judged on the model before and after folding it, so its cost follows the size of the change. Deterministic: the
// same events and ownership give the same outputs, byte for byte,
// whatever the batch sizes, which is what makes a restart from a checkpoint exact.
import type { RecordedEvent } from '../../events/catalogue.ts';
import {
  type CellOp,
  type CellState,
  applyCellOps,
  cellHashOf,
  deriveCellState,
  deriveEntry,
  dirtyEntries,
  emptyCellState,
  SECTIONS,
  sameValue,
  splitEntryId,
} from '../../projections/cell.ts';
import { type Model, foldEventsInPlace, initialModel } from '../../projections/model.ts';
import { EMPTY_CELL_HASH, type PlannerOutput } from '../../projections/cell-stream.ts';
import { dict } from '../../projections/dict.ts';

type CellTrack = { state: CellState; revision: number; hash: string; sinceSnapshot: number };

/**
 * What a checkpoint holds: the sequence it covers and, per owned cell, its revision and its deltas since its last
 * snapshot. Not the model: that is a pure fold of the log, so a restart folds the log up to `seq` again (fold only,
 * no outputs: ~65k events/s here) and derives the owned cells from it. This keeps a checkpoint a few KiB, cheap to
 * write at any moment (a serialized model of 50k containers blocked the planner ~0.5 s per checkpoint).
 */
export type PlannerCheckpoint = {
  v: 2;
  seq: number;
  cells: Record<string, { revision: number; sinceSnapshot: number }>;
};

export type PlannerCoreOptions = {
  domain: string;
  /** A snapshot after this many deltas of a cell (readers that fall further behind re-read it). */
  snapshotEvery: number;
  owns: (cellId: string) => boolean;
};

export class PlannerCore {
  readonly #opts: PlannerCoreOptions;
  #owns: (cellId: string) => boolean;
  readonly model: Model;
  readonly #cells = new Map<string, CellTrack>();
  /** Every cell any event has named, owned or not. */
  readonly #known = new Set<string>();
  /** The time of the last event folded by `ingest` (a take-over's link delta carries it). */
  #lastAt = new Date(0).toISOString();

  /**
   * A fresh core, or one resumed from a checkpoint with `model` = the log folded up to the checkpoint's sequence
   * (the core takes the model over; it must not be used elsewhere).
   */
  constructor(opts: PlannerCoreOptions, resume?: { checkpoint: PlannerCheckpoint; model: Model }) {
    this.#opts = opts;
    this.#owns = opts.owns;
    const checkpoint = resume?.checkpoint;
    if (resume && resume.model.seq !== resume.checkpoint.seq) {
      throw new Error(`resume model is at ${resume.model.seq}, the checkpoint at ${resume.checkpoint.seq}`);
    }
    this.model = resume ? resume.model : initialModel();
    for (const c of Object.values(this.model.containers)) if (c.cellId) this.#known.add(c.cellId);
    for (const [cellId, t] of Object.entries(checkpoint?.cells ?? {})) {
      this.#known.add(cellId);
      const state = deriveCellState(this.model, cellId, opts.domain);
      this.#cells.set(cellId, { state, revision: t.revision, hash: cellHashOf(state), sinceSnapshot: t.sinceSnapshot });
    }
  }

  get seq(): number {
    return this.model.seq;
  }

  /** Owned cells and their current revision and hash. */
  cells(): Record<string, { revision: number; hash: string }> {
    const out = dict<{ revision: number; hash: string }>();
    for (const [id, t] of [...this.#cells].sort(([a], [b]) => (a < b ? -1 : 1))) out[id] = { revision: t.revision, hash: t.hash };
    return out;
  }

  cellState(cellId: string): CellState | undefined {
    return this.#cells.get(cellId)?.state;
  }

  /** An owned cell's current state with its revision and hash (undefined for a cell not owned here). */
  cellView(cellId: string): { revision: number; hash: string; state: CellState } | undefined {
    const t = this.#cells.get(cellId);
    return t && { revision: t.revision, hash: t.hash, state: t.state };
  }

  /** A snapshot of an owned cell at its current revision (undefined for a cell not owned here). */
  snapshotOf(cellId: string): PlannerOutput | undefined {
    const t = this.#cells.get(cellId);
    return t && this.#snapshot(cellId, t);
  }

  /** Folds events in order; returns the outputs for owned cells, in order. */
  ingest(batch: readonly RecordedEvent[]): PlannerOutput[] {
    const out: PlannerOutput[] = [];
    const domain = this.#opts.domain;
    for (const rec of batch) {
      if (rec.seq <= this.model.seq) continue;
      this.#lastAt = rec.event.at;
      const dirty = dirtyEntries(this.model, rec.event, domain);
      foldEventsInPlace(this.model, [rec]);
      dirtyEntries(this.model, rec.event, domain, dirty);
      for (const cellId of [...dirty.keys()].sort()) {
        this.#known.add(cellId);
        if (!this.#owns(cellId)) continue;
        const track = this.#cells.get(cellId) ?? this.#track(cellId);
        const ops: CellOp[] = [];
        for (const id of [...dirty.get(cellId)!].sort()) {
          const [section, key] = splitEntryId(id);
          const next = deriveEntry(this.model, cellId, section, key, domain);
          const current = (track.state[section] as Record<string, unknown>)[key];
          if (next === undefined ? current === undefined : current !== undefined && sameValue(current, next)) continue;
          ops.push(next === undefined ? { path: [section, key] } : { path: [section, key], value: next });
        }
        if (ops.length === 0) continue;
        const prevRevision = track.revision;
        track.hash = applyCellOps(track.state, track.hash, ops, true);
        track.revision = rec.seq;
        track.sinceSnapshot += 1;
        out.push({ kind: 'delta', cellId, revision: rec.seq, prevRevision, ops, hash: track.hash, at: rec.event.at });
        if (track.sinceSnapshot >= this.#opts.snapshotEvery) {
          out.push(this.#snapshot(cellId, track));
          track.sinceSnapshot = 0;
        }
      }
    }
    return out;
  }

  #track(cellId: string): CellTrack {
    const t: CellTrack = { state: emptyCellState(), revision: 0, hash: EMPTY_CELL_HASH, sinceSnapshot: 0 };
    this.#cells.set(cellId, t);
    return t;
  }

  #snapshot(cellId: string, t: CellTrack): PlannerOutput {
    // A shallow copy per section is enough: entries are replaced whole, never edited in place.
    const state = emptyCellState();
    for (const section of SECTIONS) Object.assign(state[section], t.state[section]);
    return { kind: 'snapshot', cellId, revision: t.revision, hash: t.hash, state };
  }

  /**
   * Changes which cells this instance owns. A cell taken over gets a snapshot at the current sequence (its state
   * is derived from the model, which every instance folds whole) and a delta linking any chain to it; a cell given
   * up is forgotten.
   */
  setOwnership(owns: (cellId: string) => boolean): PlannerOutput[] {
    this.#owns = owns;
    const out: PlannerOutput[] = [];
    for (const cellId of [...this.#known].sort()) {
      const had = this.#cells.has(cellId);
      if (owns(cellId) && !had) {
        const state = deriveCellState(this.model, cellId, this.#opts.domain);
        const t: CellTrack = { state, revision: this.model.seq, hash: cellHashOf(state), sinceSnapshot: 0 };
        this.#cells.set(cellId, t);
        out.push(this.#snapshot(cellId, t));
        // Agents follow deltas, not snapshots: a delta with no operations, from revision 0 to the snapshot's, moves an
        // agent holding the old owner's last state (the same state, when the old owner was up to date) to this
        // chain; one whose state differs finds a gap and reads the snapshot.
        if (t.revision > 0) out.push({ kind: 'delta', cellId, revision: t.revision, prevRevision: 0, ops: [], hash: t.hash, at: this.#lastAt });
      } else if (!owns(cellId) && had) {
        this.#cells.delete(cellId);
      }
    }
    return out;
  }

  /** A checkpoint of everything needed, with the log, to resume exactly. */
  checkpoint(): PlannerCheckpoint {
    const cells: PlannerCheckpoint['cells'] = dict();
    for (const [id, t] of this.#cells) cells[id] = { revision: t.revision, sinceSnapshot: t.sinceSnapshot };
    return { v: 2, seq: this.model.seq, cells };
  }
}
