// "Is revision N enforced on every cell?" — from what the planners and agents report. A cell is enforced at N when
// its agent has applied at least the cell's last planned revision at or below N (when the planner's latest
// revision for the cell is above N, N itself is required, which is sufficient and never too weak). Planners must
// have published their outputs through N, otherwise a cell untouched so far may still be about to change.
//
// Silent cells: a cell whose agent has not been heard (its discovery record, re-put every heartbeat) for
// `silentAfterMs` — dead, decommissioned without notice, or never served by any agent — is listed as silent and
// does not hold the answer back, so one such cell cannot make every revision "not enforced" forever. A cell heard
// recently is live, and a live cell that lags always holds the answer back.
import { kvLatest } from '../../runtime/buckets.ts';
import { isNoMessageFound, isStreamNotFound, kvLayout } from '../../runtime/nats-adapter.ts';
import type { Bus } from '../../runtime/nats.ts';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET, PLANNER_MEMBERS_BUCKET } from '../../runtime/subjects.ts';
import { latestPlannedPerCell } from './published.ts';
import { plannersOf } from './membership.ts';

export type CellEnforcement = {
  cellId: string;
  planned: number;
  required: number;
  applied: number | null;
  ok: boolean;
  /** Not ok, and its agent has not been heard for `silentAfterMs` (or ever): listed, but not waited for. */
  silent: boolean;
  /** For a cell that is not ok: when its agent was last heard (ISO), null when never. Null for ok cells. */
  lastHeard: string | null;
  error: string | null;
};
export type Enforcement = { revision: number; enforced: boolean; plannersBehind: string[]; silent: string[]; cells: CellEnforcement[] };

/** Three missed heartbeats of the default 5 s. */
const DEFAULT_SILENT_AFTER_MS = 15_000;

export type EnforcementOptions = { silentAfterMs?: number; now?: () => number };

export async function enforcementOf(bus: Bus, revision: number, opts: EnforcementOptions = {}): Promise<Enforcement> {
  const [planners, statuses, planned] = await Promise.all([
    kvLatest(bus, PLANNER_MEMBERS_BUCKET),
    kvLatest(bus, CELL_STATUS_BUCKET),
    latestPlannedPerCell(bus),
  ]);
  const now = (opts.now ?? Date.now)();
  const silentAfterMs = opts.silentAfterMs ?? DEFAULT_SILENT_AFTER_MS;
  const { members, publishedThrough } = plannersOf(planners);
  const plannersBehind = members.filter((id) => publishedThrough(id) < revision);
  for (const cell of statuses.keys()) if (!planned.has(cell)) planned.set(cell, 0);
  const ids = [...planned.keys()].sort();
  // When each cell's agent was last heard: read per cell, only for the cells that have not applied what is
  // required (only there does silence change the answer). One last-by-subject read each: a scan of the bucket can
  // leave subjects out while agents write it, and a live cell left out would look silent.
  const lagging = ids.filter((cellId) => {
    const applied = (statuses.get(cellId) as { revision?: number } | undefined)?.revision;
    return !(typeof applied === 'number' && applied >= Math.min(planned.get(cellId)!, revision));
  });
  const heard = new Map(await Promise.all(lagging.map(async (cellId) => [cellId, await lastHeard(bus, cellId)] as const)));
  const cells: CellEnforcement[] = ids.map((cellId) => {
    const p = planned.get(cellId)!;
    const required = Math.min(p, revision);
    const status = statuses.get(cellId) as { revision?: number; error?: string | null } | undefined;
    const applied = typeof status?.revision === 'number' ? status.revision : null;
    const ok = applied !== null && applied >= required;
    const heardAt = heard.get(cellId);
    const silent = !ok && (heardAt === undefined || now - heardAt > silentAfterMs);
    return {
      cellId,
      planned: p,
      required,
      applied,
      ok,
      silent,
      lastHeard: heardAt === undefined ? null : new Date(heardAt).toISOString(),
      error: status?.error ?? null,
    };
  });
  const enforced = members.length > 0 && plannersBehind.length === 0 && cells.every((c) => c.ok || c.silent);
  return { revision, enforced, plannersBehind, silent: cells.filter((c) => c.silent).map((c) => c.cellId), cells };
}

/** When a cell's agent last put its discovery record (its heartbeat), on the server's clock; undefined if never. */
async function lastHeard(bus: Bus, cellId: string): Promise<number | undefined> {
  try {
    const m = await bus.jsm.streams.getMessage(kvLayout.stream(DISCOVERY_BUCKET), { last_by_subj: kvLayout.subject(DISCOVERY_BUCKET, cellId) });
    const op = m?.header?.get('KV-Operation');
    return !m || op === 'DEL' || op === 'PURGE' ? undefined : m.time.getTime();
  } catch (err) {
    if (isNoMessageFound(err) || isStreamNotFound(err)) return undefined;
    throw err;
  }
}

/** Re-checks until revision N is enforced everywhere or the timeout passes; returns the last answer. */
export async function waitEnforced(bus: Bus, revision: number, timeoutMs: number, opts: EnforcementOptions = {}): Promise<Enforcement> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = await enforcementOf(bus, revision, opts);
    if (e.enforced || Date.now() >= deadline) return e;
    await new Promise((r) => setTimeout(r, Math.min(100, Math.max(0, deadline - Date.now()))));
  }
}
