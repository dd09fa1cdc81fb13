// Application security groups (egress rules, Cloud Foundry's ASGs): the rule shape every part shares, its
// validation (the Cloud Foundry v3 rules, applied alike to HTTP bodies and to events read back), and the pure
// expansion of a rule's text fields — destinations and ports — into numeric ranges the dataplane and `explain` use.
import { type Issues, type Result, arrayOf, boolOf, idOf, join, objectOf, oneOf, optional, result, stringOf } from './fields.ts';
import { IPV4_PATTERN } from '../projections/ipv4.ts';

export const LIFECYCLES = ['running', 'staging'] as const;
/** Which containers of a space a binding covers: app instances (`running`) or staging tasks (`staging`). */
export type Lifecycle = (typeof LIFECYCLES)[number];

export const EGRESS_PROTOCOLS = ['tcp', 'udp', 'icmp', 'all'] as const;
export type EgressProtocol = (typeof EGRESS_PROTOCOLS)[number];

/** One egress rule as Cloud Foundry spells it (only the fields given are present). */
export type EgressRule = {
  protocol: EgressProtocol;
  /** An IPv4 address, a range `a-b`, a CIDR, or a comma list of them (no whitespace). */
  destination: string;
  /** tcp/udp only: `"443"`, `"80,443"`, `"8000-9000"` or a mix. */
  ports?: string;
  /** icmp only: -1 (any) to 255. */
  type?: number;
  code?: number;
  description?: string;
  log?: boolean;
};

export type GloballyEnabled = { running: boolean; staging: boolean };

/** Longest name (Cloud Foundry: 250 characters); most rules per group and destinations per rule. */
export const SECURITY_GROUP_NAME_MAX = 250;
export const MAX_RULES_PER_GROUP = 2000;
export const MAX_DESTINATIONS_PER_RULE = 1000;
const DESCRIPTION_MAX = 1024;

const RULE_KEYS = ['protocol', 'destination', 'ports', 'type', 'code', 'description', 'log'] as const;

/** An inclusive range of unsigned 32-bit IPv4 addresses, or of ports. */
export type NumRange = { first: number; last: number };

function addressOf(text: string): number | undefined {
  if (!IPV4_PATTERN.test(text)) return undefined;
  return text.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

/**
 * The address ranges of a destination text, merged and sorted (overlaps and neighbours joined), or the reason it is
 * not one. A CIDR's host bits are ignored (Cloud Foundry accepts `192.168.10.2/24` as the /24).
 */
export function destinationRanges(text: string): NumRange[] | string {
  if (/\s/.test(text)) return 'destination must not contain whitespace';
  const parts = text.split(',');
  if (parts.length > MAX_DESTINATIONS_PER_RULE) return `destination may list at most ${MAX_DESTINATIONS_PER_RULE} entries`;
  const out: NumRange[] = [];
  for (const part of parts) {
    const slash = part.indexOf('/');
    const dash = part.indexOf('-');
    if (slash >= 0) {
      const base = addressOf(part.slice(0, slash));
      const bitsText = part.slice(slash + 1);
      const bits = /^(\d|[12]\d|3[0-2])$/.test(bitsText) ? Number(bitsText) : -1;
      if (base === undefined || bits < 0) return `destination ${JSON.stringify(part)} is not a valid CIDR`;
      const size = 2 ** (32 - bits);
      const first = base - (base % size);
      out.push({ first, last: first + size - 1 });
    } else if (dash >= 0) {
      const a = addressOf(part.slice(0, dash));
      const b = addressOf(part.slice(dash + 1));
      if (a === undefined || b === undefined) return `destination IP address range ${JSON.stringify(part)} is invalid`;
      if (a > b) return `beginning of IP address range ${JSON.stringify(part)} is numerically greater than its end (range endpoints are inverted)`;
      out.push({ first: a, last: b });
    } else {
      const a = addressOf(part);
      if (a === undefined) return `destination ${JSON.stringify(part)} is not a valid CIDR, IP address, or IP address range`;
      out.push({ first: a, last: a });
    }
  }
  return mergeRanges(out);
}

/** The port ranges of a ports text, merged and sorted, or the reason it is not one. */
export function portRanges(text: string): NumRange[] | string {
  const bad = 'ports must be a valid single port, comma separated list of ports, or range of ports, formatted as a string (e.g. "443", "80,443", "8000-9000")';
  const out: NumRange[] = [];
  for (const part of text.split(',')) {
    const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part);
    if (!m) return bad;
    const first = Number(m[1]);
    const last = m[2] === undefined ? first : Number(m[2]);
    if (first < 1 || last > 65535 || first > last) return bad;
    out.push({ first, last });
  }
  return mergeRanges(out);
}

/** Sorted, with overlapping and adjacent ranges joined (nftables refuses overlapping intervals in one set). */
export function mergeRanges(ranges: readonly NumRange[]): NumRange[] {
  const sorted = [...ranges].sort((a, b) => a.first - b.first || a.last - b.last);
  const out: NumRange[] = [];
  for (const r of sorted) {
    const prev = out[out.length - 1];
    if (prev && r.first <= prev.last + 1) prev.last = Math.max(prev.last, r.last);
    else out.push({ ...r });
  }
  return out;
}

function icmpFieldOf(v: unknown, path: string, issues: Issues, name: 'type' | 'code'): number {
  if (v === undefined || v === null) {
    issues.push({ path, message: `${name} is required for protocols of type ICMP` });
    return 0;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < -1 || v > 255)
    issues.push({ path, message: `${name} must be an integer between -1 and 255 (inclusive)` });
  return typeof v === 'number' ? v : 0;
}

/**
 * One rule, validated as Cloud Foundry does (protocol tcp/udp/icmp/all; destination required; ports required for
 * tcp/udp; type and code required for icmp; description a string; log a boolean), and stricter where a field would
 * be silently meaningless: ports only for tcp/udp, type/code only for icmp.
 */
export function egressRuleOf(v: unknown, path: string, issues: Issues): EgressRule {
  const o = objectOf(v, path, issues, RULE_KEYS);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { protocol: 'all', destination: '' };
  const protocol = oneOf(o.protocol, join(path, 'protocol'), issues, EGRESS_PROTOCOLS);
  const rule: EgressRule = { protocol, destination: '' };
  if (o.destination === undefined || o.destination === null) issues.push({ path: join(path, 'destination'), message: 'destination is required' });
  else if (typeof o.destination !== 'string') issues.push({ path: join(path, 'destination'), message: 'destination must be a string' });
  else {
    const ranges = destinationRanges(o.destination);
    if (typeof ranges === 'string') issues.push({ path: join(path, 'destination'), message: ranges });
    rule.destination = o.destination;
  }
  const tcpUdp = protocol === 'tcp' || protocol === 'udp';
  if (tcpUdp) {
    if (o.ports === undefined || o.ports === null) issues.push({ path: join(path, 'ports'), message: 'ports are required for protocols of type TCP and UDP' });
    else if (typeof o.ports !== 'string') issues.push({ path: join(path, 'ports'), message: 'ports must be a string, e.g. "80,443,8000-9000"' });
    else {
      const ranges = portRanges(o.ports);
      if (typeof ranges === 'string') issues.push({ path: join(path, 'ports'), message: ranges });
      rule.ports = o.ports;
    }
  } else if (o.ports !== undefined && o.ports !== null) {
    issues.push({ path: join(path, 'ports'), message: `ports are not allowed for protocols of type ${protocol}` });
  }
  if (protocol === 'icmp') {
    rule.type = icmpFieldOf(o.type, join(path, 'type'), issues, 'type');
    rule.code = icmpFieldOf(o.code, join(path, 'code'), issues, 'code');
  } else {
    for (const k of ['type', 'code'] as const)
      if (o[k] !== undefined && o[k] !== null) issues.push({ path: join(path, k), message: `${k} is only allowed for protocols of type ICMP` });
  }
  const description = optional(o.description, join(path, 'description'), issues, (d, p, i) => {
    if (typeof d !== 'string') {
      i.push({ path: p, message: 'description must be a string' });
      return '';
    }
    if (d.length > DESCRIPTION_MAX) i.push({ path: p, message: `description must be at most ${DESCRIPTION_MAX} characters` });
    return d;
  });
  if (description !== undefined) rule.description = description;
  const log = optional(o.log, join(path, 'log'), issues, (l, p, i) => {
    if (typeof l !== 'boolean') i.push({ path: p, message: 'log must be a boolean' });
    return l === true;
  });
  if (log !== undefined) rule.log = log;
  return rule;
}

export function egressRulesOf(v: unknown, path: string, issues: Issues): EgressRule[] {
  return arrayOf(v, path, issues, { max: MAX_RULES_PER_GROUP }).map((r, i) => egressRuleOf(r, join(path, i), issues));
}

export function securityGroupNameOf(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: SECURITY_GROUP_NAME_MAX });
  if (s && /[\u0000-\u001f\u007f]/.test(s)) issues.push({ path, message: 'must not contain control characters' });
  return s;
}

export function globallyEnabledOf(v: unknown, path: string, issues: Issues): GloballyEnabled {
  const o = objectOf(v, path, issues, ['running', 'staging']);
  return { running: boolOf(o.running, join(path, 'running'), issues), staging: boolOf(o.staging, join(path, 'staging'), issues) };
}

/** A list of space ids (unique, sorted). */
export function spaceIdsOf(v: unknown, path: string, issues: Issues, opts: { min?: number } = {}): string[] {
  const ids = arrayOf(v, path, issues, { max: 10_000, ...opts }).map((s, i) => idOf(s, join(path, i), issues));
  return [...new Set(ids)].sort();
}

// ---- Cloud Foundry v3 bodies ----------------------------------------------------------------------------------------

/** `POST /v3/security_groups`. */
export type CreateSecurityGroupBody = {
  name: string;
  rules: EgressRule[];
  globallyEnabled: GloballyEnabled;
  runningSpaces: string[];
  stagingSpaces: string[];
};
/** `PATCH /v3/security_groups/:guid`: only the fields given change. */
export type UpdateSecurityGroupBody = { name?: string; rules?: EgressRule[]; globallyEnabled?: Partial<GloballyEnabled> };

/** `{ data: [{ guid }] }` of a relationship. */
function relationshipOf(v: unknown, path: string, issues: Issues, min = 0): string[] {
  const o = objectOf(v, path, issues, ['data']);
  if (o.data === undefined) {
    issues.push({ path: join(path, 'data'), message: 'is required' });
    return [];
  }
  const list = arrayOf(o.data, join(path, 'data'), issues, { min, max: 10_000 });
  const ids = list.map((d, i) => idOf(objectOf(d, join(path, `data[${i}]`), issues, ['guid']).guid, join(path, `data[${i}].guid`), issues));
  return [...new Set(ids)].sort();
}

export function parseCreateSecurityGroup(raw: unknown): Result<CreateSecurityGroupBody> {
  const issues: Issues = [];
  const o = objectOf(raw, '', issues, ['name', 'rules', 'globally_enabled', 'relationships']);
  if (issues.length > 0) return { ok: false, issues };
  const name = securityGroupNameOf(o.name, 'name', issues);
  const rules = o.rules === undefined ? [] : egressRulesOf(o.rules, 'rules', issues);
  const ge = o.globally_enabled === undefined ? {} : objectOf(o.globally_enabled, 'globally_enabled', issues, ['running', 'staging']);
  const flag = (k: 'running' | 'staging') => (ge[k] === undefined ? false : boolOf(ge[k], `globally_enabled.${k}`, issues));
  const rel = o.relationships === undefined ? {} : objectOf(o.relationships, 'relationships', issues, ['running_spaces', 'staging_spaces']);
  const runningSpaces = rel.running_spaces === undefined ? [] : relationshipOf(rel.running_spaces, 'relationships.running_spaces', issues);
  const stagingSpaces = rel.staging_spaces === undefined ? [] : relationshipOf(rel.staging_spaces, 'relationships.staging_spaces', issues);
  return result(issues, { name, rules, globallyEnabled: { running: flag('running'), staging: flag('staging') }, runningSpaces, stagingSpaces });
}

export function parseUpdateSecurityGroup(raw: unknown): Result<UpdateSecurityGroupBody> {
  const issues: Issues = [];
  const o = objectOf(raw, '', issues, ['name', 'rules', 'globally_enabled']);
  if (issues.length > 0) return { ok: false, issues };
  const out: UpdateSecurityGroupBody = {};
  if (o.name !== undefined) out.name = securityGroupNameOf(o.name, 'name', issues);
  if (o.rules !== undefined) out.rules = egressRulesOf(o.rules, 'rules', issues);
  if (o.globally_enabled !== undefined) {
    const ge = objectOf(o.globally_enabled, 'globally_enabled', issues, ['running', 'staging']);
    out.globallyEnabled = {};
    for (const k of LIFECYCLES) if (ge[k] !== undefined) out.globallyEnabled[k] = boolOf(ge[k], `globally_enabled.${k}`, issues);
  }
  return result(issues, out);
}

/** `POST /v3/security_groups/:guid/relationships/<lifecycle>_spaces`: at least one space. */
export function parseSpaceRelationship(raw: unknown): Result<string[]> {
  const issues: Issues = [];
  const ids = relationshipOf(raw, '', issues, 1);
  return result(issues, ids);
}

/** A comma-separated filter of the list endpoint (`names`, `guids`, `running_space_guids`, `staging_space_guids`). */
export function parseFilterList(raw: unknown, name: string, read: 'id' | 'name'): Result<string[] | undefined> {
  if (raw === undefined) return { ok: true, value: undefined };
  if (typeof raw !== 'string') return { ok: false, issues: [{ path: name, message: 'must be given once, as a comma-separated list' }] };
  const issues: Issues = [];
  const values = raw.split(',').map((s, i) => (read === 'id' ? idOf(s, join(name, i), issues) : securityGroupNameOf(s, join(name, i), issues)));
  return result(issues, values);
}

// ---- commands ---------------------------------------------------------------------------------------------------

export type CreateSecurityGroup = { type: 'CreateSecurityGroup'; data: CreateSecurityGroupBody & { groupId: string } };
export type UpdateSecurityGroup = { type: 'UpdateSecurityGroup'; data: UpdateSecurityGroupBody & { groupId: string } };
export type DeleteSecurityGroup = { type: 'DeleteSecurityGroup'; data: { groupId: string } };
export type BindSecurityGroup = { type: 'BindSecurityGroup'; data: { groupId: string; lifecycle: Lifecycle; spaceIds: string[] } };
export type UnbindSecurityGroup = { type: 'UnbindSecurityGroup'; data: { groupId: string; lifecycle: Lifecycle; spaceIds: string[] } };
export type SecurityGroupCommand = CreateSecurityGroup | UpdateSecurityGroup | DeleteSecurityGroup | BindSecurityGroup | UnbindSecurityGroup;
