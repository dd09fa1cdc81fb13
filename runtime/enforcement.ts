// "Is revision N enforced on every cell?" — from what the planners and agents report. A cell is enforced at N when
// its agent has applied at least the cell's last planned revision at or below N (when the planner's latest
// revision for the cell is above N, N itself is required, which is sufficient and never too weak). Planners must
// have published their outputs through N, otherwise a cell untouched so far may still be about to change.
import { kvLatest, lastPerSubject } from './buckets.ts';
import type { Bus } from './nats.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, CELL_STATUS_BUCKET, PLANNER_MEMBERS_BUCKET, cellSubject } from './subjects.ts';

export type CellEnforcement = { cellId: string; planned: number; required: number; applied: number | null; ok: boolean; error: string | null };
export type Enforcement = { revision: number; enforced: boolean; plannersBehind: string[]; cells: CellEnforcement[] };

/** The revision of the last message on every cell subject of a stream (bounded; see lastPerSubject). */
export async function lastRevisionPerCell(bus: Bus, stream: string, filter: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const m of await lastPerSubject(bus, stream, filter)) {
    const body = m.json<{ cellId: string; revision: number }>();
    out.set(body.cellId, Math.max(out.get(body.cellId) ?? 0, body.revision));
  }
  return out;
}

export async function enforcementOf(bus: Bus, revision: number): Promise<Enforcement> {
  const [planners, statuses, deltas, snapshots] = await Promise.all([
    kvLatest(bus, PLANNER_MEMBERS_BUCKET),
    kvLatest(bus, CELL_STATUS_BUCKET),
    lastRevisionPerCell(bus, CELL_DELTAS_STREAM, cellSubject.allDeltas),
    lastRevisionPerCell(bus, CELL_SNAPSHOTS_STREAM, cellSubject.allSnapshots),
  ]);
  const members = [...planners.keys()].filter((k) => k.startsWith('m.')).map((k) => k.slice(2));
  const plannersBehind = members.filter((id) => ((planners.get(`p.${id}`) as { publishedThrough?: number } | undefined)?.publishedThrough ?? 0) < revision);
  const planned = new Map(deltas);
  for (const [cell, r] of snapshots) planned.set(cell, Math.max(r, planned.get(cell) ?? 0));
  const cells: CellEnforcement[] = [...planned.keys()].sort().map((cellId) => {
    const p = planned.get(cellId)!;
    const required = Math.min(p, revision);
    const status = statuses.get(cellId) as { revision?: number; error?: string | null } | undefined;
    const applied = typeof status?.revision === 'number' ? status.revision : null;
    return { cellId, planned: p, required, applied, ok: applied !== null && applied >= required, error: status?.error ?? null };
  });
  return { revision, enforced: members.length > 0 && plannersBehind.length === 0 && cells.every((c) => c.ok), plannersBehind, cells };
}

/** Re-checks until revision N is enforced everywhere or the timeout passes; returns the last answer. */
export async function waitEnforced(bus: Bus, revision: number, timeoutMs: number): Promise<Enforcement> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = await enforcementOf(bus, revision);
    if (e.enforced || Date.now() >= deadline) return e;
    await new Promise((r) => setTimeout(r, Math.min(100, Math.max(0, deadline - Date.now()))));
  }
}
