// Commands: what callers ask for, imperative names. Parsers here validate every command that arrives from outside
// (platform intake over NATS, the Cloud Foundry-shaped HTTP bodies) before anything is decided or appended.
import { type PolicyRule, PROTOCOLS } from './catalogue.ts';
import { type Lifecycle, LIFECYCLES } from './security-groups.ts';
import {
  type Issues,
  type Result,
  appNameOf,
  arrayOf,
  cidrOf,
  idOf,
  intOf,
  ipv4Of,
  join,
  objectOf,
  oneOf,
  optional,
  prefixOf,
  result,
  stringOf,
} from './fields.ts';

/**
 * A cell joins. `subnet` absent: the writer leases it the next free range of the overlay (of the configured size,
 * or `prefix` when given). `underlay`: the host address other cells reach its containers through (drivers need it).
 */
export type RegisterCell = { type: 'RegisterCell'; data: { cellId: string; subnet?: string; underlay?: string; prefix?: number } };
export type DecommissionCell = { type: 'DecommissionCell'; data: { cellId: string } };
export type RegisterApp = { type: 'RegisterApp'; data: { appId: string; name: string; spaceId: string; orgId: string } };
export type RenameApp = { type: 'RenameApp'; data: { appId: string; name: string } };
export type DeleteApp = { type: 'DeleteApp'; data: { appId: string } };
export type StartContainer = {
  type: 'StartContainer';
  /**
   * `ip` absent: the writer gives the container the lowest free address of its cell's range. `lifecycle` absent:
   * `running` (an app instance); `staging` for a staging task (egress rules are bound per lifecycle).
   */
  data: { containerId: string; appId: string; instanceIndex: number; cellId: string; ip?: string; lifecycle?: Lifecycle };
};
export type StopContainer = { type: 'StopContainer'; data: { containerId: string } };
export type CreatePolicies = { type: 'CreatePolicies'; data: { sourceAppId: string; policies: PolicyRule[] } };
export type DeletePolicies = {
  type: 'DeletePolicies';
  data: { sourceAppId: string; policies: PolicyRule[]; reason: 'requested' | 'app-deleted' };
};

export type CellCommand = RegisterCell | DecommissionCell;
export type AppCommand = RegisterApp | RenameApp | DeleteApp;
export type ContainerCommand = StartContainer | StopContainer;
export type PolicyCommand = CreatePolicies | DeletePolicies;
export type IntakeCommand = CellCommand | AppCommand | ContainerCommand;

/**
 * Metadata every intake request may carry: a request id (retries reuse it). Who is asking is not a field: it is the
 * caller token of the request's subject (see runtime/subjects.ts), which authorization binds to the connection.
 */
export type RequestMeta = { requestId?: string };

const META_KEYS = ['requestId'] as const;

function metaOf(o: Record<string, unknown>, issues: Issues): RequestMeta {
  const meta: RequestMeta = {};
  const requestId = optional(o.requestId, 'requestId', issues, (v, p, i) => stringOf(v, p, i, { max: 128 }));
  if (requestId !== undefined) meta.requestId = requestId;
  return meta;
}

type IntakeParser = (o: Record<string, unknown>, issues: Issues) => IntakeCommand;

const intakeParsers: Record<IntakeCommand['type'], { keys: readonly string[]; parse: IntakeParser }> = {
  RegisterCell: {
    keys: ['cellId', 'subnet', 'underlay', 'prefix'],
    parse: (o, i) => {
      const data: RegisterCell['data'] = { cellId: idOf(o.cellId, 'cellId', i) };
      const subnet = optional(o.subnet, 'subnet', i, cidrOf);
      const underlay = optional(o.underlay, 'underlay', i, ipv4Of);
      const prefix = optional(o.prefix, 'prefix', i, prefixOf);
      if (subnet !== undefined && prefix !== undefined) i.push({ path: 'prefix', message: 'only for a leased range: give subnet or prefix, not both' });
      if (subnet !== undefined) data.subnet = subnet;
      if (underlay !== undefined) data.underlay = underlay;
      if (prefix !== undefined) data.prefix = prefix;
      return { type: 'RegisterCell', data };
    },
  },
  DecommissionCell: { keys: ['cellId'], parse: (o, i) => ({ type: 'DecommissionCell', data: { cellId: idOf(o.cellId, 'cellId', i) } }) },
  RegisterApp: {
    keys: ['appId', 'name', 'spaceId', 'orgId'],
    parse: (o, i) => ({
      type: 'RegisterApp',
      data: { appId: idOf(o.appId, 'appId', i), name: appNameOf(o.name, 'name', i), spaceId: idOf(o.spaceId, 'spaceId', i), orgId: idOf(o.orgId, 'orgId', i) },
    }),
  },
  RenameApp: {
    keys: ['appId', 'name'],
    parse: (o, i) => ({ type: 'RenameApp', data: { appId: idOf(o.appId, 'appId', i), name: appNameOf(o.name, 'name', i) } }),
  },
  DeleteApp: { keys: ['appId'], parse: (o, i) => ({ type: 'DeleteApp', data: { appId: idOf(o.appId, 'appId', i) } }) },
  StartContainer: {
    keys: ['containerId', 'appId', 'instanceIndex', 'cellId', 'ip', 'lifecycle'],
    parse: (o, i) => {
      const data: StartContainer['data'] = {
        containerId: idOf(o.containerId, 'containerId', i),
        appId: idOf(o.appId, 'appId', i),
        instanceIndex: intOf(o.instanceIndex, 'instanceIndex', i, 0, 1_000_000),
        cellId: idOf(o.cellId, 'cellId', i),
      };
      const ip = optional(o.ip, 'ip', i, ipv4Of);
      if (ip !== undefined) data.ip = ip;
      const lifecycle = optional(o.lifecycle, 'lifecycle', i, (v, p, is) => oneOf(v, p, is, LIFECYCLES));
      if (lifecycle !== undefined) data.lifecycle = lifecycle;
      return { type: 'StartContainer', data };
    },
  },
  StopContainer: {
    keys: ['containerId'],
    parse: (o, i) => ({ type: 'StopContainer', data: { containerId: idOf(o.containerId, 'containerId', i) } }),
  },
};

/** Parses one intake request body (already JSON-decoded) for the given command type. */
export function parseIntakeCommand(type: IntakeCommand['type'], raw: unknown): Result<{ command: IntakeCommand; meta: RequestMeta }> {
  const issues: Issues = [];
  const spec = intakeParsers[type];
  const o = objectOf(raw, '', issues, [...spec.keys, ...META_KEYS]);
  if (issues.length > 0) return { ok: false, issues };
  const command = spec.parse(o, issues);
  const meta = metaOf(o, issues);
  return result(issues, { command, meta });
}

/** One policy as the Cloud Foundry external API v1 spells it, parsed. */
export type CfPolicy = { sourceAppId: string; rule: PolicyRule };

export type CfPoliciesOptions = { maxPolicies: number };

/**
 * Parses `{"policies":[{"source":{"id"},"destination":{"id","protocol","ports":{"start","end"}}}]}`.
 * Rules (as Cloud Foundry's policy server): a non-empty list; ids required; protocol tcp or udp;
 * 1 <= start <= end <= 65535; clients may not set tags.
 */
export function parseCfPolicies(raw: unknown, opts: CfPoliciesOptions): Result<CfPolicy[]> {
  const issues: Issues = [];
  const body = objectOf(raw, '', issues, ['policies']);
  if (issues.length > 0) return { ok: false, issues };
  if (body.policies === undefined) return { ok: false, issues: [{ path: 'policies', message: 'is required' }] };
  const list = arrayOf(body.policies, 'policies', issues, { min: 1, max: opts.maxPolicies });
  if (issues.length > 0) return { ok: false, issues };
  const out = list.map((p, n) => {
    const path = join('policies', n);
    const o = objectOf(p, path, issues, ['source', 'destination']);
    const src = objectOf(o.source, join(path, 'source'), issues, ['id', 'tag']);
    const dst = objectOf(o.destination, join(path, 'destination'), issues, ['id', 'tag', 'protocol', 'ports']);
    if (src.tag !== undefined) issues.push({ path: join(path, 'source.tag'), message: 'tags are assigned by the server and may not be set' });
    if (dst.tag !== undefined) issues.push({ path: join(path, 'destination.tag'), message: 'tags are assigned by the server and may not be set' });
    const ports = objectOf(dst.ports, join(path, 'destination.ports'), issues, ['start', 'end']);
    const rule: PolicyRule = {
      destAppId: idOf(dst.id, join(path, 'destination.id'), issues),
      protocol: oneOf(dst.protocol, join(path, 'destination.protocol'), issues, PROTOCOLS),
      startPort: intOf(ports.start, join(path, 'destination.ports.start'), issues, 1, 65535),
      endPort: intOf(ports.end, join(path, 'destination.ports.end'), issues, 1, 65535),
    };
    if (rule.startPort > rule.endPort) {
      issues.push({ path: join(path, 'destination.ports'), message: 'start must not be greater than end' });
    }
    return { sourceAppId: idOf(src.id, join(path, 'source.id'), issues), rule };
  });
  return result(issues, out);
}

/** Comma-separated id filter of the GET policies endpoint; empty entries are an error. */
export function parseIdList(raw: unknown, name: string): Result<string[] | undefined> {
  if (raw === undefined) return { ok: true, value: undefined };
  const issues: Issues = [];
  if (typeof raw !== 'string') return { ok: false, issues: [{ path: name, message: 'must be given once, as a comma-separated list' }] };
  const ids = raw.split(',').map((s, i) => idOf(s.trim(), join(name, i), issues));
  return result(issues, ids);
}
