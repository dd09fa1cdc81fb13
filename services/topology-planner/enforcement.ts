// "Is revision N enforced on every cell?" — from what the planners and agents report. A cell is enforced at N when
// its agent has applied at least the cell's last planned revision at or below N (when the planner's latest
// revision for the cell is above N, N itself is required, which is sufficient and never too weak). Planners must
// have published their outputs through N, otherwise a cell untouched so far may still be about to change.
//
// Silent cells: a cell whose agent has not been heard (its discovery record, re-put every heartbeat) for
// `silentAfterMs` — dead, decommissioned without notice, or never served by any agent — is listed as silent and
// does not hold the answer back, so one such cell cannot make every revision "not enforced" forever. A cell heard
// recently is live, and a live cell that lags always holds the answer back.
import { kvLatest, kvLatestEntries } from '../../runtime/buckets.ts';
import { isNoMessageFound, isStreamNotFound, kvLayout } from '../../runtime/nats-adapter.ts';
import type { Bus } from '../../runtime/nats.ts';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET, PLANNER_MEMBERS_BUCKET } from '../../runtime/subjects.ts';
import { latestPlannedPerCell } from './published.ts';
import { DEFAULT_MEMBER_DEAD_MS, plannersOf, stoppedMembers } from './membership.ts';

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
export type Enforcement = {
  revision: number;
  enforced: boolean;
  plannersBehind: string[];
  /** Dead planners (heartbeat stopped, entry not yet expired) whose cells the live ones have taken over: not waited for. */
  plannersStopped: string[];
  silent: string[];
  cells: CellEnforcement[];
};

/** Three missed heartbeats of the default 5 s. */
const DEFAULT_SILENT_AFTER_MS = 15_000;

export type EnforcementOptions = {
  silentAfterMs?: number;
  now?: () => number;
  /** A planner's heartbeat standing still this long while another's goes on: dead (the planners' `memberDeadMs`). */
  memberDeadMs?: number;
  /** `waitEnforced`: hears every answer while waiting (a progress bar of the cells). */
  onCheck?: (e: Enforcement) => void;
};

export async function enforcementOf(bus: Bus, revision: number, opts: EnforcementOptions = {}): Promise<Enforcement> {
  const [plannerEntries, statuses, planned] = await Promise.all([
    kvLatestEntries(bus, PLANNER_MEMBERS_BUCKET),
    kvLatest(bus, CELL_STATUS_BUCKET),
    latestPlannedPerCell(bus),
  ]);
  const now = (opts.now ?? Date.now)();
  const silentAfterMs = opts.silentAfterMs ?? DEFAULT_SILENT_AFTER_MS;
  const { members, plannersBehind, plannersStopped } = plannerProgress(plannerEntries, revision, opts.memberDeadMs);
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
  return { revision, enforced, plannersBehind, plannersStopped, silent: cells.filter((c) => c.silent).map((c) => c.cellId), cells };
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

/**
 * The planners (the bucket's entries with their stored times, kvLatestEntries) against revision N: the members, those
 * not yet published through N, and the dead ones not waited for — a planner whose heartbeat stopped while others went
 * on (its entry not yet expired) once every live planner says it published under members without it: its cells
 * were taken over, and their progress is what counts.
 */
export function plannerProgress(
  entries: ReadonlyMap<string, { value: unknown; time: number }>,
  revision: number,
  memberDeadMs = DEFAULT_MEMBER_DEAD_MS,
): { members: string[]; plannersBehind: string[]; plannersStopped: string[] } {
  const { members, publishedThrough, covers } = plannersOf(new Map([...entries].map(([k, e]) => [k, e.value])));
  const stopped = stoppedMembers(new Map(members.map((id) => [id, entries.get(`m.${id}`)!.time])), memberDeadMs);
  const live = members.filter((id) => !stopped.includes(id));
  const plannersStopped = stopped.filter((dead) => live.length > 0 && live.every((id) => covers(id)?.includes(dead) === false));
  // A live planner has published what it owns only once it says so under members that include every live one: one
  // that joined has taken its cells over, and the others have let them go (until then, their marks speak for other
  // owners). A planner that does not say under which members is taken at its mark.
  const current = (id: string) => {
    const c = covers(id);
    return c === null || live.every((m) => c.includes(m));
  };
  const plannersBehind = members.filter((id) => !plannersStopped.includes(id) && (publishedThrough(id) < revision || (live.includes(id) && !current(id))));
  return { members, plannersBehind, plannersStopped };
}

/** Re-checks until revision N is enforced everywhere or the timeout passes; returns the last answer. */
export async function waitEnforced(bus: Bus, revision: number, timeoutMs: number, opts: EnforcementOptions = {}): Promise<Enforcement> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const e = await enforcementOf(bus, revision, opts);
    opts.onCheck?.(e);
    if (e.enforced || Date.now() >= deadline) return e;
    await new Promise((r) => setTimeout(r, Math.min(100, Math.max(0, deadline - Date.now()))));
  }
}
