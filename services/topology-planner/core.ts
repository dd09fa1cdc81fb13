// The planner's pure core: folds events into the global model and, for the cells this instance owns, turns each
// batch's effect into per-cell outputs: one delta per changed cell per batch (the net operation per entry, stamped
// with the last event of the batch that changed the cell and the cell's revision before the batch, plus the hash of
// the resulting state) and, every `snapshotEvery` deltas or when a cell is taken over, a full snapshot. Per event it
// re-derives only the entries the event can change (dirtyEntries), judged on the model before and after folding it,
// so its cost follows the size of the change; each cell's state and hash are exact at every event boundary, and the
// deltas of a batch are what the batch changed in net (an entry changed and changed back is no operation; a cell
// with no net operation gets no delta and keeps its revision). The log follower's batches set the grouping: small
// while the planner keeps up, up to 1,000 events when it falls behind, so it catches up in deltas per cell, not per
// event.
//
// What holds whatever the batch sizes: the same final cell states and hashes, and every delta's state is the cell's
// state after the event it is stamped with (a cell's state after event s is a pure function of the log). Byte-equal
// outputs do not hold: a restart folds other batches than the run before it. So a restart continues the chains that
// are stored instead of re-deriving them: it is given each cell's head — the revision of the last delta or snapshot
// already stored for it — and right after event `head` the cell's current group closes there (it is at or below what
// is stored: the publisher does not send it) and its revision becomes `head`, so its next delta has `prevRevision =
// head`. That holds for a take-over snapshot stored at `model.seq` too, which need not be a change point of the cell:
// after event s its state is that snapshot's. Heads at or below the checkpoint's sequence are ignored (what the
// checkpoint covers was stored before it was written). So every stored chain stays unbroken across restarts.
import type { RecordedEvent } from '../../events/catalogue.ts';
import {
  type CellOp,
  type CellState,
  type DeriveMemo,
  type SharedEntryHashes,
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
 * A cell's changes within the batch being folded, not emitted yet: its revision when the group began, the last
 * event that changed it, and each touched entry's value when the group began (undefined: absent).
 */
type Group = { prevRevision: number; revision: number; at: string; before: Map<string, unknown> };

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
  /** Hashes of the entry values the cells hold (shared with the outputs, never edited). */
  readonly #hashes: SharedEntryHashes = new WeakMap();
  /** Stored heads above the start sequence, in log order: [revision, cell]; `#nextHead` is the first not reached. */
  readonly #heads: [number, string][];
  #nextHead = 0;
  #stale = false;
  /** A settle pass under way: the cells it brings up, the next one, and its memo. */
  #settling: { cells: string[]; next: number; memo: DeriveMemo } | undefined;
  /** Owned cells whose stored head a fast-forward passed: taken over when settled. */
  readonly #headsPassed = new Set<string>();

  /**
   * A fresh core, or one resumed from a checkpoint with `model` = the log folded up to the checkpoint's sequence
   * (the core takes the model over; it must not be used elsewhere). `heads`: per cell, the revision of the last
   * delta or snapshot the cell streams already hold (see the header); those at or below the start are ignored.
   */
  constructor(opts: PlannerCoreOptions, resume?: { checkpoint: PlannerCheckpoint; model: Model }, heads: ReadonlyMap<string, number> = new Map()) {
    this.#opts = opts;
    this.#owns = opts.owns;
    const checkpoint = resume?.checkpoint;
    if (resume && resume.model.seq !== resume.checkpoint.seq) {
      throw new Error(`resume model is at ${resume.model.seq}, the checkpoint at ${resume.checkpoint.seq}`);
    }
    this.model = resume ? resume.model : initialModel({ subjectSeqs: false });
    for (const c of Object.values(this.model.containers)) if (c.cellId) this.#known.add(c.cellId);
    for (const cellId of Object.keys(this.model.cells)) this.#known.add(cellId); // a registered cell has state without containers
    const memo: DeriveMemo = new Map(); // one model state: the cells share each app's source IPs
    for (const [cellId, t] of Object.entries(checkpoint?.cells ?? {})) {
      this.#known.add(cellId);
      const state = deriveCellState(this.model, cellId, opts.domain, memo);
      this.#cells.set(cellId, { state, revision: t.revision, hash: cellHashOf(state), sinceSnapshot: t.sinceSnapshot });
    }
    this.#heads = [...heads].filter(([, revision]) => revision > this.model.seq).map(([cellId, revision]): [number, string] => [revision, cellId]);
    this.#heads.sort(([a, ca], [b, cb]) => a - b || (ca < cb ? -1 : ca > cb ? 1 : 0));
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

  /**
   * Folds events in order; returns the outputs for owned cells: per cell at most one delta for the batch (and one
   * more where a stored head closes a group inside it), in order per cell.
   */
  ingest(batch: readonly RecordedEvent[]): PlannerOutput[] {
    const out: PlannerOutput[] = this.settle();
    const groups = new Map<string, Group>();
    const domain = this.#opts.domain;
    this.#reachHeads(groups, out);
    for (const rec of batch) {
      if (rec.seq <= this.model.seq) continue;
      this.#lastAt = rec.event.at;
      const dirty = dirtyEntries(this.model, rec.event, domain);
      foldEventsInPlace(this.model, [rec]);
      dirtyEntries(this.model, rec.event, domain, dirty);
      const memo: DeriveMemo = new Map();
      for (const [cellId, ids] of dirty) {
        this.#known.add(cellId);
        if (!this.#owns(cellId)) continue;
        const track = this.#cells.get(cellId) ?? this.#track(cellId);
        let group = groups.get(cellId);
        const ops: CellOp[] = [];
        for (const id of ids) {
          const [section, key] = splitEntryId(id);
          const next = deriveEntry(this.model, cellId, section, key, domain, memo);
          const current = (track.state[section] as Record<string, unknown>)[key];
          if (next === undefined ? current === undefined : current !== undefined && sameValue(current, next)) continue;
          if (!group) groups.set(cellId, (group = { prevRevision: track.revision, revision: 0, at: '', before: new Map() }));
          if (!group.before.has(id)) group.before.set(id, current);
          ops.push(next === undefined ? { path: [section, key] } : { path: [section, key], value: next });
        }
        if (ops.length === 0) continue;
        track.hash = applyCellOps(track.state, track.hash, ops, this.#hashes);
        group!.revision = rec.seq;
        group!.at = rec.event.at;
      }
      this.#reachHeads(groups, out);
    }
    for (const cellId of [...groups.keys()].sort()) this.#close(cellId, groups.get(cellId)!, out);
    return out;
  }

  /**
   * Emits a cell's group: a delta of the net operations (each touched entry's value now, or its deletion), unless
   * every touched entry is back to its value when the group began; then nothing, and the revision stays.
   */
  #close(cellId: string, group: Group, out: PlannerOutput[]): void {
    const track = this.#cells.get(cellId)!;
    const ops: CellOp[] = [];
    for (const id of [...group.before.keys()].sort()) {
      const [section, key] = splitEntryId(id);
      const was = group.before.get(id);
      const now = (track.state[section] as Record<string, unknown>)[key];
      if (now === undefined ? was === undefined : was !== undefined && sameValue(was, now)) continue;
      ops.push(now === undefined ? { path: [section, key] } : { path: [section, key], value: now });
    }
    if (ops.length === 0) return;
    track.revision = group.revision;
    track.sinceSnapshot += 1;
    out.push({ kind: 'delta', cellId, revision: group.revision, prevRevision: group.prevRevision, ops, hash: track.hash, at: group.at });
    if (track.sinceSnapshot >= this.#opts.snapshotEvery) {
      out.push(this.#snapshot(cellId, track));
      track.sinceSnapshot = 0;
    }
  }

  /**
   * Every stored head the fold has reached (its revision at or below the model's sequence): an owned cell closes its
   * group there and takes the head as its revision, so its next delta continues the stored chain. (Right after event
   * s; or before the next event when the log entry at s was not an event and was skipped.)
   */
  #reachHeads(groups: Map<string, Group>, out: PlannerOutput[]): void {
    for (; this.#nextHead < this.#heads.length && this.#heads[this.#nextHead]![0] <= this.model.seq; this.#nextHead++) {
      const [revision, cellId] = this.#heads[this.#nextHead]!;
      if (!this.#owns(cellId)) continue;
      this.#known.add(cellId);
      const group = groups.get(cellId);
      if (group) {
        groups.delete(cellId);
        this.#close(cellId, group, out);
      }
      // A cell not tracked yet is derived whole: its state after event `revision` is the model's now.
      const track = this.#cells.get(cellId) ?? this.#derived(cellId, 0);
      if (track.revision < revision) track.revision = revision;
    }
  }

  /** Starts tracking a cell at its state in the model now. */
  #derived(cellId: string, revision: number, memo?: DeriveMemo): CellTrack {
    const state = deriveCellState(this.model, cellId, this.#opts.domain, memo);
    const t: CellTrack = { state, revision, hash: cellHashOf(state), sinceSnapshot: 0 };
    this.#cells.set(cellId, t);
    return t;
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

  /** How many cells this instance tracks (owns and has derived). */
  get cellCount(): number {
    return this.#cells.size;
  }

  /** Events folded by fastForward so far (for metrics and tests). */
  fastForwarded = 0;

  /** Whether events were folded past without deriving the owned cells (fastForward): `settle` brings them up. */
  get stale(): boolean {
    return this.#stale;
  }

  /**
   * Folds events into the model only, deriving nothing: for a planner far behind the log (a bulk change, a long
   * catch-up), where deriving per event costs about ten times the fold, and for one catching up before it joins
   * (owning nothing). The owned cells keep their states until `settle`, which `ingest` and `setOwnership` run
   * first; meanwhile nothing about those cells may be announced as published, nor checkpointed.
   */
  fastForward(batch: readonly RecordedEvent[]): void {
    const fresh = batch.filter((rec) => rec.seq > this.model.seq);
    if (fresh.length === 0) return;
    let touchesOwned = false;
    for (const rec of fresh) {
      const cellId = (rec.event.data as { cellId?: unknown }).cellId;
      if (typeof cellId !== 'string') continue;
      this.#known.add(cellId);
      touchesOwned ||= this.#owns(cellId);
    }
    this.#lastAt = fresh[fresh.length - 1]!.event.at;
    foldEventsInPlace(this.model, fresh);
    this.fastForwarded += fresh.length;
    this.#settling = undefined; // a pass under way derived cells at an older model state: begin again
    for (; this.#nextHead < this.#heads.length && this.#heads[this.#nextHead]![0] <= this.model.seq; this.#nextHead++) {
      const cellId = this.#heads[this.#nextHead]![1];
      if (this.#owns(cellId)) this.#headsPassed.add(cellId);
    }
    // (a planner owning nothing, catching up before it joins, has nothing to settle)
    if (touchesOwned || this.#cells.size > 0 || this.#headsPassed.size > 0) this.#stale = true;
  }

  /**
   * After a fast-forward: every owned cell derived whole from the model and compared with the state it holds. A
   * cell that changed gets one delta of every changed entry, from its revision to the model's sequence (its state
   * after that event), and a snapshot when one is due. A cell whose stored head was passed is taken over instead (a
   * snapshot and a link delta): a reader on that head may hold a state the delta does not lead from. `limit`: at
   * most this many cells now; the core stays stale until a call has brought up the last one.
   */
  settle(limit = Infinity): PlannerOutput[] {
    const out: PlannerOutput[] = [];
    if (!this.#stale) return out;
    const domain = this.#opts.domain;
    // The cells to bring up, fixed when a pass begins (a fast-forward during a pass begins it again); each call does
    // up to `limit` of them, so a caller can spread a pass over turns of its event loop.
    this.#settling ??= { cells: [...this.#known].filter((c) => this.#owns(c)).sort(), next: 0, memo: new Map() };
    const pass = this.#settling;
    const memo = pass.memo; // one model state during a pass: the cells share each app's source IPs
    for (let done = 0; pass.next < pass.cells.length && done < limit; done++) {
      const cellId = pass.cells[pass.next++]!;
      if (this.#headsPassed.has(cellId)) {
        this.#cells.delete(cellId);
        this.#takeOver(cellId, out, memo);
        continue;
      }
      const track = this.#cells.get(cellId) ?? this.#track(cellId);
      const next = deriveCellState(this.model, cellId, domain, memo);
      const ops: CellOp[] = [];
      for (const section of SECTIONS) {
        const held = track.state[section] as Record<string, unknown>;
        const now = next[section] as Record<string, unknown>;
        for (const key of Object.keys(held)) if (now[key] === undefined) ops.push({ path: [section, key] });
        for (const key of Object.keys(now)) {
          const value = now[key];
          const current = held[key];
          if (current === undefined || !sameValue(current, value)) ops.push({ path: [section, key], value });
        }
      }
      if (ops.length === 0) continue;
      const prevRevision = track.revision;
      track.hash = applyCellOps(track.state, track.hash, ops, this.#hashes);
      track.revision = this.model.seq;
      track.sinceSnapshot += 1;
      out.push({ kind: 'delta', cellId, revision: track.revision, prevRevision, ops, hash: track.hash, at: this.#lastAt });
      if (track.sinceSnapshot >= this.#opts.snapshotEvery) {
        out.push(this.#snapshot(cellId, track));
        track.sinceSnapshot = 0;
      }
    }
    if (pass.next < pass.cells.length) return out;
    this.#settling = undefined;
    this.#stale = false;
    this.#headsPassed.clear();
    return out;
  }

  /**
   * Changes which cells this instance owns. A cell taken over gets a snapshot at the current sequence (its state
   * is derived from the model, which every instance folds whole) and a delta linking any chain to it; a cell given
   * up is forgotten.
   */
  setOwnership(owns: (cellId: string) => boolean): PlannerOutput[] {
    const out = this.settle(); // the cells owned so far brought up to the model first
    this.#owns = owns;
    this.#reachHeads(new Map(), out); // between batches: no group is open, nothing is emitted
    const memo: DeriveMemo = new Map();
    for (const cellId of [...this.#known].sort()) {
      const had = this.#cells.has(cellId);
      if (owns(cellId) && !had) this.#takeOver(cellId, out, memo);
      else if (!owns(cellId) && had) this.#cells.delete(cellId);
    }
    return out;
  }

  /** Starts owning a cell at the model's sequence: a snapshot, and a delta linking any chain to it. */
  #takeOver(cellId: string, out: PlannerOutput[], memo: DeriveMemo): void {
    const t = this.#derived(cellId, this.model.seq, memo);
    out.push(this.#snapshot(cellId, t));
    // Agents follow deltas, not snapshots: a delta with no operations, from revision 0 to the snapshot's, moves an
    // agent holding the old owner's last state (the same state, when the old owner was up to date) to this
    // chain; one whose state differs finds a gap and reads the snapshot.
    if (t.revision > 0) out.push({ kind: 'delta', cellId, revision: t.revision, prevRevision: 0, ops: [], hash: t.hash, at: this.#lastAt });
  }

  /** A checkpoint of everything needed, with the log, to resume exactly. */
  checkpoint(): PlannerCheckpoint {
    if (this.#stale) throw new Error('no checkpoint of a fast-forwarded core before it settles');
    const cells: PlannerCheckpoint['cells'] = dict();
    for (const [id, t] of this.#cells) cells[id] = { revision: t.revision, sinceSnapshot: t.sinceSnapshot };
    return { v: 2, seq: this.model.seq, cells };
  }
}
