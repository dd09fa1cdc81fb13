// What the planners have published for each cell, read back from the cell streams (projections/cell-stream.ts):
// the one reader of "latest planned per cell", for the planner's own restart (not sending again what is there),
// the enforcement answer and the operators' tools.
import { lastPerSubject } from '../../runtime/buckets.ts';
import { isNoMessageFound } from '../../runtime/nats-adapter.ts';
import type { Bus } from '../../runtime/nats.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, type PlannerOutput, cellSubject, revisionOf } from '../../projections/cell-stream.ts';

export type Published = { revision: number; hash: string | null };

/** The last delta (or snapshot) of every cell: its revision and stream sequence. Complete, or an error (see lastPerSubject). */
async function lastPublishedPerCell(bus: Bus, kind: 'delta' | 'snapshot'): Promise<Map<string, { revision: number; seq: number }>> {
  const [stream, filter] = kind === 'delta' ? [CELL_DELTAS_STREAM, cellSubject.allDeltas] : [CELL_SNAPSHOTS_STREAM, cellSubject.allSnapshots];
  const out = new Map<string, { revision: number; seq: number }>();
  for (const m of await lastPerSubject(bus, stream, filter)) {
    const r = revisionOf(m.data);
    if (r && m.subject === (kind === 'delta' ? cellSubject.delta(r.cellId) : cellSubject.snapshot(r.cellId)))
      out.set(r.cellId, { revision: r.revision, seq: m.seq });
  }
  return out;
}

/**
 * What the cell streams hold, for a planner that starts: per cell its latest planned revision (`heads`: its last
 * delta or snapshot, whichever is newer) and per cell subject the sequence of its last message (`lastSeq`: where the
 * planner's next output there must follow, output-publisher.ts).
 */
export async function publishedHeads(bus: Bus): Promise<{ heads: Map<string, number>; lastSeq: Map<string, number> }> {
  const [deltas, snapshots] = await Promise.all([lastPublishedPerCell(bus, 'delta'), lastPublishedPerCell(bus, 'snapshot')]);
  const heads = new Map<string, number>();
  const lastSeq = new Map<string, number>();
  for (const [cell, d] of deltas) {
    heads.set(cell, d.revision);
    lastSeq.set(cellSubject.delta(cell), d.seq);
  }
  for (const [cell, s] of snapshots) {
    heads.set(cell, Math.max(s.revision, heads.get(cell) ?? 0));
    lastSeq.set(cellSubject.snapshot(cell), s.seq);
  }
  return { heads, lastSeq };
}

/** Every cell's latest planned revision: its last delta or snapshot, whichever is newer. */
export async function latestPlannedPerCell(bus: Bus): Promise<Map<string, number>> {
  return (await publishedHeads(bus)).heads;
}

/**
 * Is an output already covered by what its cell's streams hold (`head`: the cell's latest planned revision, its last
 * delta or snapshot)? A delta at or below the head is: the stored chain reaches it (a restart re-derives deltas that
 * may be grouped otherwise, and continues the chain from the head, services/topology-planner/core.ts). A snapshot
 * below the head is too: its revision may not be on the stored chain, and a reader that took it could not follow
 * the deltas after it. A snapshot at the head is the state the head stands for, and may be sent again.
 */
export function isAlreadyPlanned(o: Pick<PlannerOutput, 'kind' | 'revision'>, head: number | undefined): boolean {
  if (head === undefined) return false;
  return o.kind === 'delta' ? o.revision <= head : o.revision < head;
}

async function lastOn(bus: Bus, stream: string, subject: string): Promise<Published | null> {
  try {
    // From the stream's leader: a direct get may be answered by any replica, and one that just came back can serve a
    // stale message for a long while (a chaos run saw an old hash as "planned" for minutes).
    const msg = await bus.jsm.streams.getMessage(stream, { last_by_subj: subject });
    const r = msg ? revisionOf(msg.data) : null;
    return r ? { revision: r.revision, hash: r.hash } : null;
  } catch (err) {
    if (isNoMessageFound(err)) return null;
    throw err;
  }
}

/**
 * The last message of one cell's delta or snapshot subject: its stream sequence and, when it is a plan of the cell
 * stream contract, its revision (null: something else was written there — a reader skips it); null when none.
 */
export async function lastStoredOn(bus: Bus, kind: PlannerOutput['kind'], cellId: string): Promise<{ revision: number | null; seq: number } | null> {
  const [stream, subject] = kind === 'delta' ? [CELL_DELTAS_STREAM, cellSubject.delta(cellId)] : [CELL_SNAPSHOTS_STREAM, cellSubject.snapshot(cellId)];
  try {
    const msg = await bus.jsm.streams.getMessage(stream, { last_by_subj: subject }); // from the leader (see lastOn)
    if (!msg) return null;
    const r = revisionOf(msg.data);
    return { revision: r && r.cellId === cellId ? r.revision : null, seq: msg.seq };
  } catch (err) {
    if (isNoMessageFound(err)) return null;
    throw err;
  }
}

/** One cell's latest planned revision and hash (its last delta or snapshot, whichever is newer); null if none. */
export async function latestPlanned(bus: Bus, cellId: string): Promise<Published | null> {
  const [d, s] = await Promise.all([
    lastOn(bus, CELL_DELTAS_STREAM, cellSubject.delta(cellId)),
    lastOn(bus, CELL_SNAPSHOTS_STREAM, cellSubject.snapshot(cellId)),
  ]);
  if (!d) return s;
  if (!s) return d;
  return s.revision > d.revision ? s : d;
}
