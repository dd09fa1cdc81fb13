// The global model: one pure fold of the whole event log into plain JSON (records, not Map/Set), so it can be
// snapshotted, hashed and compared. The policy-writer decides against it; the topology planner derives each
// cell's desired state from it. A fold never throws on a recorded event and ignores an event it has already seen
// (by stream sequence); every rule below is idempotent, so a re-appended duplicate changes nothing either.
import { produce, type Draft } from 'immer';
import { type EventEnvelope, type PolicyRule, type RecordedEvent, policyKey } from '../events/catalogue.ts';
import type { EgressRule, GloballyEnabled, Lifecycle } from '../events/security-groups.ts';
import { type Dict, dict } from './dict.ts';
import { cidrContains, cidrsOverlap, firstFreeAddress, firstFreeSubnet } from './ipv4.ts';

export type AppState = {
  id: string;
  name: string;
  spaceId: string;
  orgId: string;
  deleted: boolean;
  registeredAt: string;
  deletedAt: string | null;
};

export type ContainerState = {
  id: string;
  /** null for a stop that arrived before any start (a tombstone). */
  appId: string | null;
  cellId: string | null;
  instanceIndex: number | null;
  ip: string | null;
  status: 'running' | 'stopped';
  startedAt: string | null;
  stoppedAt: string | null;
  /** Present only for a staging task (absent: an app instance, `running`), so older models hash as before. */
  lifecycle?: 'staging';
};

/** An application security group (egress rules), with the spaces it is bound to per lifecycle. */
export type SecurityGroupRecord = {
  id: string;
  name: string;
  rules: EgressRule[];
  globallyEnabled: GloballyEnabled;
  spaces: { running: Dict<true>; staging: Dict<true> };
  createdAt: string;
  createdBy: string;
  createdSeq: number;
  updatedAt: string;
  updatedBy: string;
  updatedSeq: number;
};

export type PolicyRecord = PolicyRule & {
  sourceAppId: string;
  createdAt: string;
  createdBy: string;
  /** Event-log sequence of the event that created it. */
  createdSeq: number;
};

export type CellRecord = {
  id: string;
  /** The cell's container range (IPv4 CIDR inside the overlay): its containers' IPs lie in it. */
  subnet: string;
  /** The host address other cells reach this cell's containers through; null when the cell did not give one. */
  underlay: string | null;
  /** True when the writer leased `subnet` from the overlay; false when the registration named it. */
  leased: boolean;
  status: 'active' | 'decommissioned';
  registeredAt: string;
  decommissionedAt: string | null;
};

/**
 * A log entry no fold could use: `invalid` (not an event of this build's catalogue; skipped) or `fold-failed` (a
 * valid event whose fold threw: a bug; the event is skipped the same way by every fold, so replays still agree).
 */
export type QuarantineEntry = { seq: number; subject: string; reason: 'invalid' | 'fold-failed'; error: string; eventId?: string; type?: string };

/** The quarantine keeps the first 1,000 entries and counts the rest. */
export const MAX_QUARANTINE_ENTRIES = 1000;

/** Tags are 16-bit, as Cloud Foundry's default; 0 is never assigned. */
export const MAX_TAG = 0xffff;

export type Model = {
  /** The last event-log sequence folded in: the revision this model reflects. */
  seq: number;
  /**
   * Last sequence per aggregate subject: the expected-last-subject-sequence of the next append. Kept only where
   * appends are decided (the writer, the operators' tools): at 250,000 containers it holds ~27 MiB (issue 16).
   */
  subjectSeq?: Dict<number>;
  apps: Dict<AppState>;
  /** Live apps by lower-cased name (names are DNS labels, so unique among live apps). */
  appIdByName: Dict<string>;
  containers: Dict<ContainerState>;
  /** Running containers by app and by cell. */
  containersByApp: Dict<Dict<true>>;
  containersByCell: Dict<Dict<true>>;
  /** The running container holding each IP: one holder per IP, ever. */
  containersByIp: Dict<string>;
  /** Cells registered (and decommissioned) by events. */
  cells: Dict<CellRecord>;
  /** Policies by source app, then by policy key (destination|protocol|start|end). */
  policies: Dict<Dict<PolicyRecord>>;
  /** Index: destination app -> `${source}|${key}`. */
  policiesByDest: Dict<Dict<true>>;
  tags: { byApp: Dict<number>; next: number; free: number[] };
  /** Live apps by space (egress rules are bound to spaces). */
  appsBySpace: Dict<Dict<true>>;
  /** Application security groups by id; live ones by name (names are unique). */
  securityGroups: Dict<SecurityGroupRecord>;
  securityGroupIdByName: Dict<string>;
  /** Groups bound per `<space>|<lifecycle>`, and the globally enabled ones per lifecycle. */
  securityGroupsBySpace: Dict<Dict<true>>;
  globalSecurityGroups: { running: Dict<true>; staging: Dict<true> };
  /**
   * Log entries skipped (see QuarantineEntry): how many by reason, and the first MAX_QUARANTINE_ENTRIES of them in
   * log order (bounded, so a log full of garbage cannot grow every model without limit).
   */
  quarantine: { invalid: number; foldFailed: number; entries: QuarantineEntry[] };
};

/** The last sequence of an aggregate subject in a model that tracks them (undefined: the model never saw it). */
export function subjectSeqOf(m: Model, subject: string): number | undefined {
  if (!m.subjectSeq) throw new Error('this model does not track subject sequences (initialModel({ subjectSeqs: false }))');
  return m.subjectSeq[subject];
}

/** An empty model; `subjectSeqs: false` for a reader that never appends (the planner). */
export function initialModel(opts: { subjectSeqs?: boolean } = {}): Model {
  return {
    seq: 0,
    ...(opts.subjectSeqs !== false && { subjectSeq: dict<number>() }),
    apps: dict(),
    appIdByName: dict(),
    containers: dict(),
    containersByApp: dict(),
    containersByCell: dict(),
    containersByIp: dict(),
    cells: dict(),
    policies: dict(),
    policiesByDest: dict(),
    tags: { byApp: dict(), next: 1, free: [] },
    appsBySpace: dict(),
    securityGroups: dict(),
    securityGroupIdByName: dict(),
    securityGroupsBySpace: dict(),
    globalSecurityGroups: { running: dict(), staging: dict() },
    quarantine: { invalid: 0, foldFailed: 0, entries: [] },
  };
}

/** Folds a batch of recorded events (in log order) into the model. Pure: returns a new model (immer). */
export function foldEvents(model: Model, batch: readonly RecordedEvent[]): Model {
  if (batch.length === 0 || batch[batch.length - 1]!.seq <= model.seq) return model;
  return produce(model, (draft) => foldInto(draft, batch));
}

/**
 * The same fold applied in place, for a process that owns its model privately (the live log follower): immer
 * copies every record it writes to, which on records of 50k+ containers costs O(n) per batch. Both run the very
 * same `applyEvent`, so their results are identical (the sequence tests check it).
 */
export function foldEventsInPlace(model: Model, batch: readonly RecordedEvent[], step: FoldStep = applyEvent): Model {
  foldInto(model as Draft<Model>, batch, step);
  return model;
}

/** One event's effect on the model. `applyEvent` is the only one; tests pass a failing one to prove quarantine. */
export type FoldStep = (m: Draft<Model>, e: EventEnvelope, seq: number) => void;

function foldInto(draft: Draft<Model>, batch: readonly RecordedEvent[], step: FoldStep = applyEvent): void {
  for (const rec of batch) {
    if (rec.seq <= draft.seq) continue;
    try {
      step(draft, rec.event, rec.seq);
    } catch (err) {
      // Never expected (every event that passes parseEvent folds); if it happens the event is skipped, recorded,
      // and the fold goes on: the same code makes the same (partial) change and the same entry in every fold.
      draft.quarantine.foldFailed += 1;
      if (draft.quarantine.entries.length < MAX_QUARANTINE_ENTRIES) {
        draft.quarantine.entries.push({
          seq: rec.seq,
          subject: rec.subject,
          reason: 'fold-failed',
          error: errorText(err),
          eventId: rec.event.id,
          type: rec.event.type,
        });
      }
    }
    draft.seq = rec.seq;
    if (draft.subjectSeq) draft.subjectSeq[rec.subject] = rec.seq;
  }
}

const errorText = (err: unknown) => (err instanceof Error ? `${err.name}: ${err.message}` : String(err)).slice(0, 300);

/** Moves a model past a log entry that holds no valid event, recording it in the quarantine. */
export function skipEntry(m: Model, seq: number, subject: string, error: string): Model {
  if (seq <= m.seq) return m;
  m.quarantine.invalid += 1;
  if (m.quarantine.entries.length < MAX_QUARANTINE_ENTRIES) m.quarantine.entries.push({ seq, subject, reason: 'invalid', error: error.slice(0, 300) });
  m.seq = seq;
  if (m.subjectSeq) m.subjectSeq[subject] = seq;
  return m;
}

/** Why the model would ignore a container start (the decider refuses the same; the fold settles races). */
export function startConflict(
  m: Model,
  d: { containerId: string; cellId: string; ip: string },
): 'ip-in-use' | 'cell-decommissioned' | 'ip-outside-cell' | undefined {
  const holder = m.containersByIp[d.ip];
  if (holder !== undefined && holder !== d.containerId) return 'ip-in-use';
  const cell = m.cells[d.cellId];
  if (cell?.status === 'decommissioned') return 'cell-decommissioned';
  if (cell && !cidrContains(cell.subnet, d.ip)) return 'ip-outside-cell';
  return undefined;
}

/** Active cells whose subnet overlaps the given one (other than the cell itself). */
export function overlappingCells(m: Model, cellId: string, subnet: string): string[] {
  return Object.values(m.cells)
    .filter((c) => c.status === 'active' && c.id !== cellId && cidrsOverlap(c.subnet, subnet))
    .map((c) => c.id)
    .sort();
}

/** The active cell (other than `cellId`) registered with an underlay address, if any: one cell per host address. */
export function underlayHolder(m: Model, cellId: string, underlay: string | null): string | undefined {
  if (underlay === null) return undefined;
  return Object.values(m.cells).find((c) => c.status === 'active' && c.id !== cellId && c.underlay === underlay)?.id;
}

/** The range the next leased cell gets: the lowest free range of prefix length `bits` in the overlay (undefined: none left). */
export function nextFreeSubnet(m: Model, overlayCidr: string, bits: number): string | undefined {
  const taken = Object.values(m.cells)
    .filter((c) => c.status === 'active')
    .map((c) => c.subnet);
  return firstFreeSubnet(overlayCidr, bits, taken);
}

/** The address the next container started on an active cell without an IP gets: the lowest one no running container holds. */
export function nextFreeAddress(m: Model, cellId: string): string | undefined {
  const cell = m.cells[cellId];
  if (cell?.status !== 'active') return undefined;
  return firstFreeAddress(cell.subnet, (ip) => m.containersByIp[ip] !== undefined);
}

function applyEvent(m: Draft<Model>, e: EventEnvelope, seq: number): void {
  switch (e.type) {
    case 'AppRegistered': {
      if (m.apps[e.data.appId]) return; // ids are never reused; a repeat changes nothing
      m.apps[e.data.appId] = {
        id: e.data.appId,
        name: e.data.name,
        spaceId: e.data.spaceId,
        orgId: e.data.orgId,
        deleted: false,
        registeredAt: e.at,
        deletedAt: null,
      };
      claimName(m, e.data.name, e.data.appId);
      addIndex(m.appsBySpace, e.data.spaceId, e.data.appId);
      return;
    }
    case 'AppRenamed': {
      const app = m.apps[e.data.appId];
      if (!app || app.deleted || app.name === e.data.name) return;
      releaseName(m, app.name, app.id);
      app.name = e.data.name;
      claimName(m, app.name, app.id);
      return;
    }
    case 'AppDeleted': {
      const app = m.apps[e.data.appId];
      if (!app || app.deleted) return;
      app.deleted = true;
      app.deletedAt = e.at;
      releaseName(m, app.name, app.id);
      removeIndex(m.appsBySpace, app.spaceId, app.id);
      // Policies of a deleted app go with it, even one created concurrently with the deletion.
      for (const key of Object.keys(m.policies[app.id] ?? {})) removePolicy(m, app.id, key);
      for (const ref of Object.keys(m.policiesByDest[app.id] ?? {})) {
        const { sourceAppId, key } = parsePolicyRef(ref);
        removePolicy(m, sourceAppId, key);
      }
      releaseTag(m, app.id);
      return;
    }
    case 'ContainerStarted': {
      if (m.containers[e.data.containerId]) return; // first start wins; a start after its stop is ignored
      const d = e.data;
      // Two writers may race past the decider's checks; the log order settles it: the later start is ignored.
      if (startConflict(m as Model, d)) return;
      m.containers[d.containerId] = {
        id: d.containerId,
        appId: d.appId,
        cellId: d.cellId,
        instanceIndex: d.instanceIndex,
        ip: d.ip,
        status: 'running',
        startedAt: e.at,
        stoppedAt: null,
        ...(d.lifecycle === 'staging' && { lifecycle: 'staging' as const }),
      };
      addIndex(m.containersByApp, d.appId, d.containerId);
      addIndex(m.containersByCell, d.cellId, d.containerId);
      m.containersByIp[d.ip] = d.containerId;
      return;
    }
    case 'ContainerStopped': {
      const c = m.containers[e.data.containerId];
      if (!c) {
        m.containers[e.data.containerId] = {
          id: e.data.containerId,
          appId: e.data.appId,
          cellId: e.data.cellId,
          instanceIndex: null,
          ip: null,
          status: 'stopped',
          startedAt: null,
          stoppedAt: e.at,
        };
        return;
      }
      if (c.status === 'stopped') return;
      c.status = 'stopped';
      c.stoppedAt = e.at;
      if (c.appId) removeIndex(m.containersByApp, c.appId, c.id);
      if (c.cellId) removeIndex(m.containersByCell, c.cellId, c.id);
      if (c.ip !== null && m.containersByIp[c.ip] === c.id) delete m.containersByIp[c.ip];
      return;
    }
    case 'CellRegistered': {
      const { cellId, subnet, underlay, leased } = e.data;
      const cell = m.cells[cellId];
      if (cell?.status === 'active') return; // a repeat; a change of subnet is refused by the decider
      if (overlappingCells(m as Model, cellId, subnet).length > 0) return; // lost a race with another registration
      if (underlayHolder(m as Model, cellId, underlay) !== undefined) return; // the same: one active cell per host address
      m.cells[cellId] = { id: cellId, subnet, underlay, leased, status: 'active', registeredAt: e.at, decommissionedAt: null };
      return;
    }
    case 'CellDecommissioned': {
      const cell = m.cells[e.data.cellId];
      if (!cell || cell.status !== 'active') return;
      const running = m.containersByCell[cell.id];
      if (running && Object.keys(running).length > 0) return; // lost a race with a start: the cell stays
      cell.status = 'decommissioned';
      cell.decommissionedAt = e.at;
      return;
    }
    case 'PoliciesCreated': {
      const src = m.apps[e.data.sourceAppId];
      for (const rule of e.data.policies) {
        const dst = m.apps[rule.destAppId];
        // A policy naming an app that is unknown or deleted at this point of the log has no effect.
        if (!src || src.deleted || !dst || dst.deleted) continue;
        const key = policyKey(rule);
        const bySource = (m.policies[src.id] ??= dict());
        if (bySource[key]) continue;
        bySource[key] = { ...rule, sourceAppId: src.id, createdAt: e.at, createdBy: e.actor, createdSeq: seq };
        addIndex(m.policiesByDest, rule.destAppId, policyRef(src.id, key));
        claimTag(m, src.id);
        claimTag(m, rule.destAppId);
      }
      return;
    }
    case 'PoliciesDeleted': {
      for (const rule of e.data.policies) removePolicy(m, e.data.sourceAppId, policyKey(rule));
      return;
    }
    case 'SecurityGroupCreated': {
      const d = e.data;
      if (m.securityGroups[d.groupId]) return; // a repeat
      if (m.securityGroupIdByName[d.name] !== undefined) return; // lost a race for the name: the decider refuses it otherwise
      const spaces = { running: dict<true>(), staging: dict<true>() };
      m.securityGroups[d.groupId] = {
        id: d.groupId,
        name: d.name,
        rules: d.rules,
        globallyEnabled: { ...d.globallyEnabled },
        spaces,
        createdAt: e.at,
        createdBy: e.actor,
        createdSeq: seq,
        updatedAt: e.at,
        updatedBy: e.actor,
        updatedSeq: seq,
      };
      m.securityGroupIdByName[d.name] = d.groupId;
      for (const lc of LIFECYCLE_LIST) if (d.globallyEnabled[lc]) m.globalSecurityGroups[lc][d.groupId] = true;
      bindSpaces(m, d.groupId, 'running', d.runningSpaces);
      bindSpaces(m, d.groupId, 'staging', d.stagingSpaces);
      return;
    }
    case 'SecurityGroupUpdated': {
      const d = e.data;
      const g = m.securityGroups[d.groupId];
      if (!g) return;
      const holder = m.securityGroupIdByName[d.name];
      if (holder !== undefined && holder !== g.id) return; // lost a race for the new name
      if (m.securityGroupIdByName[g.name] === g.id) delete m.securityGroupIdByName[g.name];
      g.name = d.name;
      m.securityGroupIdByName[d.name] = g.id;
      g.rules = d.rules;
      g.globallyEnabled = { ...d.globallyEnabled };
      for (const lc of LIFECYCLE_LIST) {
        if (d.globallyEnabled[lc]) m.globalSecurityGroups[lc][g.id] = true;
        else delete m.globalSecurityGroups[lc][g.id];
      }
      g.updatedAt = e.at;
      g.updatedBy = e.actor;
      g.updatedSeq = seq;
      return;
    }
    case 'SecurityGroupDeleted': {
      const g = m.securityGroups[e.data.groupId];
      if (!g) return;
      for (const lc of LIFECYCLE_LIST) {
        unbindSpaces(m, g.id, lc, Object.keys(g.spaces[lc]));
        delete m.globalSecurityGroups[lc][g.id];
      }
      if (m.securityGroupIdByName[g.name] === g.id) delete m.securityGroupIdByName[g.name];
      delete m.securityGroups[g.id];
      return;
    }
    case 'SecurityGroupSpacesBound': {
      if (!m.securityGroups[e.data.groupId]) return;
      bindSpaces(m, e.data.groupId, e.data.lifecycle, e.data.spaceIds);
      const g = m.securityGroups[e.data.groupId]!;
      g.updatedAt = e.at;
      g.updatedBy = e.actor;
      g.updatedSeq = seq;
      return;
    }
    case 'SecurityGroupSpacesUnbound': {
      if (!m.securityGroups[e.data.groupId]) return;
      unbindSpaces(m, e.data.groupId, e.data.lifecycle, e.data.spaceIds);
      const g = m.securityGroups[e.data.groupId]!;
      g.updatedAt = e.at;
      g.updatedBy = e.actor;
      g.updatedSeq = seq;
      return;
    }
    default: {
      const never: never = e;
      return never;
    }
  }
}

const LIFECYCLE_LIST = ['running', 'staging'] as const satisfies readonly Lifecycle[];

/** The key of `securityGroupsBySpace` (and of a cell's `egress` entries): `<space>|<lifecycle>` (ids hold no `|`). */
export const spaceLifecycleKey = (spaceId: string, lifecycle: Lifecycle): string => `${spaceId}|${lifecycle}`;

function bindSpaces(m: Draft<Model>, groupId: string, lc: Lifecycle, spaceIds: readonly string[]): void {
  const g = m.securityGroups[groupId]!;
  for (const s of spaceIds) {
    g.spaces[lc][s] = true;
    addIndex(m.securityGroupsBySpace, spaceLifecycleKey(s, lc), groupId);
  }
}

function unbindSpaces(m: Draft<Model>, groupId: string, lc: Lifecycle, spaceIds: readonly string[]): void {
  const g = m.securityGroups[groupId]!;
  for (const s of spaceIds) {
    delete g.spaces[lc][s];
    removeIndex(m.securityGroupsBySpace, spaceLifecycleKey(s, lc), groupId);
  }
}

/** The lifecycle of a container record (`running` unless recorded as a staging task). */
export const lifecycleOf = (c: ContainerState): Lifecycle => c.lifecycle ?? 'running';

/** The live security groups that apply to a space's containers of one lifecycle: bound to it, or globally enabled; sorted. */
export function securityGroupsFor(m: Model, spaceId: string, lifecycle: Lifecycle): string[] {
  const ids = new Set([
    ...Object.keys(m.globalSecurityGroups[lifecycle]),
    ...Object.keys(m.securityGroupsBySpace[spaceLifecycleKey(spaceId, lifecycle)] ?? {}),
  ]);
  return [...ids].filter((id) => m.securityGroups[id] !== undefined).sort();
}

/** Every security group, sorted by name. */
export function allSecurityGroups(m: Model): SecurityGroupRecord[] {
  return Object.values(m.securityGroups).sort((a, b) => cmp(a.name, b.name) || cmp(a.id, b.id));
}

/** An entry of `policiesByDest`: `<source app>|<policy key>` (app ids never hold a `|`). */
const policyRef = (sourceAppId: string, key: string): string => `${sourceAppId}|${key}`;

export function parsePolicyRef(ref: string): { sourceAppId: string; key: string } {
  const bar = ref.indexOf('|');
  return { sourceAppId: ref.slice(0, bar), key: ref.slice(bar + 1) };
}

/** The policies into a destination app (from any source), as recorded. */
export function policiesInto(m: Model, destAppId: string): PolicyRecord[] {
  const out: PolicyRecord[] = [];
  for (const ref of Object.keys(m.policiesByDest[destAppId] ?? {})) {
    const { sourceAppId, key } = parsePolicyRef(ref);
    const rec = m.policies[sourceAppId]?.[key];
    if (rec) out.push(rec);
  }
  return out;
}

function removePolicy(m: Draft<Model>, sourceAppId: string, key: string): void {
  const bySource = m.policies[sourceAppId];
  const rec = bySource?.[key];
  if (!bySource || !rec) return;
  delete bySource[key];
  if (Object.keys(bySource).length === 0) delete m.policies[sourceAppId];
  removeIndex(m.policiesByDest, rec.destAppId, policyRef(sourceAppId, key));
}

/**
 * The size of each index set the in-place fold has touched, so that removing the last member (which removes the set)
 * is O(1): counting the keys of a cell's set of ~1,000 containers on every stop was 12% of a planner's cold start.
 * A set not in here (a fresh copy: the pure fold's drafts, a cloned model) is counted once.
 */
const indexSizes = new WeakMap<object, number>();

const sizeOf = (set: Dict<true>): number => indexSizes.get(set) ?? Object.keys(set).length;

function addIndex(index: Dict<Dict<true>>, outer: string, inner: string): void {
  const set = (index[outer] ??= dict());
  if (set[inner]) return;
  indexSizes.set(set, sizeOf(set) + 1);
  set[inner] = true;
}

function removeIndex(index: Dict<Dict<true>>, outer: string, inner: string): void {
  const set = index[outer];
  if (!set || !set[inner]) return;
  const size = sizeOf(set) - 1;
  delete set[inner];
  indexSizes.set(set, size);
  if (size === 0) delete index[outer];
}

function claimName(m: Draft<Model>, name: string, appId: string): void {
  const k = name.toLowerCase();
  if (!m.appIdByName[k]) m.appIdByName[k] = appId;
}

function releaseName(m: Draft<Model>, name: string, appId: string): void {
  const k = name.toLowerCase();
  if (m.appIdByName[k] === appId) delete m.appIdByName[k];
}

/** Tags are assigned on an app's first policy (lowest free tag first) and freed when the app is deleted. */
function claimTag(m: Draft<Model>, appId: string): void {
  if (m.tags.byApp[appId] !== undefined) return;
  let tag: number | undefined;
  if (m.tags.free.length > 0) {
    tag = m.tags.free.shift();
  } else if (m.tags.next <= MAX_TAG) {
    tag = m.tags.next++;
  }
  if (tag !== undefined) m.tags.byApp[appId] = tag;
}

function releaseTag(m: Draft<Model>, appId: string): void {
  const tag = m.tags.byApp[appId];
  if (tag === undefined) return;
  delete m.tags.byApp[appId];
  const free = m.tags.free;
  let i = 0;
  while (i < free.length && free[i]! < tag) i++;
  free.splice(i, 0, tag);
}

/** Tags that could still be handed out. */
export function freeTagCount(m: Model): number {
  return m.tags.free.length + (MAX_TAG - m.tags.next + 1);
}

export function liveApp(m: Model, appId: string): AppState | undefined {
  const app = m.apps[appId];
  return app && !app.deleted ? app : undefined;
}

/** Every policy, sorted by source, destination, protocol, start and end. */
export function allPolicies(m: Model): PolicyRecord[] {
  return Object.values(m.policies)
    .flatMap((bySource) => Object.values(bySource))
    .sort(comparePolicies);
}

function comparePolicies(a: PolicyRecord, b: PolicyRecord): number {
  return (
    cmp(a.sourceAppId, b.sourceAppId) || cmp(a.destAppId, b.destAppId) || cmp(a.protocol, b.protocol) || a.startPort - b.startPort || a.endPort - b.endPort
  );
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The model as a fold the live log follower drives: in place, on a model only the follower writes. */
export const liveModelFold = {
  initial: initialModel,
  apply: foldEventsInPlace,
  skip: skipEntry,
  seqOf: (m: Model) => m.seq,
};
