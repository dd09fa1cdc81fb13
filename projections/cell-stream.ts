// The cell stream: the contract between the topology planner (writer) and every reader of a cell's desired state
// (the cell agent's push and poll feeds, the enforcement answer, operators' tools, tests). One owner for all of it:
// the wire types and their validators, the subjects and message ids, and a pure replica that applies snapshots and
// deltas exactly as every reader must. Pure: no clock, no I/O.
//
//   nf.cell.snap.<cellId>    a cell's latest full desired state  { cellId, revision, hash, state }   msg id s:<cell>:<rev>
//   nf.cell.delta.<cellId>   a cell's changes                    { cellId, revision, prevRevision, ops, hash, at }  d:<cell>:<rev>
//   nf.cell.state.<cellId>   request/reply: the owning planner answers with a snapshot body (the polling baseline)
//
// `revision` is the event-log sequence the message reflects; a delta's `prevRevision` is the cell's revision
// before it (a reader holding another one has a gap). `hash` is the cell's state hash after it (projections/cell.ts:
// XOR of the entries' hashes), checked by every reader.
import { type CellOp, type CellState, type SharedEntryHashes, SECTIONS, applyCellOps, cellHashOf, emptyCellState } from './cell.ts';

export const CELL_SNAPSHOTS_STREAM = 'NF_CELL_SNAPSHOTS';
export const CELL_DELTAS_STREAM = 'NF_CELL_DELTAS';

export const cellSubject = {
  snapshot: (cellId: string) => `nf.cell.snap.${cellId}`,
  delta: (cellId: string) => `nf.cell.delta.${cellId}`,
  allSnapshots: 'nf.cell.snap.*',
  allDeltas: 'nf.cell.delta.*',
  /** Request/reply: the owning planner answers with the cell's current state (what a polling agent pulls). */
  state: (cellId: string) => `nf.cell.state.${cellId}`,
  allStates: 'nf.cell.state.*',
} as const;

/** Message ids (Nats-Msg-Id) of the planner's outputs: a re-sent output is stored once. */
const cellMessageId = {
  delta: (cellId: string, revision: number) => `d:${cellId}:${revision}`,
  snapshot: (cellId: string, revision: number) => `s:${cellId}:${revision}`,
} as const;

/** The revision a delta's message id names (`d:<cell>:<rev>` of cell `cellId`), or undefined when it names none. */
export function deltaRevisionOf(msgId: string | undefined, cellId: string): number | undefined {
  const prefix = `d:${cellId}:`;
  if (msgId === undefined || !msgId.startsWith(prefix)) return undefined;
  const digits = msgId.slice(prefix.length);
  return /^[0-9]{1,15}$/.test(digits) ? Number(digits) : undefined;
}

/** `at`: the time of the event the delta reflects (agents measure propagation from it). */
export type CellDelta = { cellId: string; revision: number; prevRevision: number; ops: CellOp[]; hash: string; at?: string };
export type CellSnapshot = { cellId: string; revision: number; hash: string; state: CellState };

/** What the planner core produces: deltas and snapshots, tagged (the tag is not on the wire). */
export type PlannerOutput = ({ kind: 'delta' } & CellDelta & { at: string }) | ({ kind: 'snapshot' } & CellSnapshot);

/** The subject an output is published on. */
export const outputSubject = (o: PlannerOutput): string => (o.kind === 'delta' ? cellSubject.delta(o.cellId) : cellSubject.snapshot(o.cellId));

/** The wire body of an output (its message, without the tag), with its subject and message id. */
export function outputMessage(o: PlannerOutput): { subject: string; msgId: string; body: string } {
  if (o.kind === 'delta') return { subject: cellSubject.delta(o.cellId), msgId: cellMessageId.delta(o.cellId, o.revision), body: deltaJson(o) };
  const { kind: _, ...body } = o;
  return { subject: cellSubject.snapshot(o.cellId), msgId: cellMessageId.snapshot(o.cellId, o.revision), body: JSON.stringify(body) };
}

/**
 * The JSON of entry values recently written, by object: the planner shares one value among every cell it goes to
 * (an app's source IPs go to each cell with a rule from that app: ~20 per container start, ~100 source apps per cell
 * in a settle) and never edits one (projections/cell.ts, SharedEntryHashes), so each is serialized once. Bounded by
 * entries and by characters, and cleared when full: it only has to span the outputs of one batch, and it holds the
 * values it names (replaced ones too) until then.
 */
const valueJson = new Map<object, string>();
let valueJsonChars = 0;
const VALUE_JSON_MAX = 8192;
const VALUE_JSON_MAX_CHARS = 4_000_000;

function jsonOfValue(value: unknown): string {
  if (typeof value !== 'object' || value === null) return JSON.stringify(value);
  let json = valueJson.get(value);
  if (json === undefined) {
    json = JSON.stringify(value);
    if (valueJson.size >= VALUE_JSON_MAX || valueJsonChars + json.length > VALUE_JSON_MAX_CHARS) {
      valueJson.clear();
      valueJsonChars = 0;
    }
    valueJson.set(value, json);
    valueJsonChars += json.length;
  }
  return json;
}

/** A delta's body: what JSON.stringify of it (without the tag) writes, byte for byte, its entry values from the cache. */
function deltaJson(d: CellDelta): string {
  let ops = '';
  for (const op of d.ops) {
    const path = `{"path":[${JSON.stringify(op.path[0])},${JSON.stringify(op.path[1])}]`;
    ops += (ops === '' ? '' : ',') + (op.value === undefined ? `${path}}` : `${path},"value":${jsonOfValue(op.value)}}`);
  }
  const at = d.at === undefined ? '' : `,"at":${JSON.stringify(d.at)}`;
  const head = `{"cellId":${JSON.stringify(d.cellId)},"revision":${d.revision},"prevRevision":${d.prevRevision}`;
  return `${head},"ops":[${ops}],"hash":${JSON.stringify(d.hash)}${at}}`;
}

// ---- validators -------------------------------------------------------------------------------------------------

const HASH = /^[0-9a-f]{32}$/;
const isRevision = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;
const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function jsonOf(data: Uint8Array | string): unknown {
  try {
    return JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
  } catch {
    return undefined;
  }
}

/** A delta of cell `cellId`, or null when it is not JSON or not of the delta's shape (op values are checked by the hash). */
export function parseCellDelta(data: Uint8Array | string, cellId: string): CellDelta | null {
  const d = jsonOf(data);
  if (!isRecord(d) || d.cellId !== cellId || !isRevision(d.revision) || !isRevision(d.prevRevision) || d.revision <= d.prevRevision) return null;
  if (typeof d.hash !== 'string' || !HASH.test(d.hash) || (d.at !== undefined && typeof d.at !== 'string')) return null;
  if (
    !Array.isArray(d.ops) ||
    !d.ops.every((o: unknown) => isRecord(o) && Array.isArray(o.path) && o.path.length === 2 && SECTIONS.includes(o.path[0]) && typeof o.path[1] === 'string')
  )
    return null;
  return d as CellDelta;
}

/**
 * A snapshot of cell `cellId` (also the body of a `nf.cell.state` answer), or null unless it is JSON of the
 * snapshot's shape whose state hashes to its hash. Sections are copied into dicts (an outside id such as
 * `constructor` is then an ordinary key); a section an older planner did not write is empty.
 */
export function parseCellSnapshot(data: Uint8Array | string, cellId: string): CellSnapshot | null {
  const s = jsonOf(data);
  if (!isRecord(s) || s.cellId !== cellId || !isRevision(s.revision) || typeof s.hash !== 'string' || !HASH.test(s.hash)) return null;
  const state = s.state;
  if (!isRecord(state) || !Object.keys(state).every((k) => (SECTIONS as readonly string[]).includes(k))) return null;
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

/** The revision a message on a cell subject carries (a delta or a snapshot), or null when it has none. */
export function revisionOf(data: Uint8Array | string): { cellId: string; revision: number; hash: string | null } | null {
  const m = jsonOf(data);
  if (!isRecord(m) || typeof m.cellId !== 'string' || !isRevision(m.revision)) return null;
  return { cellId: m.cellId, revision: m.revision, hash: typeof m.hash === 'string' && HASH.test(m.hash) ? m.hash : null };
}

// ---- the replica ------------------------------------------------------------------------------------------------

/**
 * What applying a message did: `applied`; `stale` (at or below the revision held: duplicates and a planner
 * re-publishing after a restart change nothing); `gap` (a delta that does not follow the revision held: re-read
 * the snapshot); `mismatch` (the delta's result does not hash to its hash: undone, re-read the snapshot);
 * `invalid` (not a message of this contract).
 */
export type ApplyResult = 'applied' | 'stale' | 'gap' | 'mismatch' | 'invalid';

export const EMPTY_CELL_HASH = cellHashOf(emptyCellState());

/** Most deltas a replica keeps waiting for the one they follow (CellReplica.offerDelta). */
const MAX_AHEAD = 1024;

/**
 * One cell's desired state as a reader holds it. Deltas are applied in place with an undo list (a delta costs the
 * entries it changes, not the cell); a mismatching hash puts the old entries back, so the state held is always one
 * the planner planned. `verified` becomes true with the first snapshot or delta adopted (the initial empty state is
 * not a plan).
 */
export class CellReplica {
  readonly cellId: string;
  state: CellState = emptyCellState();
  revision = 0;
  hash = EMPTY_CELL_HASH;
  verified = false;
  /** Moves whenever the discovery names may have changed (a snapshot, or a delta touching `names`). */
  namesSeq = 0;
  /** Time of the event behind the last delta applied (undefined after a snapshot). */
  eventAt: string | undefined;
  /** Deltas that came before the one they follow (stored out of order), by the revision they follow; bounded. */
  readonly #ahead = new Map<number, CellDelta>();
  /**
   * The hashes of the entry values held, by value: a delta's values are parsed for this replica alone and never
   * edited, so they are kept as they are (not copied) and a value's hash is computed once, when it is set, not again
   * when it is replaced (half the hashing of a delta, and no copy of every value: a settle's ~54 KB per cell).
   */
  readonly #hashes: SharedEntryHashes = new WeakMap();

  constructor(cellId: string) {
    this.cellId = cellId;
  }

  /** How many deltas are kept waiting for the one they follow. */
  get waiting(): number {
    return this.#ahead.size;
  }

  /**
   * Applies a delta, or keeps it (`held`) when it follows a revision newer than the one held: a delta stored before
   * the one it follows (a publish retried across a stream leader change) is applied as soon as that one arrives, with
   * no re-read. Every delta applied applies the kept ones that follow it; a kept one that does not hash to its hash
   * makes the result `mismatch` (it is dropped, the state stays the last one planned).
   */
  offerDelta(d: CellDelta): ApplyResult | 'held' {
    const r = this.applyDelta(d);
    if (r === 'gap' && d.prevRevision > this.revision) {
      if (this.#ahead.size >= MAX_AHEAD) return 'gap';
      this.#ahead.set(d.prevRevision, d);
      return 'held';
    }
    if (r !== 'applied') return r;
    return this.#applyAhead();
  }

  #applyAhead(): 'applied' | 'mismatch' {
    let result: 'applied' | 'mismatch' = 'applied';
    for (let next = this.#ahead.get(this.revision); next; next = this.#ahead.get(this.revision)) {
      this.#ahead.delete(next.prevRevision);
      if (this.applyDelta(next) === 'mismatch') result = 'mismatch';
    }
    for (const [prev, d] of this.#ahead) if (d.revision <= this.revision || prev < this.revision) this.#ahead.delete(prev);
    return result;
  }

  /** Adopts a snapshot (already validated) when it is at least as new as what is held. */
  applySnapshot(snap: CellSnapshot): ApplyResult {
    if (snap.cellId !== this.cellId) return 'invalid';
    if (snap.revision < this.revision || (snap.revision === this.revision && this.verified && snap.hash === this.hash)) return 'stale';
    this.state = snap.state;
    this.revision = snap.revision;
    this.hash = snap.hash;
    this.verified = true;
    this.eventAt = undefined;
    this.namesSeq += 1;
    this.#applyAhead();
    return 'applied';
  }

  /**
   * Applies a delta (already validated) in place. A delta that follows an older revision than the one held but leads
   * past it (two planners' chains for one cell: a take-over snapshot, then the old owner's next delta) is tried: the
   * state held is a planned one, so if the delta's operations turn it into a state with the delta's hash, that is
   * the planned state at the delta's revision; if not, it is undone and reported as a `gap`, not a mismatch.
   */
  applyDelta(d: CellDelta): ApplyResult {
    if (d.cellId !== this.cellId) return 'invalid';
    if (d.revision <= this.revision) return 'stale';
    if (d.prevRevision > this.revision || (d.prevRevision < this.revision && !this.verified)) return 'gap';
    const undo = d.ops.map(({ path: [section, key] }) => [section, key, this.state[section][key]] as const);
    const hash = applyCellOps(this.state, this.hash, d.ops, this.#hashes);
    if (hash !== d.hash) {
      for (const [section, key, old] of undo.reverse()) {
        const entries = this.state[section] as Record<string, unknown>;
        if (old === undefined) delete entries[key];
        else entries[key] = old;
      }
      // (no operations: a planner's link to its take-over snapshot, which cannot change a state: never a forgery)
      return d.prevRevision === this.revision && d.ops.length > 0 ? 'mismatch' : 'gap';
    }
    if (d.ops.some((o) => o.path[0] === 'names')) this.namesSeq += 1;
    this.revision = d.revision;
    this.hash = hash;
    this.verified = true;
    this.eventAt = d.at;
    return 'applied';
  }

  /** Parses and applies a message from a cell subject: a delta, or with `snapshot` a snapshot. */
  applyMessage(data: Uint8Array | string, kind: 'delta' | 'snapshot'): ApplyResult {
    if (kind === 'snapshot') {
      const snap = parseCellSnapshot(data, this.cellId);
      return snap ? this.applySnapshot(snap) : 'invalid';
    }
    const d = parseCellDelta(data, this.cellId);
    return d ? this.applyDelta(d) : 'invalid';
  }
}
