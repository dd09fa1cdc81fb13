// Checks one cell's stored outputs the way readers use them (projections/cell-stream.ts CellReplica): the chain of
// deltas must be followable, as stored, from empty (crossing a stored snapshot where the chain continues from one:
// a take-over) and from the cell's last snapshot, and both readers must end at the expected hash.
import { cellHashOf } from '../../projections/cell.ts';
import { CellReplica, type CellDelta, type CellSnapshot } from '../../projections/cell-stream.ts';

/** What is wrong with a cell's stored chain; empty when nothing is. `snapshots` in the order stored, the last one last. */
export function chainProblems(cellId: string, deltas: readonly CellDelta[], snapshots: readonly CellSnapshot[], expectedHash: string): string[] {
  const problems: string[] = [];
  const revisions = deltas.map((d) => d.revision);
  if (new Set(revisions).size !== revisions.length) problems.push(`${cellId}: a revision stored twice`);
  // A reader that followed the deltas as they were stored, from the start.
  const live = new CellReplica(cellId);
  for (const d of deltas) {
    let r = live.applyDelta(d);
    // A take-over's link (no operations, from revision 0) leads to the snapshot at its own revision.
    const link = d.ops.length === 0 && d.prevRevision === 0;
    const bridge = snapshots.find((s) => s.revision === (link ? d.revision : d.prevRevision) && s.revision > live.revision);
    if (r === 'gap' && bridge) {
      live.applySnapshot(structuredClone(bridge));
      r = link ? 'applied' : live.applyDelta(d);
    }
    if (r !== 'applied') problems.push(`${cellId}: the delta ${d.prevRevision} -> ${d.revision} is ${r} for a reader at ${live.revision}`);
  }
  // A cell taken over after its last change has a snapshot and no delta after it: the reader re-reads it with its
  // next delta (a take-over), so it counts here.
  const newest = snapshots[snapshots.length - 1];
  if (newest && newest.revision > live.revision) live.applySnapshot(structuredClone(newest));
  if (live.hash !== expectedHash) problems.push(`${cellId}: a reader following the stored deltas ends at ${live.revision} ${live.hash}, not ${expectedHash}`);
  if (cellHashOf(live.state) !== live.hash) problems.push(`${cellId}: the followed state does not hash to its hash`);
  // A reader that starts late: the last snapshot, then every delta in revision order (what CellFeed does).
  const late = new CellReplica(cellId);
  const snap = snapshots[snapshots.length - 1];
  if (snap) late.applySnapshot(structuredClone(snap));
  for (const d of [...deltas].sort((a, b) => a.revision - b.revision)) {
    const r = late.applyDelta(d);
    if (r !== 'applied' && !(r === 'stale' && d.revision <= (snap?.revision ?? 0)))
      problems.push(`${cellId}: after the snapshot, ${d.prevRevision} -> ${d.revision} is ${r}`);
  }
  if (late.hash !== expectedHash) problems.push(`${cellId}: a reader from the last snapshot ends at ${late.hash}, not ${expectedHash}`);
  return problems;
}
