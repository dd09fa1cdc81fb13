// Operators' tools over the log: audit, state as of a point, explain, replay-and-compare. Each takes a bus and
// returns data; the CLI prints it (human or --json).
import { kvLatest, openBucket } from '../runtime/buckets.ts';
import type { Bus } from '../runtime/nats.ts';
import { EventLog, foldLog } from '../runtime/event-log.ts';
import type { Protocol } from '../events/catalogue.ts';
import { type AuditEntry, type AuditFilter, auditEntry, matches } from '../projections/audit.ts';
import {
  type Model,
  type QuarantineEntry,
  type SecurityGroupRecord,
  initialModel,
  allPolicies,
  allSecurityGroups,
  liveModelFold,
} from '../projections/model.ts';
import { cellHashOf, deriveCellState, emptyCellState, type CellState } from '../projections/cell.ts';
import { explain, type Explanation } from '../projections/explain.ts';
import { CELL_STATUS_BUCKET } from '../runtime/subjects.ts';
import { latestPlanned } from '../services/topology-planner/published.ts';
import type { CellStatus } from '../services/cell-agent/status.ts';

export async function audit(bus: Bus, f: AuditFilter): Promise<AuditEntry[]> {
  const out: AuditEntry[] = [];
  for await (const rec of new EventLog(bus).read(1)) if ('event' in rec && matches(rec, f)) out.push(auditEntry(rec));
  return out;
}

/** A point in the log: a revision, or an ISO time (the last event at or before it). */
export type Point = { revision: number } | { time: number };

export function parsePoint(text: string): Point {
  if (/^\d+$/.test(text)) return { revision: Number(text) };
  const time = Date.parse(text);
  if (Number.isNaN(time)) throw new Error(`"${text}" is neither a revision nor an ISO time`);
  return { time };
}

/** Folds the log up to a point (fold only); `onProgress` sees the count folded. */
export async function modelAt(bus: Bus, point: Point | undefined, onProgress?: (folded: number, total: number) => void): Promise<Model> {
  const log = new EventLog(bus);
  const total = await log.lastSeq();
  const opts: Parameters<typeof foldLog<Model>>[3] = {};
  if (point && 'revision' in point) opts.toSeq = point.revision;
  if (point && 'time' in point) opts.stopBefore = (rec) => Date.parse(rec.event.at) > point.time;
  if (onProgress) opts.onProgress = (folded) => onProgress(folded, total);
  return foldLog(log, liveModelFold, initialModel(), opts);
}

/** Every log entry the folds skipped (not a valid event, or a fold that failed), in log order. */
export async function quarantined(bus: Bus): Promise<{ revision: number; invalid: number; foldFailed: number; entries: QuarantineEntry[] }> {
  const m = await modelAt(bus, undefined);
  return { revision: m.seq, ...m.quarantine };
}

export type StateView = {
  revision: number;
  apps: { id: string; name: string; spaceId: string; deleted: boolean }[];
  containers: { id: string; appId: string | null; cellId: string | null; ip: string | null; status: string }[];
  policies: ReturnType<typeof allPolicies>;
  /** Application security groups with their rules, bindings, and who changed them last and when. */
  securityGroups: SecurityGroupRecord[];
  cell?: { cellId: string; hash: string; state: CellState };
};

export function stateView(m: Model, cellId?: string, domain?: string): StateView {
  const view: StateView = {
    revision: m.seq,
    apps: Object.values(m.apps)
      .map((a) => ({ id: a.id, name: a.name, spaceId: a.spaceId, deleted: a.deleted }))
      .sort((a, b) => (a.id < b.id ? -1 : 1)),
    containers: Object.values(m.containers)
      .map((c) => ({ id: c.id, appId: c.appId, cellId: c.cellId, ip: c.ip, status: c.status }))
      .sort((a, b) => (a.id < b.id ? -1 : 1)),
    policies: allPolicies(m),
    securityGroups: allSecurityGroups(m),
  };
  if (cellId) {
    const state = deriveCellState(m, cellId, domain);
    view.cell = { cellId, hash: cellHashOf(state), state };
  }
  return view;
}

export type ExplainView = Explanation & {
  source: string;
  destination: string;
  port: number;
  protocol: string;
  revision: number;
  enforcement: { cellId: string; planned: number | null; applied: number | null }[];
};

export async function explainAt(bus: Bus, m: Model, source: string, destination: string, port: number, protocol: Protocol): Promise<ExplainView> {
  const e = explain(m, source, destination, port, protocol);
  const status = await openBucket(bus, CELL_STATUS_BUCKET);
  const enforcement = await Promise.all(
    e.cells.map(async (cellId) => {
      const applied = status ? ((await status.get(cellId))?.json<{ revision?: number }>()?.revision ?? null) : null;
      const planned = await latestPlanned(bus, cellId);
      return { cellId, planned: planned?.revision ?? null, applied };
    }),
  );
  return { ...e, source, destination, port, protocol, revision: m.seq, enforcement };
}

export type ReplayCell = { cellId: string; replayed: string; planned: string | null; applied: string | null; ok: boolean };
export type ReplayReport = { revision: number; cells: ReplayCell[]; ok: boolean };

/**
 * Rebuilds every cell's state from the log and compares its hash with the planner's latest output and the
 * agent's applied state. With `to`, only the replayed hashes are given (live state is not as of then).
 */
export async function replay(bus: Bus, to: Point | undefined, domain: string, onProgress?: (folded: number, total: number) => void): Promise<ReplayReport> {
  const m = await modelAt(bus, to, onProgress);
  const cells = [...Object.keys(m.containersByCell), ...Object.keys(m.cells)];
  const statuses = to ? new Map<string, unknown>() : await kvLatest(bus, CELL_STATUS_BUCKET);
  const known = new Set([...cells, ...statuses.keys()]);
  const out: ReplayCell[] = [];
  for (const cellId of [...known].sort()) {
    const replayed = cellHashOf(deriveCellState(m, cellId, domain));
    if (to) {
      out.push({ cellId, replayed, planned: null, applied: null, ok: true });
      continue;
    }
    const planned = (await latestPlanned(bus, cellId))?.hash ?? null;
    const applied = (statuses.get(cellId) as { hash?: string } | undefined)?.hash ?? null;
    const empty = cellHashOf(emptyCellState());
    const ok = (planned ?? empty) === replayed && (applied === null || applied === replayed);
    out.push({ cellId, replayed, planned, applied, ok });
  }
  return { revision: m.seq, cells: out, ok: out.every((c) => c.ok) };
}

/** A cell as `netfold cells` shows it: its registration (lease, underlay address) from the log and its agent's status. */
export type CellView = {
  cellId: string;
  registration: { status: 'active' | 'decommissioned'; subnet: string; underlay: string | null; leased: boolean } | null;
  agent: CellStatus | null;
};

/** Every active cell and every cell whose agent reports, sorted by id. */
export function cellsView(m: Model, statuses: readonly CellStatus[]): CellView[] {
  const byId = new Map<string, CellView>();
  for (const c of Object.values(m.cells)) {
    if (c.status !== 'active') continue;
    byId.set(c.id, { cellId: c.id, registration: { status: c.status, subnet: c.subnet, underlay: c.underlay, leased: c.leased }, agent: null });
  }
  for (const s of statuses) {
    const c = m.cells[s.cellId];
    const registration = c ? { status: c.status, subnet: c.subnet, underlay: c.underlay, leased: c.leased } : null;
    byId.set(s.cellId, { cellId: s.cellId, registration, agent: s });
  }
  return [...byId.values()].sort((a, b) => (a.cellId < b.cellId ? -1 : a.cellId > b.cellId ? 1 : 0));
}
