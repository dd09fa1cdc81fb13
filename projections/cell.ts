// Each cell's desired state, derived from the global model; the changes between two states as operations; and
// which cells an event can affect. Pure: no clock, no I/O. Records only (no Map/Set), so states hash canonically.
//
// Enforcement is at the destination: a cell holds, for every app with a running container on it, the policies
// that allow traffic to that app (`ingress`), and the IPs of the source apps those policies name (`sources`). The
// agent expands them to (source IP, destination IP, protocol, ports) tuples. Keeping sources as per-app IP sets
// keeps the state small (no product of sources x destinations x policies) and makes a container start a small
// change: one IP in one set, on each cell that hosts a destination of its app.
import type { EventEnvelope } from '../events/catalogue.ts';
import type { Model } from './model.ts';

export const DEFAULT_DOMAIN = 'apps.internal';

export type LocalContainer = { appId: string; appName: string; instanceIndex: number; ip: string };
export type IngressRule = { sourceAppId: string; protocol: 'tcp' | 'udp'; startPort: number; endPort: number };

export type CellState = {
  /** Running containers of live apps on this cell. */
  containers: Record<string, LocalContainer>;
  /** Destination app (with a container here) -> rule key (`source|protocol|start|end`) -> rule. */
  ingress: Record<string, Record<string, IngressRule>>;
  /** Source app named by an ingress rule -> IPs of its running containers (on any cell). */
  sources: Record<string, Record<string, true>>;
  /** Tags of the apps named by ingress rules (destinations and sources). */
  tags: Record<string, number>;
  /** Discovery names of the local containers (`app.domain`, `index.app.domain`, lower case) -> IPs. */
  names: Record<string, Record<string, true>>;
};

export function emptyCellState(): CellState {
  return { containers: {}, ingress: {}, sources: {}, tags: {}, names: {} };
}

function runningIpsOf(m: Model, appId: string): string[] {
  const ips: string[] = [];
  for (const id of Object.keys(m.containersByApp[appId] ?? {})) {
    const c = m.containers[id];
    if (c?.ip) ips.push(c.ip);
  }
  return ips;
}

const isLive = (m: Model, appId: string | null): appId is string => !!appId && !!m.apps[appId] && !m.apps[appId]!.deleted;

/** The desired state of one cell at the model's revision. */
export function deriveCellState(m: Model, cellId: string, domain: string = DEFAULT_DOMAIN): CellState {
  const s = emptyCellState();
  for (const id of Object.keys(m.containersByCell[cellId] ?? {})) {
    const c = m.containers[id];
    if (!c || c.status !== 'running' || !isLive(m, c.appId) || c.ip === null || c.instanceIndex === null) continue;
    const app = m.apps[c.appId]!;
    s.containers[id] = { appId: c.appId, appName: app.name, instanceIndex: c.instanceIndex, ip: c.ip };
    const name = app.name.toLowerCase();
    (s.names[`${name}.${domain}`] ??= {})[c.ip] = true;
    (s.names[`${c.instanceIndex}.${name}.${domain}`] ??= {})[c.ip] = true;
  }
  const destApps = new Set(Object.values(s.containers).map((c) => c.appId));
  for (const destAppId of destApps) {
    for (const ref of Object.keys(m.policiesByDest[destAppId] ?? {})) {
      const sourceAppId = ref.slice(0, ref.indexOf('|'));
      const p = m.policies[sourceAppId]?.[ref.slice(sourceAppId.length + 1)];
      if (!p || !isLive(m, sourceAppId)) continue;
      (s.ingress[destAppId] ??= {})[`${sourceAppId}|${p.protocol}|${p.startPort}|${p.endPort}`] = {
        sourceAppId,
        protocol: p.protocol,
        startPort: p.startPort,
        endPort: p.endPort,
      };
      if (!s.sources[sourceAppId]) {
        const ips = runningIpsOf(m, sourceAppId);
        if (ips.length > 0) s.sources[sourceAppId] = Object.fromEntries(ips.map((ip) => [ip, true as const]));
      }
      for (const app of [sourceAppId, destAppId]) {
        const tag = m.tags.byApp[app];
        if (tag !== undefined) s.tags[app] = tag;
      }
    }
  }
  return s;
}

function cellsHosting(m: Model, appId: string, into: Set<string>): void {
  for (const id of Object.keys(m.containersByApp[appId] ?? {})) {
    const cell = m.containers[id]?.cellId;
    if (cell) into.add(cell);
  }
}

function cellsHostingDestinationsOf(m: Model, sourceAppId: string, into: Set<string>): void {
  const dests = new Set(Object.values(m.policies[sourceAppId] ?? {}).map((p) => p.destAppId));
  for (const d of dests) cellsHosting(m, d, into);
}

/**
 * The cells whose state an event can change, judged on one model. The planner asks before and after folding the
 * event and takes the union, so both what the event removes and what it adds are covered.
 */
export function cellsTouchedBy(m: Model, e: EventEnvelope): Set<string> {
  const cells = new Set<string>();
  switch (e.type) {
    case 'AppRegistered':
    case 'AppRenamed':
    case 'AppDeleted':
      cellsHosting(m, e.data.appId, cells);
      cellsHostingDestinationsOf(m, e.data.appId, cells);
      break;
    case 'ContainerStarted':
    case 'ContainerStopped': {
      const c = m.containers[e.data.containerId];
      const appId = c?.appId ?? e.data.appId;
      const cellId = c?.cellId ?? e.data.cellId;
      if (cellId) cells.add(cellId);
      if (appId) cellsHostingDestinationsOf(m, appId, cells);
      break;
    }
    case 'PoliciesCreated':
    case 'PoliciesDeleted':
      for (const rule of e.data.policies) cellsHosting(m, rule.destAppId, cells);
      break;
    default: {
      const never: never = e;
      return never;
    }
  }
  return cells;
}

/** One change: set the value at `path`, or delete it when `value` is absent. */
export type CellOp = { path: string[]; value?: unknown };

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function sameJson(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (!isRecord(a) || !isRecord(b)) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => k in b && sameJson(a[k], b[k]));
}

/** The operations that turn `prev` into `next`, in a deterministic order (sorted keys). */
export function diffCellStates(prev: CellState, next: CellState): CellOp[] {
  const ops: CellOp[] = [];
  const walk = (a: Record<string, unknown>, b: Record<string, unknown>, path: string[], depth: number) => {
    const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
    for (const k of keys) {
      const va = a[k];
      const vb = b[k];
      if (vb === undefined) ops.push({ path: [...path, k] });
      else if (va === undefined) ops.push({ path: [...path, k], value: vb });
      else if (depth < 3 && isRecord(va) && isRecord(vb)) walk(va, vb, [...path, k], depth + 1);
      else if (!sameJson(va, vb)) ops.push({ path: [...path, k], value: vb });
    }
  };
  walk(prev as unknown as Record<string, unknown>, next as unknown as Record<string, unknown>, [], 0);
  return ops;
}

/** Applies operations to a state in place (the reader owns its copy). */
export function applyCellOps(state: CellState, ops: readonly CellOp[]): CellState {
  for (const op of ops) {
    let node = state as unknown as Record<string, unknown>;
    for (const key of op.path.slice(0, -1)) {
      let child = node[key];
      if (!isRecord(child)) {
        child = {};
        node[key] = child;
      }
      node = child as Record<string, unknown>;
    }
    const last = op.path[op.path.length - 1]!;
    if (op.value === undefined) delete node[last];
    else node[last] = structuredClone(op.value);
  }
  return state;
}
