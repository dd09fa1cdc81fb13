// The event catalogue: every event netfold records, versioned. Events are past-tense facts; the envelope (id, time,
// actor, correlation) sits beside `data`. Events read back from the stream go through `parseEvent`, which validates
// them and upcasts older versions to the current one, so folds only ever see current shapes.
import {
  type Issues,
  type Result,
  appNameOf,
  boolOf,
  cidrOf,
  arrayOf,
  idOf,
  intOf,
  ipv4Of,
  isoTimeOf,
  join,
  objectOf,
  oneOf,
  optional,
  result,
  stringOf,
  ulidOf,
} from './fields.ts';
import {
  type EgressRule,
  type GloballyEnabled,
  type Lifecycle,
  LIFECYCLES,
  egressRulesOf,
  globallyEnabledOf,
  securityGroupNameOf,
  spaceIdsOf,
} from './security-groups.ts';

export const PROTOCOLS = ['tcp', 'udp'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/** One allowed flow from a source app: destination app, protocol and an inclusive port range. */
export type PolicyRule = { destAppId: string; protocol: Protocol; startPort: number; endPort: number };

const POLICY_DELETE_REASONS = ['requested', 'app-deleted'] as const;
export type PolicyDeleteReason = (typeof POLICY_DELETE_REASONS)[number];

export type AppRegistered = { type: 'AppRegistered'; v: 1; data: { appId: string; name: string; spaceId: string; orgId: string } };
export type AppRenamed = { type: 'AppRenamed'; v: 1; data: { appId: string; name: string; previousName: string } };
export type AppDeleted = { type: 'AppDeleted'; v: 1; data: { appId: string } };
/** v2 adds `lifecycle` (`running`: an app instance; `staging`: a staging task); v1 events are upcast as `running`. */
export type ContainerStarted = {
  type: 'ContainerStarted';
  v: 2;
  data: { containerId: string; appId: string; instanceIndex: number; cellId: string; ip: string; lifecycle: Lifecycle };
};
/** `wasRunning: false` records a stop that arrived before (or without) its start: a later start is then ignored. */
export type ContainerStopped = {
  type: 'ContainerStopped';
  v: 1;
  data: { containerId: string; appId: string | null; cellId: string | null; wasRunning: boolean };
};
export type PoliciesCreated = { type: 'PoliciesCreated'; v: 1; data: { sourceAppId: string; policies: PolicyRule[] } };
export type PoliciesDeleted = {
  type: 'PoliciesDeleted';
  v: 1;
  data: { sourceAppId: string; policies: PolicyRule[]; reason: PolicyDeleteReason };
};

/**
 * A cell (a host running containers) joined, with its container range: its containers' IPs lie in `subnet`. v2 adds
 * `underlay` (the host's address other cells reach it at; null: not given, as every v1 event) and `leased` (true:
 * the writer chose `subnet` as the next free range of the overlay; false: the caller named it).
 */
export type CellRegistered = { type: 'CellRegistered'; v: 2; data: { cellId: string; subnet: string; underlay: string | null; leased: boolean } };
/** A cell left; its id may be registered again later. */
export type CellDecommissioned = { type: 'CellDecommissioned'; v: 1; data: { cellId: string } };

/** An application security group (egress rules) was created, with the spaces it is bound to from the start. */
export type SecurityGroupCreated = {
  type: 'SecurityGroupCreated';
  v: 1;
  data: { groupId: string; name: string; rules: EgressRule[]; globallyEnabled: GloballyEnabled; runningSpaces: string[]; stagingSpaces: string[] };
};
/** A group's name, rules or global flags changed: the data holds all three as they are now. */
export type SecurityGroupUpdated = {
  type: 'SecurityGroupUpdated';
  v: 1;
  data: { groupId: string; name: string; rules: EgressRule[]; globallyEnabled: GloballyEnabled };
};
export type SecurityGroupDeleted = { type: 'SecurityGroupDeleted'; v: 1; data: { groupId: string; name: string } };
/** Spaces newly bound to (or unbound from) a group for one lifecycle (only the ones that changed). */
export type SecurityGroupSpacesBound = { type: 'SecurityGroupSpacesBound'; v: 1; data: { groupId: string; lifecycle: Lifecycle; spaceIds: string[] } };
export type SecurityGroupSpacesUnbound = { type: 'SecurityGroupSpacesUnbound'; v: 1; data: { groupId: string; lifecycle: Lifecycle; spaceIds: string[] } };

export type SecurityGroupEvent = SecurityGroupCreated | SecurityGroupUpdated | SecurityGroupDeleted | SecurityGroupSpacesBound | SecurityGroupSpacesUnbound;

export type DomainEvent =
  | CellRegistered
  | CellDecommissioned
  | AppRegistered
  | AppRenamed
  | AppDeleted
  | ContainerStarted
  | ContainerStopped
  | PoliciesCreated
  | PoliciesDeleted
  | SecurityGroupEvent;

export type EventType = DomainEvent['type'];

const EVENT_TYPES: readonly EventType[] = [
  'CellRegistered',
  'CellDecommissioned',
  'AppRegistered',
  'AppRenamed',
  'AppDeleted',
  'ContainerStarted',
  'ContainerStopped',
  'PoliciesCreated',
  'PoliciesDeleted',
  'SecurityGroupCreated',
  'SecurityGroupUpdated',
  'SecurityGroupDeleted',
  'SecurityGroupSpacesBound',
  'SecurityGroupSpacesUnbound',
];

export type EnvelopeMeta = {
  /** ULID; also the Nats-Msg-Id of the append, so a retried publish is stored once. */
  id: string;
  /** ISO-8601 time the command was decided. */
  at: string;
  /** Who caused it: `user:<name>`, `platform:<component>` or `system:<service>`. */
  actor: string;
  /** The request this event answers (a client's request id, or a generated one). */
  correlationId: string;
  /** The event or command that caused this one, when there is one. */
  causationId?: string;
};

export type EventEnvelope<E extends DomainEvent = DomainEvent> = E & EnvelopeMeta;

/** An event as read from the log: with its stream sequence (the revision) and subject. */
export type RecordedEvent = { seq: number; subject: string; event: EventEnvelope };

const ENVELOPE_KEYS = ['id', 'type', 'v', 'at', 'actor', 'correlationId', 'causationId', 'data'] as const;

function policyRuleOf(v: unknown, path: string, issues: Issues): PolicyRule {
  const o = objectOf(v, path, issues, ['destAppId', 'protocol', 'startPort', 'endPort']);
  const rule: PolicyRule = {
    destAppId: idOf(o.destAppId, join(path, 'destAppId'), issues),
    protocol: oneOf(o.protocol, join(path, 'protocol'), issues, PROTOCOLS),
    startPort: intOf(o.startPort, join(path, 'startPort'), issues, 1, 65535),
    endPort: intOf(o.endPort, join(path, 'endPort'), issues, 1, 65535),
  };
  if (rule.startPort > rule.endPort) issues.push({ path: join(path, 'endPort'), message: 'must not be below startPort' });
  return rule;
}

const rulesOf = (v: unknown, path: string, issues: Issues): PolicyRule[] =>
  arrayOf(v, path, issues, { min: 1 }).map((r, i) => policyRuleOf(r, join(path, i), issues));

/** Data validators for the current version of each event type. */
const dataReaders: { [T in EventType]: (d: Record<string, unknown>, p: string, i: Issues) => Extract<DomainEvent, { type: T }>['data'] } = {
  CellRegistered: (d, p, i) => ({
    cellId: idOf(d.cellId, join(p, 'cellId'), i),
    subnet: cidrOf(d.subnet, join(p, 'subnet'), i),
    underlay: d.underlay === null ? null : ipv4Of(d.underlay, join(p, 'underlay'), i),
    leased: boolOf(d.leased, join(p, 'leased'), i),
  }),
  CellDecommissioned: (d, p, i) => ({ cellId: idOf(d.cellId, join(p, 'cellId'), i) }),
  AppRegistered: (d, p, i) => ({
    appId: idOf(d.appId, join(p, 'appId'), i),
    name: appNameOf(d.name, join(p, 'name'), i),
    spaceId: idOf(d.spaceId, join(p, 'spaceId'), i),
    orgId: idOf(d.orgId, join(p, 'orgId'), i),
  }),
  AppRenamed: (d, p, i) => ({
    appId: idOf(d.appId, join(p, 'appId'), i),
    name: appNameOf(d.name, join(p, 'name'), i),
    previousName: appNameOf(d.previousName, join(p, 'previousName'), i),
  }),
  AppDeleted: (d, p, i) => ({ appId: idOf(d.appId, join(p, 'appId'), i) }),
  ContainerStarted: (d, p, i) => ({
    containerId: idOf(d.containerId, join(p, 'containerId'), i),
    appId: idOf(d.appId, join(p, 'appId'), i),
    instanceIndex: intOf(d.instanceIndex, join(p, 'instanceIndex'), i, 0, 1_000_000),
    cellId: idOf(d.cellId, join(p, 'cellId'), i),
    ip: ipv4Of(d.ip, join(p, 'ip'), i),
    lifecycle: oneOf(d.lifecycle, join(p, 'lifecycle'), i, LIFECYCLES),
  }),
  ContainerStopped: (d, p, i) => ({
    containerId: idOf(d.containerId, join(p, 'containerId'), i),
    appId: optional(d.appId, join(p, 'appId'), i, idOf) ?? null,
    cellId: optional(d.cellId, join(p, 'cellId'), i, idOf) ?? null,
    wasRunning: d.wasRunning === true,
  }),
  PoliciesCreated: (d, p, i) => ({
    sourceAppId: idOf(d.sourceAppId, join(p, 'sourceAppId'), i),
    policies: rulesOf(d.policies, join(p, 'policies'), i),
  }),
  PoliciesDeleted: (d, p, i) => ({
    sourceAppId: idOf(d.sourceAppId, join(p, 'sourceAppId'), i),
    policies: rulesOf(d.policies, join(p, 'policies'), i),
    reason: oneOf(d.reason, join(p, 'reason'), i, POLICY_DELETE_REASONS),
  }),
  SecurityGroupCreated: (d, p, i) => ({
    groupId: idOf(d.groupId, join(p, 'groupId'), i),
    name: securityGroupNameOf(d.name, join(p, 'name'), i),
    rules: egressRulesOf(d.rules, join(p, 'rules'), i),
    globallyEnabled: globallyEnabledOf(d.globallyEnabled, join(p, 'globallyEnabled'), i),
    runningSpaces: spaceIdsOf(d.runningSpaces, join(p, 'runningSpaces'), i),
    stagingSpaces: spaceIdsOf(d.stagingSpaces, join(p, 'stagingSpaces'), i),
  }),
  SecurityGroupUpdated: (d, p, i) => ({
    groupId: idOf(d.groupId, join(p, 'groupId'), i),
    name: securityGroupNameOf(d.name, join(p, 'name'), i),
    rules: egressRulesOf(d.rules, join(p, 'rules'), i),
    globallyEnabled: globallyEnabledOf(d.globallyEnabled, join(p, 'globallyEnabled'), i),
  }),
  SecurityGroupDeleted: (d, p, i) => ({ groupId: idOf(d.groupId, join(p, 'groupId'), i), name: securityGroupNameOf(d.name, join(p, 'name'), i) }),
  SecurityGroupSpacesBound: (d, p, i) => ({
    groupId: idOf(d.groupId, join(p, 'groupId'), i),
    lifecycle: oneOf(d.lifecycle, join(p, 'lifecycle'), i, LIFECYCLES),
    spaceIds: spaceIdsOf(d.spaceIds, join(p, 'spaceIds'), i, { min: 1 }),
  }),
  SecurityGroupSpacesUnbound: (d, p, i) => ({
    groupId: idOf(d.groupId, join(p, 'groupId'), i),
    lifecycle: oneOf(d.lifecycle, join(p, 'lifecycle'), i, LIFECYCLES),
    spaceIds: spaceIdsOf(d.spaceIds, join(p, 'spaceIds'), i, { min: 1 }),
  }),
};

/** The current version of each type. */
const CURRENT_VERSION: { [T in EventType]: number } = {
  CellRegistered: 2,
  CellDecommissioned: 1,
  AppRegistered: 1,
  AppRenamed: 1,
  AppDeleted: 1,
  ContainerStarted: 2,
  ContainerStopped: 1,
  PoliciesCreated: 1,
  PoliciesDeleted: 1,
  SecurityGroupCreated: 1,
  SecurityGroupUpdated: 1,
  SecurityGroupDeleted: 1,
  SecurityGroupSpacesBound: 1,
  SecurityGroupSpacesUnbound: 1,
};

/**
 * Upcasters turn the data of version v into version v+1, keyed `${type}@${v}`. Each change of a schema adds one
 * here and a fixture log of the old version under test/fixtures.
 */
const upcasters: Record<string, (data: Record<string, unknown>) => Record<string, unknown>> = {
  // v1 cells named their range and had no underlay address (test/fixtures/cells-v1.jsonl).
  'CellRegistered@1': (data) => ({ ...data, underlay: null, leased: false }),
  // v1 starts predate lifecycles: every one was an app instance (test/fixtures/events-v1.jsonl).
  'ContainerStarted@1': (data) => ({ ...data, lifecycle: 'running' }),
};

/** Validates an event read from anywhere (stream, fixture, import) and upcasts it to the current version. */
export function parseEvent(raw: unknown): Result<EventEnvelope> {
  const issues: Issues = [];
  const o = objectOf(raw, '', issues, ENVELOPE_KEYS);
  if (issues.length > 0) return { ok: false, issues };
  const type = oneOf(o.type, 'type', issues, EVENT_TYPES);
  const meta: EnvelopeMeta = {
    id: ulidOf(o.id, 'id', issues),
    at: isoTimeOf(o.at, 'at', issues),
    actor: stringOf(o.actor, 'actor', issues, { max: 256 }),
    correlationId: stringOf(o.correlationId, 'correlationId', issues, { max: 256 }),
  };
  const causationId = optional(o.causationId, 'causationId', issues, (v, p, i) => stringOf(v, p, i, { max: 256 }));
  if (causationId !== undefined) meta.causationId = causationId;
  let v = intOf(o.v, 'v', issues, 1, 1000);
  if (issues.length > 0) return { ok: false, issues };
  const current = CURRENT_VERSION[type];
  if (v > current) return { ok: false, issues: [{ path: 'v', message: `version ${v} of ${type} is newer than this build knows (${current})` }] };
  let data = objectOf(o.data, 'data', issues);
  while (v < current && issues.length === 0) {
    const up = upcasters[`${type}@${v}`];
    if (!up) return { ok: false, issues: [{ path: 'v', message: `no upcaster for ${type} v${v}` }] };
    data = up(data);
    v += 1;
  }
  const reader = dataReaders[type] as (d: Record<string, unknown>, p: string, i: Issues) => DomainEvent['data'];
  const parsed = reader(data, 'data', issues);
  return result(issues, { ...meta, type, v: current, data: parsed } as EventEnvelope);
}

/** Wraps a decided event in its envelope. */
export function envelope<E extends DomainEvent>(event: E, meta: EnvelopeMeta): EventEnvelope<E> {
  return { ...meta, ...event };
}

export function policyKey(rule: PolicyRule): string {
  return `${rule.destAppId}|${rule.protocol}|${rule.startPort}|${rule.endPort}`;
}
