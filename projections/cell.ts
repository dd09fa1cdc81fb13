// Each cell's desired state, derived from the global model; the changes between two states as operations; and
// which cells an event can affect. Pure: no clock, no I/O. Records only (no Map/Set), so states hash canonically.
//
// Enforcement is at the destination: a cell holds, for every app with a running container on it, the policies
// that allow traffic to that app (`ingress`), and the IPs of the source apps those policies name (`sources`). The
// agent expands them to (source IP, destination IP, protocol, ports) tuples. Keeping sources as per-app IP sets
// keeps the state small (no product of sources x destinations x policies) and makes a container start a small
// change: one IP in one set, on each cell that hosts a destination of its app.
//
// The state is a set of entries, each (section, key) -> value. The planner never re-derives a whole cell per event:
// `dirtyEntries` says which entries of which cells an event can change, `deriveEntry` computes one entry, and the
// hash is the XOR of the entries' hashes, so an update costs the size of the change, not the size of the cell.
// `deriveCellState` derives a whole cell the same way; tests check the two agree.
import { createHash } from 'node:crypto';
import type { EventEnvelope, Protocol } from '../events/catalogue.ts';
import { type ContainerState, type Model, lifecycleOf, parsePolicyRef, policiesInto, securityGroupsFor, spaceLifecycleKey } from './model.ts';
import type { EgressRule, Lifecycle } from '../events/security-groups.ts';
import { canonicalJson } from './canonical.ts';
import { type Dict, dict } from './dict.ts';

export const DEFAULT_DOMAIN = 'apps.internal';

export type LocalContainer = { appId: string; appName: string; instanceIndex: number; ip: string };
export type IngressRule = { sourceAppId: string; protocol: Protocol; startPort: number; endPort: number };

export type CellState = {
  /** Running containers of live apps on this cell. */
  containers: Dict<LocalContainer>;
  /** Destination app (with a container here) -> rule key (`source|protocol|start|end`) -> rule. */
  ingress: Dict<Dict<IngressRule>>;
  /** Source app named by an ingress rule -> IPs of its running containers (on any cell). */
  sources: Dict<Dict<true>>;
  /** Tags of the apps named by ingress rules (destinations and sources). */
  tags: Dict<number>;
  /** Discovery names of the local containers (`app.domain`, `index.app.domain`, lower case) -> IPs. */
  names: Dict<Dict<true>>;
  /** The cell itself while it is registered: key = cell id, value = its container range. */
  cell: Dict<CellInfo>;
  /**
   * While the cell is registered: every active cell with an underlay address (itself included) -> its range and
   * underlay address. What the cell agent's network driver routes by (services/cell-agent/network.ts).
   */
  topology: Dict<TopologyEntry>;
  /**
   * Egress (application security groups): per `<space>|<lifecycle>` with local containers that some group applies
   * to, their IPs and the groups (sorted ids). Absent for containers no group applies to: the agent's default
   * (`--egress-default`) governs them.
   */
  egress: Dict<EgressEntry>;
  /** The groups the cell's `egress` entries name -> name and rules. */
  asg: Dict<SecurityGroupEntry>;
};

export type EgressEntry = { ips: Dict<true>; groups: string[] };
export type SecurityGroupEntry = { name: string; rules: EgressRule[] };

export type CellInfo = { subnet: string };
/** One cell of the topology: its container range (leased or named) and the host address it is reached at. */
export type TopologyEntry = { subnet: string; underlay: string };

export function emptyCellState(): CellState {
  return { containers: dict(), ingress: dict(), sources: dict(), tags: dict(), names: dict(), cell: dict(), topology: dict(), egress: dict(), asg: dict() };
}

export const SECTIONS = ['containers', 'ingress', 'sources', 'tags', 'names', 'cell', 'topology', 'egress', 'asg'] as const;
export type Section = (typeof SECTIONS)[number];

const isLiveApp = (m: Model, appId: string | null | undefined): appId is string => !!appId && !!m.apps[appId] && !m.apps[appId]!.deleted;

/** Running containers of a live app on one cell. */
function localContainersOf(m: Model, appId: string, cellId: string): string[] {
  const out: string[] = [];
  if (!isLiveApp(m, appId)) return out;
  for (const id of Object.keys(m.containersByApp[appId] ?? {})) {
    const c = m.containers[id];
    if (c && c.status === 'running' && c.cellId === cellId && c.ip !== null && c.instanceIndex !== null) out.push(id);
  }
  return out;
}

const hostsApp = (m: Model, appId: string, cellId: string) => localContainersOf(m, appId, cellId).length > 0;

/** Live sources allowed into a destination app, as ingress rules (empty when none). */
function rulesInto(m: Model, destAppId: string): Dict<IngressRule> {
  const rules = dict<IngressRule>();
  for (const p of policiesInto(m, destAppId)) {
    const sourceAppId = p.sourceAppId;
    if (!isLiveApp(m, sourceAppId)) continue;
    rules[`${sourceAppId}|${p.protocol}|${p.startPort}|${p.endPort}`] = { sourceAppId, protocol: p.protocol, startPort: p.startPort, endPort: p.endPort };
  }
  return rules;
}

/** Does a live source have a policy to a live destination hosted on the cell? */
function isSourceOn(m: Model, sourceAppId: string, cellId: string): boolean {
  if (!isLiveApp(m, sourceAppId)) return false;
  const seen = new Set<string>();
  for (const p of Object.values(m.policies[sourceAppId] ?? {})) {
    if (seen.has(p.destAppId)) continue;
    seen.add(p.destAppId);
    if (hostsApp(m, p.destAppId, cellId)) return true;
  }
  return false;
}

/**
 * What one model state gives whatever the cell (an app's IPs as a source), derived once for all the cells an event
 * touches: they then share one object (entries are never edited), whose hash is computed once (SharedEntryHashes).
 * Valid for one model state only.
 */
export type DeriveMemo = Map<string, Dict<true> | undefined>;

/** One entry of a cell's desired state; undefined when the entry is absent. */
export function deriveEntry(m: Model, cellId: string, section: Section, key: string, domain: string = DEFAULT_DOMAIN, memo?: DeriveMemo): unknown {
  switch (section) {
    case 'containers': {
      const c = m.containers[key];
      if (!c || c.status !== 'running' || c.cellId !== cellId || !isLiveApp(m, c.appId) || c.ip === null || c.instanceIndex === null) return undefined;
      return { appId: c.appId, appName: m.apps[c.appId]!.name, instanceIndex: c.instanceIndex, ip: c.ip } satisfies LocalContainer;
    }
    case 'names': {
      const suffix = `.${domain}`;
      if (!key.endsWith(suffix)) return undefined;
      const labels = key.slice(0, -suffix.length).split('.');
      const name = labels.length === 1 ? labels[0]! : labels[1];
      const index = labels.length === 2 ? Number(labels[0]) : undefined;
      const appId = name === undefined || labels.length > 2 ? undefined : m.appIdByName[name];
      if (!appId) return undefined;
      const ips = dict<true>();
      for (const id of localContainersOf(m, appId, cellId)) {
        const c = m.containers[id]!;
        if (index === undefined || c.instanceIndex === index) ips[c.ip!] = true;
      }
      return Object.keys(ips).length > 0 ? ips : undefined;
    }
    case 'ingress': {
      if (!hostsApp(m, key, cellId)) return undefined;
      const rules = rulesInto(m, key);
      return Object.keys(rules).length > 0 ? rules : undefined;
    }
    case 'sources': {
      if (!isSourceOn(m, key, cellId)) return undefined;
      if (memo?.has(key)) return memo.get(key);
      const ips = dict<true>();
      for (const id of Object.keys(m.containersByApp[key] ?? {})) {
        const ip = m.containers[id]?.ip;
        if (ip) ips[ip] = true;
      }
      const value = Object.keys(ips).length > 0 ? ips : undefined;
      memo?.set(key, value);
      return value;
    }
    case 'cell': {
      const cell = m.cells[key];
      return key === cellId && cell?.status === 'active' ? ({ subnet: cell.subnet } satisfies CellInfo) : undefined;
    }
    case 'topology': {
      const other = m.cells[key];
      if (m.cells[cellId]?.status !== 'active' || other?.status !== 'active' || other.underlay === null) return undefined;
      return { subnet: other.subnet, underlay: other.underlay } satisfies TopologyEntry;
    }
    case 'egress': {
      const bar = key.lastIndexOf('|');
      const spaceId = key.slice(0, bar);
      const lifecycle = key.slice(bar + 1);
      if (lifecycle !== 'running' && lifecycle !== 'staging') return undefined;
      const groups = securityGroupsFor(m, spaceId, lifecycle);
      if (groups.length === 0) return undefined;
      const ips = dict<true>();
      for (const appId of Object.keys(m.appsBySpace[spaceId] ?? {})) {
        for (const id of localContainersOf(m, appId, cellId)) {
          const c = m.containers[id]!;
          if (lifecycleOf(c) === lifecycle) ips[c.ip!] = true;
        }
      }
      return Object.keys(ips).length > 0 ? ({ ips, groups } satisfies EgressEntry) : undefined;
    }
    case 'asg': {
      const g = m.securityGroups[key];
      if (!g) return undefined;
      for (const id of Object.keys(m.containersByCell[cellId] ?? {})) {
        const c = m.containers[id];
        if (!c || !isLiveApp(m, c.appId) || c.ip === null || c.instanceIndex === null) continue;
        const lc = lifecycleOf(c);
        if (g.globallyEnabled[lc] || g.spaces[lc][m.apps[c.appId]!.spaceId]) return { name: g.name, rules: g.rules } satisfies SecurityGroupEntry;
      }
      return undefined;
    }
    case 'tags': {
      const tag = m.tags.byApp[key];
      if (tag === undefined) return undefined;
      const asDest = hostsApp(m, key, cellId) && Object.keys(rulesInto(m, key)).length > 0;
      return asDest || isSourceOn(m, key, cellId) ? tag : undefined;
    }
  }
}

/**
 * The whole state of a cell, entry by entry: the reference the incremental planner is checked against. `memo`, shared
 * while deriving several cells from one model state, makes them share each app's source IPs (one object).
 */
export function deriveCellState(m: Model, cellId: string, domain: string = DEFAULT_DOMAIN, memo?: DeriveMemo): CellState {
  const s = emptyCellState();
  const set = (section: Section, key: string) => {
    const v = deriveEntry(m, cellId, section, key, domain, memo);
    if (v !== undefined) (s[section] as Record<string, unknown>)[key] = v;
  };
  set('cell', cellId);
  if (m.cells[cellId]?.status === 'active') for (const other of Object.keys(m.cells)) set('topology', other);
  const localApps = new Set<string>();
  const egressKeys = new Set<string>();
  for (const id of Object.keys(m.containersByCell[cellId] ?? {})) {
    set('containers', id);
    const c = m.containers[id];
    if (c?.appId && isLiveApp(m, c.appId) && c.instanceIndex !== null) {
      egressKeys.add(spaceLifecycleKey(m.apps[c.appId]!.spaceId, lifecycleOf(c)));
      localApps.add(c.appId);
      const name = m.apps[c.appId]!.name.toLowerCase();
      set('names', `${name}.${domain}`);
      set('names', `${c.instanceIndex}.${name}.${domain}`);
    }
  }
  for (const d of localApps) {
    set('ingress', d);
    set('tags', d);
    for (const rule of Object.values(rulesInto(m, d))) {
      set('sources', rule.sourceAppId);
      set('tags', rule.sourceAppId);
    }
  }
  for (const key of egressKeys) set('egress', key);
  for (const entry of Object.values(s.egress)) for (const g of entry.groups) if (s.asg[g] === undefined) set('asg', g);
  return s;
}

/** Entries an event can change, per cell, as `section \u0000 key`; judged on one model (ask before and after). */
export type DirtyEntries = Map<string, Set<string>>;

const entryId = (section: Section, key: string) => `${section}\u0000${key}`;
export const splitEntryId = (id: string): [Section, string] => {
  const at = id.indexOf('\u0000');
  return [id.slice(0, at) as Section, id.slice(at + 1)];
};

export function dirtyEntries(m: Model, e: EventEnvelope, domain: string = DEFAULT_DOMAIN, into: DirtyEntries = new Map()): DirtyEntries {
  const mark = (cellId: string, section: Section, key: string) => {
    let set = into.get(cellId);
    if (!set) into.set(cellId, (set = new Set()));
    set.add(entryId(section, key));
  };
  const cellsHosting = (appId: string): Set<string> => {
    const cells = new Set<string>();
    for (const id of Object.keys(m.containersByApp[appId] ?? {})) {
      const cell = m.containers[id]?.cellId;
      if (cell) cells.add(cell);
    }
    return cells;
  };
  const destinationsOf = (appId: string) => new Set(Object.values(m.policies[appId] ?? {}).map((p) => p.destAppId));
  const sourcesInto = (appId: string) => new Set(Object.keys(m.policiesByDest[appId] ?? {}).map((ref) => parsePolicyRef(ref).sourceAppId));
  /** Everything on a cell that depends on an app's presence there: its containers, names, ingress and tags. */
  const markAppOnCell = (appId: string, cellId: string) => {
    const app = m.apps[appId];
    for (const id of Object.keys(m.containersByApp[appId] ?? {})) {
      const c = m.containers[id];
      if (c?.cellId !== cellId) continue;
      mark(cellId, 'containers', id);
      if (app && c.instanceIndex !== null) mark(cellId, 'names', `${c.instanceIndex}.${app.name.toLowerCase()}.${domain}`);
    }
    if (app) mark(cellId, 'names', `${app.name.toLowerCase()}.${domain}`);
    mark(cellId, 'ingress', appId);
    mark(cellId, 'tags', appId);
    for (const s of sourcesInto(appId)) {
      mark(cellId, 'sources', s);
      mark(cellId, 'tags', s);
    }
  };
  /** An app's IPs as a source, on every cell hosting one of its destinations. */
  const markAsSource = (appId: string, tagsToo: boolean) => {
    for (const d of destinationsOf(appId)) {
      for (const cell of cellsHosting(d)) {
        mark(cell, 'sources', appId);
        if (tagsToo) {
          mark(cell, 'tags', appId);
          mark(cell, 'ingress', d);
          mark(cell, 'tags', d);
        }
      }
    }
  };
  /** A container's egress entry on its cell, and the groups that apply to it there. */
  const markEgress = (appId: string | null | undefined, cellId: string | null | undefined, lifecycle: Lifecycle) => {
    const app = appId ? m.apps[appId] : undefined;
    if (!app || !cellId) return;
    mark(cellId, 'egress', spaceLifecycleKey(app.spaceId, lifecycle));
    for (const g of securityGroupsFor(m, app.spaceId, lifecycle)) mark(cellId, 'asg', g);
  };
  const markEgressOf = (c: ContainerState | undefined) => {
    if (c?.status === 'running') markEgress(c.appId, c.cellId, lifecycleOf(c));
  };
  /** Every running container of a space with a lifecycle (all spaces: `spaceId` undefined): its egress entry and group `g`. */
  const markSpace = (spaceId: string | undefined, lifecycle: Lifecycle, g: string) => {
    const apps = spaceId === undefined ? Object.keys(m.apps) : Object.keys(m.appsBySpace[spaceId] ?? {});
    for (const appId of apps) {
      const app = m.apps[appId];
      if (!app) continue;
      for (const id of Object.keys(m.containersByApp[appId] ?? {})) {
        const c = m.containers[id];
        if (!c?.cellId || lifecycleOf(c) !== lifecycle) continue;
        mark(c.cellId, 'egress', spaceLifecycleKey(app.spaceId, lifecycle));
        mark(c.cellId, 'asg', g);
      }
    }
  };
  /** Everywhere a group applies in this model. */
  const markGroup = (g: string) => {
    const grp = m.securityGroups[g];
    if (!grp) return;
    for (const lc of ['running', 'staging'] as const) {
      if (grp.globallyEnabled[lc]) markSpace(undefined, lc, g);
      else for (const spaceId of Object.keys(grp.spaces[lc])) markSpace(spaceId, lc, g);
    }
  };
  switch (e.type) {
    case 'SecurityGroupCreated':
    case 'SecurityGroupUpdated':
    case 'SecurityGroupDeleted':
      markGroup(e.data.groupId);
      break;
    case 'SecurityGroupSpacesBound':
    case 'SecurityGroupSpacesUnbound':
      for (const spaceId of e.data.spaceIds) markSpace(spaceId, e.data.lifecycle, e.data.groupId);
      break;
    case 'CellRegistered':
    case 'CellDecommissioned': {
      // The cell's own entry; its place in every active cell's topology; and (joining or leaving) its whole topology.
      const x = e.data.cellId;
      mark(x, 'cell', x);
      for (const c of Object.values(m.cells)) {
        if (c.status !== 'active') continue;
        mark(c.id, 'topology', x);
        mark(x, 'topology', c.id);
      }
      break;
    }
    case 'AppRegistered':
    case 'AppRenamed':
    case 'AppDeleted': {
      const appId = e.data.appId;
      for (const cell of cellsHosting(appId)) markAppOnCell(appId, cell);
      markAsSource(appId, e.type === 'AppDeleted');
      for (const id of Object.keys(m.containersByApp[appId] ?? {})) markEgressOf(m.containers[id]);
      break;
    }
    case 'ContainerStarted':
    case 'ContainerStopped': {
      const c = m.containers[e.data.containerId];
      const appId = c?.appId ?? e.data.appId;
      const cellId = c?.cellId ?? e.data.cellId;
      if (cellId) mark(cellId, 'containers', e.data.containerId);
      if (appId && cellId) {
        const app = m.apps[appId];
        const index = c?.instanceIndex ?? (e.type === 'ContainerStarted' ? e.data.instanceIndex : null);
        if (app && index !== null) mark(cellId, 'names', `${index}.${app.name.toLowerCase()}.${domain}`);
        markAppOnCell(appId, cellId);
      }
      if (appId) markAsSource(appId, false);
      if (c) markEgressOf(c);
      else if (e.type === 'ContainerStarted') markEgress(e.data.appId, e.data.cellId, e.data.lifecycle ?? 'running');
      break;
    }
    case 'PoliciesCreated':
    case 'PoliciesDeleted': {
      const s = e.data.sourceAppId;
      for (const rule of e.data.policies) {
        for (const cell of cellsHosting(rule.destAppId)) {
          mark(cell, 'ingress', rule.destAppId);
          mark(cell, 'tags', rule.destAppId);
          mark(cell, 'sources', s);
          mark(cell, 'tags', s);
        }
      }
      break;
    }
    default: {
      const never: never = e;
      return never;
    }
  }
  return into;
}

/** One change: set the entry `path` = [section, key] to `value`, or delete it when `value` is absent. */
export type CellOp = { path: [Section, string]; value?: unknown };

/** The hash of one entry, as a 128-bit number. */
function entryHash(section: Section, key: string, value: unknown): bigint {
  return BigInt(
    '0x' +
      createHash('sha256')
        .update(canonicalJson([section, key, value]))
        .digest('hex')
        .slice(0, 32),
  );
}

/**
 * Entry hashes of values shared between a state and whatever else holds them (the planner's outputs), by value
 * object: such a value is derived for one entry and never edited, so its hash is computed when it is set and found
 * again when it is replaced (half the hashing of a change, which dominates the planner's cost per event).
 */
export type SharedEntryHashes = WeakMap<object, { section: Section; key: string; hash: bigint }>;

function sharedEntryHash(hashes: SharedEntryHashes, section: Section, key: string, value: unknown): bigint {
  if (typeof value !== 'object' || value === null) return entryHash(section, key, value);
  const known = hashes.get(value);
  if (known && known.section === section && known.key === key) return known.hash;
  const hash = entryHash(section, key, value);
  hashes.set(value, { section, key, hash });
  return hash;
}

const hashHex = (h: bigint) => h.toString(16).padStart(32, '0');

/** The hash of a whole state: XOR of its entries' hashes (order-free, so it can be kept up to date per entry). */
export function cellHashOf(state: CellState): string {
  let h = 0n;
  for (const section of SECTIONS) {
    for (const [key, value] of Object.entries(state[section])) h ^= entryHash(section, key, value);
  }
  return hashHex(h);
}

/**
 * Applies operations to a state in place and returns the new hash, updated entry by entry. Values are copied
 * unless `shared` is given (the planner shares them: its entries are replaced whole, never edited); their hashes
 * are then kept there.
 */
export function applyCellOps(state: CellState, hash: string, ops: readonly CellOp[], shared?: SharedEntryHashes): string {
  let h = BigInt('0x' + hash);
  const hashOf = shared ? (section: Section, key: string, value: unknown) => sharedEntryHash(shared, section, key, value) : entryHash;
  for (const {
    path: [section, key],
    value,
  } of ops) {
    const entries = state[section] as Record<string, unknown>;
    const old = entries[key];
    if (old !== undefined) h ^= hashOf(section, key, old);
    if (value === undefined) delete entries[key];
    else {
      entries[key] = shared ? value : structuredClone(value);
      h ^= hashOf(section, key, value);
    }
  }
  return hashHex(h);
}

/** Deep equality of two JSON values (records, arrays, primitives). */
export function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null || Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && sameValue((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}
