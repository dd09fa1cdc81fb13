// The global model: one pure fold of the whole event log into plain JSON (records, not Map/Set), so it can be
// snapshotted, hashed and compared. The policy-writer decides against it; the topology planner derives each
// cell's desired state from it. A fold never throws on a recorded event and ignores an event it has already seen
// (by stream sequence); every rule below is idempotent, so a re-appended duplicate changes nothing either.
import { produce, type Draft } from 'immer';
import { type EventEnvelope, type PolicyRule, type RecordedEvent, policyKey } from '../events/catalogue.ts';

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
};

export type PolicyRecord = PolicyRule & {
  sourceAppId: string;
  createdAt: string;
  createdBy: string;
  /** Event-log sequence of the event that created it. */
  createdSeq: number;
};

/** Tags are 16-bit, as Cloud Foundry's default; 0 is never assigned. */
export const MAX_TAG = 0xffff;

export type Model = {
  /** The last event-log sequence folded in: the revision this model reflects. */
  seq: number;
  /** Last sequence per aggregate subject: the expected-last-subject-sequence of the next append. */
  subjectSeq: Record<string, number>;
  apps: Record<string, AppState>;
  /** Live apps by lower-cased name (names are DNS labels, so unique among live apps). */
  appIdByName: Record<string, string>;
  containers: Record<string, ContainerState>;
  /** Running containers by app and by cell. */
  containersByApp: Record<string, Record<string, true>>;
  containersByCell: Record<string, Record<string, true>>;
  /** Policies by source app, then by policy key (destination|protocol|start|end). */
  policies: Record<string, Record<string, PolicyRecord>>;
  /** Index: destination app -> `${source}|${key}`. */
  policiesByDest: Record<string, Record<string, true>>;
  tags: { byApp: Record<string, number>; next: number; free: number[] };
};

export function initialModel(): Model {
  return {
    seq: 0,
    subjectSeq: {},
    apps: {},
    appIdByName: {},
    containers: {},
    containersByApp: {},
    containersByCell: {},
    policies: {},
    policiesByDest: {},
    tags: { byApp: {}, next: 1, free: [] },
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
export function foldEventsInPlace(model: Model, batch: readonly RecordedEvent[]): Model {
  foldInto(model as Draft<Model>, batch);
  return model;
}

function foldInto(draft: Draft<Model>, batch: readonly RecordedEvent[]): void {
  for (const rec of batch) {
    if (rec.seq <= draft.seq) continue;
    applyEvent(draft, rec.event, rec.seq);
    draft.seq = rec.seq;
    draft.subjectSeq[rec.subject] = rec.seq;
  }
}

function applyEvent(m: Draft<Model>, e: EventEnvelope, seq: number): void {
  switch (e.type) {
    case 'AppRegistered': {
      if (m.apps[e.data.appId]) return; // ids are never reused; a repeat changes nothing
      m.apps[e.data.appId] = { id: e.data.appId, name: e.data.name, spaceId: e.data.spaceId, orgId: e.data.orgId, deleted: false, registeredAt: e.at, deletedAt: null };
      claimName(m, e.data.name, e.data.appId);
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
      // Policies of a deleted app go with it, even one created concurrently with the deletion.
      for (const key of Object.keys(m.policies[app.id] ?? {})) removePolicy(m, app.id, key);
      for (const ref of Object.keys(m.policiesByDest[app.id] ?? {})) {
        const bar = ref.indexOf('|');
        removePolicy(m, ref.slice(0, bar), ref.slice(bar + 1));
      }
      releaseTag(m, app.id);
      return;
    }
    case 'ContainerStarted': {
      if (m.containers[e.data.containerId]) return; // first start wins; a start after its stop is ignored
      const d = e.data;
      m.containers[d.containerId] = { id: d.containerId, appId: d.appId, cellId: d.cellId, instanceIndex: d.instanceIndex, ip: d.ip, status: 'running', startedAt: e.at, stoppedAt: null };
      (m.containersByApp[d.appId] ??= {})[d.containerId] = true;
      (m.containersByCell[d.cellId] ??= {})[d.containerId] = true;
      return;
    }
    case 'ContainerStopped': {
      const c = m.containers[e.data.containerId];
      if (!c) {
        m.containers[e.data.containerId] = { id: e.data.containerId, appId: e.data.appId, cellId: e.data.cellId, instanceIndex: null, ip: null, status: 'stopped', startedAt: null, stoppedAt: e.at };
        return;
      }
      if (c.status === 'stopped') return;
      c.status = 'stopped';
      c.stoppedAt = e.at;
      if (c.appId) removeIndex(m.containersByApp, c.appId, c.id);
      if (c.cellId) removeIndex(m.containersByCell, c.cellId, c.id);
      return;
    }
    case 'PoliciesCreated': {
      const src = m.apps[e.data.sourceAppId];
      for (const rule of e.data.policies) {
        const dst = m.apps[rule.destAppId];
        // A policy naming an app that is unknown or deleted at this point of the log has no effect.
        if (!src || src.deleted || !dst || dst.deleted) continue;
        const key = policyKey(rule);
        const bySource = (m.policies[src.id] ??= {});
        if (bySource[key]) continue;
        bySource[key] = { ...rule, sourceAppId: src.id, createdAt: e.at, createdBy: e.actor, createdSeq: seq };
        (m.policiesByDest[rule.destAppId] ??= {})[`${src.id}|${key}`] = true;
        claimTag(m, src.id);
        claimTag(m, rule.destAppId);
      }
      return;
    }
    case 'PoliciesDeleted': {
      for (const rule of e.data.policies) removePolicy(m, e.data.sourceAppId, policyKey(rule));
      return;
    }
    default: {
      const never: never = e;
      return never;
    }
  }
}

function removePolicy(m: Draft<Model>, sourceAppId: string, key: string): void {
  const bySource = m.policies[sourceAppId];
  const rec = bySource?.[key];
  if (!bySource || !rec) return;
  delete bySource[key];
  if (Object.keys(bySource).length === 0) delete m.policies[sourceAppId];
  removeIndex(m.policiesByDest, rec.destAppId, `${sourceAppId}|${key}`);
}

function removeIndex(index: Record<string, Record<string, true>>, outer: string, inner: string): void {
  const set = index[outer];
  if (!set) return;
  delete set[inner];
  if (Object.keys(set).length === 0) delete index[outer];
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

export function comparePolicies(a: PolicyRecord, b: PolicyRecord): number {
  return (
    cmp(a.sourceAppId, b.sourceAppId) || cmp(a.destAppId, b.destAppId) || cmp(a.protocol, b.protocol) || a.startPort - b.startPort || a.endPort - b.endPort
  );
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The model as a fold the live log follower drives: in place, on a model only the follower writes. */
export const liveModelFold = {
  initial: initialModel(),
  apply: foldEventsInPlace,
  skip: (m: Model, seq: number, subject: string): Model => {
    if (seq > m.seq) {
      m.seq = seq;
      m.subjectSeq[subject] = seq;
    }
    return m;
  },
  seqOf: (m: Model) => m.seq,
};
