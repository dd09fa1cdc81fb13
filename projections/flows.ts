// From a cell's desired state to the flows it allows: pure, shared by the cell agent (which enforces them) and the
// policy-writer's dry run (which shows what a change would add or remove).
import type { CellState } from './cell.ts';

import type { Protocol } from '../events/catalogue.ts';
import { cidrContains } from './ipv4.ts';

export type { Protocol };
/**
 * One allowed flow; `startPort === endPort` for a single port. `srcApp`/`dstApp`: the apps the addresses belong to;
 * `policy`: the ingress rule(s) it comes from as `protocol/ports` (`tcp/8000-8100+tcp/8050-8150` when overlapping
 * ranges were merged). They say where a flow comes from (nftables element comments); they do not change what it allows.
 */
export type Allow = { src: string; dst: string; protocol: Protocol; startPort: number; endPort: number; srcApp: string; dstApp: string; policy: string };

export type RuleSet = {
  /** IPs of the local containers: traffic to them is denied unless allowed. */
  local: string[];
  /**
   * CIDRs of this cell's container range: traffic from the overlay to any address in them is denied unless
   * allowed, whether the control plane knows a container there or not. Empty when unknown (then only `local` is guarded).
   */
  subnets: string[];
  allows: Allow[];
};

const cmpAllow = (a: Allow, b: Allow) =>
  a.dst < b.dst
    ? -1
    : a.dst > b.dst
      ? 1
      : a.src < b.src
        ? -1
        : a.src > b.src
          ? 1
          : a.protocol < b.protocol
            ? -1
            : a.protocol > b.protocol
              ? 1
              : a.startPort - b.startPort || a.endPort - b.endPort;

/** Expands a cell's state into allowed flows, sorted and without duplicates. */
export function expandRules(state: CellState, subnets: readonly string[] = []): RuleSet {
  return new RuleExpander().expand(state, subnets);
}

const portsOf = (protocol: Protocol, startPort: number, endPort: number) => `${protocol}/${startPort === endPort ? startPort : `${startPort}-${endPort}`}`;

type ContainerFlows = { container: unknown; ingress: unknown; sources: unknown[]; allows: Allow[] };

/**
 * expandRules for a state that changes a little at a time: remembers each local container's flows with the
 * entries they came from, and recomputes only a container whose own entry, its app's ingress rules or one of their
 * source apps is a different object than last time (entries are replaced whole, never edited). When nothing a rule
 * depends on changed it returns the previous RuleSet object itself, so `!==` tells a caller whether to apply.
 */
export class RuleExpander {
  #memo = new Map<string, ContainerFlows>();
  #last: RuleSet | undefined;

  expand(state: CellState, subnets: readonly string[] = []): RuleSet {
    const next = new Map<string, ContainerFlows>();
    const byIp = new Map<string, Allow[][]>();
    const cidrs = [...new Set(subnets)].sort();
    let changed = this.#last === undefined || Object.keys(state.containers).length !== this.#memo.size || cidrs.join(',') !== this.#last.subnets.join(',');
    for (const [id, c] of Object.entries(state.containers)) {
      const ingress = state.ingress[c.appId];
      const rules = Object.values(ingress ?? {});
      const sources = rules.map((r) => state.sources[r.sourceAppId]);
      const m = this.#memo.get(id);
      let flows: ContainerFlows;
      if (m && m.container === c && m.ingress === ingress && m.sources.length === sources.length && m.sources.every((x, i) => x === sources[i])) {
        flows = m;
      } else {
        changed = true;
        const allows: Allow[] = [];
        for (const rule of rules) {
          for (const src of Object.keys(state.sources[rule.sourceAppId] ?? {})) {
            allows.push({
              src,
              dst: c.ip,
              protocol: rule.protocol,
              startPort: rule.startPort,
              endPort: rule.endPort,
              srcApp: rule.sourceAppId,
              dstApp: c.appId,
              policy: portsOf(rule.protocol, rule.startPort, rule.endPort),
            });
          }
        }
        flows = { container: c, ingress, sources, allows: normalizeAllows(allows) };
      }
      next.set(id, flows);
      const group = byIp.get(c.ip);
      if (group) group.push(flows.allows);
      else byIp.set(c.ip, [flows.allows]);
    }
    this.#memo = next;
    if (!changed && this.#last) return this.#last;
    // Sorted by destination first, so the whole list is each destination's normalized list in address order
    // (two containers sharing an address, which a valid state never has, are normalized together).
    const local = [...byIp.keys()].sort();
    const out: Allow[] = [];
    for (const ip of local) {
      const lists = byIp.get(ip)!;
      for (const a of lists.length === 1 ? lists[0]! : normalizeAllows(lists.flat())) out.push(a);
    }
    this.#last = { local, subnets: cidrs, allows: out };
    return this.#last;
  }
}

const joinPolicies = (a: string, b: string) => (a === b || a.split('+').includes(b) ? a : `${a}+${b}`);

/**
 * Sorted, with overlapping port ranges of the same (source, destination, protocol) merged: an interval set refuses
 * overlapping elements ("File exists"), and two policies may well name overlapping ranges. A merged flow names
 * every policy it came from.
 */
export function normalizeAllows(list: Allow[]): Allow[] {
  const sorted = [...list].sort(cmpAllow);
  const out: Allow[] = [];
  for (const a of sorted) {
    const prev = out[out.length - 1];
    const ranged = a.startPort !== a.endPort;
    if (
      prev &&
      ranged &&
      prev.startPort !== prev.endPort &&
      prev.src === a.src &&
      prev.dst === a.dst &&
      prev.protocol === a.protocol &&
      a.startPort <= prev.endPort
    ) {
      out[out.length - 1] = { ...prev, endPort: Math.max(prev.endPort, a.endPort), policy: joinPolicies(prev.policy, a.policy) };
      continue;
    }
    if (
      prev &&
      !ranged &&
      prev.src === a.src &&
      prev.dst === a.dst &&
      prev.protocol === a.protocol &&
      prev.startPort === a.startPort &&
      prev.endPort === a.endPort
    )
      continue;
    out.push(a);
  }
  return out;
}

/**
 * Does a rule set allow a new flow? (The semantics every driver implements.) Traffic from the overlay to a local
 * container, or to any address in the cell's subnets, is denied unless a flow allows it; IPv6 is not modelled here
 * (the nftables driver denies forwarded IPv6, netfold allows IPv4 flows only).
 */
export function allows(rules: RuleSet, src: string, dst: string, protocol: Protocol, port: number, overlayCidr: string): boolean {
  const guarded = rules.local.includes(dst) || rules.subnets.some((cidr) => cidrContains(cidr, dst));
  if (!guarded || !cidrContains(overlayCidr, src)) return true;
  return rules.allows.some((a) => a.src === src && a.dst === dst && a.protocol === protocol && port >= a.startPort && port <= a.endPort);
}
