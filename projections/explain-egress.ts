// Why can (or cannot) a container reach an address outside the overlay? Pure: answered from a model, by the same
// rules the cells enforce (projections/cell.ts picks the groups, services/cell-agent/egress.ts renders them).
import { type EgressRule, type Lifecycle, destinationRanges, portRanges } from '../events/security-groups.ts';
import { type Model, lifecycleOf, securityGroupsFor } from './model.ts';
import { IPV4_PATTERN, cidrContains } from './ipv4.ts';

export type EgressProtocol = 'tcp' | 'udp' | 'icmp';
/** What is asked: a destination address, a protocol and a port (tcp/udp) or an ICMP type and code. */
export type EgressQuestion = { destination: string; protocol: EgressProtocol; port?: number; icmpType?: number; icmpCode?: number };

export type EgressMatch = {
  groupId: string;
  groupName: string;
  /** Index of the rule in the group, and the rule. */
  index: number;
  rule: EgressRule;
  updatedAt: string;
  updatedBy: string;
  updatedSeq: number;
};

export type EgressExplanation = {
  allowed: boolean;
  reason: string;
  /** Who asks: the container (when one was named) and its app, space, lifecycle and cell. */
  source: { containerId: string | null; appId: string; spaceId: string; lifecycle: Lifecycle; cellId: string | null } | null;
  /** The groups that apply to the source's space and lifecycle (bound or global), by name. */
  applicable: { groupId: string; groupName: string; global: boolean }[];
  /** The rules that allow it. */
  matches: EgressMatch[];
};

const toInt = (ip: string) => ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);

/** Does one rule allow the question? */
export function ruleAllows(rule: EgressRule, q: EgressQuestion): boolean {
  const ranges = destinationRanges(rule.destination);
  if (typeof ranges === 'string') return false;
  const addr = toInt(q.destination);
  if (!ranges.some((r) => addr >= r.first && addr <= r.last)) return false;
  if (rule.protocol === 'all') return true;
  if (rule.protocol !== q.protocol) return false;
  if (rule.protocol === 'icmp') {
    const typeOk = rule.type === undefined || rule.type < 0 || rule.type === q.icmpType;
    const codeOk = rule.code === undefined || rule.code < 0 || rule.code === q.icmpCode;
    return typeOk && codeOk;
  }
  const ports = portRanges(rule.ports ?? '');
  return typeof ports !== 'string' && q.port !== undefined && ports.some((r) => q.port! >= r.first && q.port! <= r.last);
}

/**
 * Explains egress from `source` — a container id, or an app id (its `running` containers) — to an address.
 * `overlayCidr`: traffic into the overlay is not egress (container-to-container policy governs it);
 * `egressDefault`: what a container no group applies to gets (the agents' `--egress-default`).
 */
export function explainEgress(m: Model, source: string, q: EgressQuestion, overlayCidr: string, egressDefault: 'deny' | 'allow'): EgressExplanation {
  const none = (reason: string, allowed = false): EgressExplanation => ({ allowed, reason, source: null, applicable: [], matches: [] });
  if (!IPV4_PATTERN.test(q.destination)) return none(`${q.destination} is not an IPv4 address`);
  const container = m.containers[source];
  const appId = container?.appId ?? source;
  const app = m.apps[appId];
  if (!app || app.deleted) return none(`${source} is neither a running container nor a live app`);
  if (container && container.status !== 'running') return none(`container ${source} is not running`);
  const lifecycle = container ? lifecycleOf(container) : 'running';
  const who = { containerId: container ? container.id : null, appId, spaceId: app.spaceId, lifecycle, cellId: container?.cellId ?? null };
  const base = { source: who, applicable: [] as EgressExplanation['applicable'], matches: [] as EgressMatch[] };
  if (cidrContains(overlayCidr, q.destination)) {
    return { ...base, allowed: false, reason: `${q.destination} is inside the overlay ${overlayCidr}: container-to-container policy governs it, not egress` };
  }
  const ids = securityGroupsFor(m, app.spaceId, lifecycle);
  const applicable = ids.map((id) => ({ groupId: id, groupName: m.securityGroups[id]!.name, global: m.securityGroups[id]!.globallyEnabled[lifecycle] }));
  if (ids.length === 0) {
    return {
      ...base,
      allowed: egressDefault === 'allow',
      reason:
        `no security group applies to space ${app.spaceId} (${lifecycle}): ` +
        `${egressDefault === 'allow' ? 'allowed' : 'denied'} by --egress-default ${egressDefault}`,
    };
  }
  const matches: EgressMatch[] = [];
  for (const id of ids) {
    const g = m.securityGroups[id]!;
    g.rules.forEach((rule, index) => {
      if (ruleAllows(rule, q))
        matches.push({ groupId: id, groupName: g.name, index, rule, updatedAt: g.updatedAt, updatedBy: g.updatedBy, updatedSeq: g.updatedSeq });
    });
  }
  const what = q.protocol === 'icmp' ? `icmp type ${q.icmpType ?? -1} code ${q.icmpCode ?? -1}` : `${q.protocol}/${q.port}`;
  if (matches.length > 0) {
    const names = [...new Set(matches.map((x) => x.groupName))];
    return { ...base, applicable, matches, allowed: true, reason: `allowed by security group${names.length > 1 ? 's' : ''} ${names.join(', ')}` };
  }
  return {
    ...base,
    applicable,
    matches,
    allowed: false,
    reason: `${applicable.length} security group(s) apply to space ${app.spaceId} (${lifecycle}) but none allows ${q.destination} ${what}: denied`,
  };
}
