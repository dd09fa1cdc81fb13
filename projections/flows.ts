// From a cell's desired state to the flows it allows: pure, shared by the cell agent (which enforces them) and the
// policy-writer's dry run (which shows what a change would add or remove).
import type { CellState, IngressRule, LocalContainer } from './cell.ts';
import type { Dict } from './dict.ts';

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
  /** The RuleExpander version this set is (absent when built otherwise): a RuleDiff applies to it when its `from` is this. */
  version?: number;
};

/** A total order (sorting never depends on the input's order): destination, source, protocol, ports, then the comment's parts. */
const cmpAllow = (a: Allow, b: Allow) =>
  cmpText(a.dst, b.dst) ||
  cmpText(a.src, b.src) ||
  cmpText(a.protocol, b.protocol) ||
  a.startPort - b.startPort ||
  a.endPort - b.endPort ||
  cmpText(a.srcApp, b.srcApp) ||
  cmpText(a.dstApp, b.dstApp) ||
  cmpText(a.policy, b.policy);
const cmpText = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** Expands a cell's state into allowed flows, sorted and without duplicates. */
export function expandRules(state: CellState, subnets: readonly string[] = []): RuleSet {
  return new RuleExpander().expand(state, subnets);
}

const portsOf = (protocol: Protocol, startPort: number, endPort: number) => `${protocol}/${startPort === endPort ? startPort : `${startPort}-${endPort}`}`;

/**
 * What changed between two expansions of a cell (RuleExpander versions `from` → `to`): flows whose element appears
 * or goes (a flow whose comment changes is removed and added again), local addresses and subnets.
 */
export type RuleDiff = {
  from: number;
  to: number;
  added: Allow[];
  removed: Allow[];
  local: { added: string[]; removed: string[] };
  subnets: { added: string[]; removed: string[] };
};

/** The same element of the same set with the same comment. */
const sameFlow = (a: Allow, b: Allow) =>
  a === b ||
  (a.src === b.src &&
    a.dst === b.dst &&
    a.protocol === b.protocol &&
    a.startPort === b.startPort &&
    a.endPort === b.endPort &&
    a.srcApp === b.srcApp &&
    a.dstApp === b.dstApp &&
    a.policy === b.policy);

/**
 * The flows between one source and one destination address: one contribution per (local container, ingress rule)
 * that yields it, and what they normalize to (`flows`, what is enforced).
 */
type Pair = { src: string; dst: string; containers: string[]; contributions: Allow[]; flows: Allow[] };

/**
 * expandRules for a state that changes a little at a time, at the cost of what changed. It keeps the entries it
 * expanded last (containers, ingress rules, source IPs: replaced whole by the feed, never edited, so a different
 * object is a changed entry) and the flows per (source, destination) address pair. `update` compares each entry
 * by identity, and a changed one key by key (a source app's IPs, an app's rules), adds and removes only the
 * contributions of what differs, re-normalizes only the pairs they touch, and returns the difference in flows: a
 * one-tuple change costs one tuple, whatever the cell's size. `rules` builds the whole sorted RuleSet on demand
 * (for a whole load), the same object until the next change.
 */
export class RuleExpander {
  #version = 0;
  readonly #containers = new Map<string, LocalContainer>();
  readonly #ingress = new Map<string, Dict<IngressRule>>();
  readonly #sources = new Map<string, Dict<true>>();
  /** Containers per app, and ingress rules (dest app → rule keys) per source app, of the entries above. */
  readonly #containersOf = new Map<string, Set<string>>();
  readonly #rulesFrom = new Map<string, Map<string, Set<string>>>();
  /** destination address → source address → pair. */
  readonly #pairs = new Map<string, Map<string, Pair>>();
  /** Local containers per address. */
  readonly #localCount = new Map<string, number>();
  #subnets: string[] = [];
  #flowCount = 0;
  #rules: (RuleSet & { version: number }) | undefined;
  // the pass under way: pairs touched, addresses touched (with whether they were local before)
  readonly #dirty = new Set<Pair>();
  readonly #localBefore = new Map<string, boolean>();

  /** Flows and local addresses now, without building the RuleSet. */
  get counts(): { local: number; allows: number } {
    return { local: this.#localCount.size, allows: this.#flowCount };
  }

  /** The whole expansion as a RuleSet, sorted; the same object until the next change; `version` is this expander's. */
  get rules(): RuleSet {
    if (this.#rules?.version !== this.#version) {
      // in cmpAllow's order without sorting the flows: destinations, then their sources, then each pair's (sorted) flows
      const allows: Allow[] = [];
      for (const dst of [...this.#pairs.keys()].sort()) {
        const bySource = this.#pairs.get(dst)!;
        for (const src of [...bySource.keys()].sort()) for (const a of bySource.get(src)!.flows) allows.push(a);
      }
      this.#rules = { local: [...this.#localCount.keys()].sort(), subnets: this.#subnets, allows, version: this.#version };
    }
    return this.#rules;
  }

  /** Brings the expansion up to `state` and returns it (the same object when no flow, address or subnet changed). */
  expand(state: CellState, subnets: readonly string[] = []): RuleSet {
    this.update(state, subnets);
    return this.rules;
  }

  /** Brings the expansion up to `state`; the difference from the previous one, or null when nothing changed. */
  update(state: CellState, subnets: readonly string[] = []): RuleDiff | null {
    const diff: RuleDiff = {
      from: this.#version,
      to: this.#version + 1,
      added: [],
      removed: [],
      local: { added: [], removed: [] },
      subnets: { added: [], removed: [] },
    };
    const cidrs = [...new Set(subnets)].sort();
    if (cidrs.join(',') !== this.#subnets.join(',')) {
      diff.subnets.added = cidrs.filter((c) => !this.#subnets.includes(c));
      diff.subnets.removed = this.#subnets.filter((c) => !cidrs.includes(c));
      this.#subnets = cidrs;
    }
    // (any order gives the same result; this one expands a new cell rule by rule, each over its source's IPs)
    syncSection(state.containers, this.#containers, (id, old, next) => this.#setContainer(id, old, next));
    syncSection(state.sources, this.#sources, (app, old, next) => this.#setSources(app, old, next));
    syncSection(state.ingress, this.#ingress, (app, old, next) => this.#setIngress(app, old, next));
    for (const pair of this.#dirty) {
      const flows = pair.contributions.length <= 1 ? pair.contributions.slice() : normalizeAllows(pair.contributions);
      if (pair.flows.length === 0) for (const b of flows) diff.added.push(b);
      else if (flows.length === 0) for (const a of pair.flows) diff.removed.push(a);
      else {
        for (const a of pair.flows) if (!flows.some((b) => sameFlow(a, b))) diff.removed.push(a);
        for (const b of flows) if (!pair.flows.some((a) => sameFlow(a, b))) diff.added.push(b);
      }
      this.#flowCount += flows.length - pair.flows.length;
      pair.flows = flows;
      if (pair.contributions.length === 0) {
        const bySource = this.#pairs.get(pair.dst)!;
        bySource.delete(pair.src);
        if (bySource.size === 0) this.#pairs.delete(pair.dst);
      }
    }
    this.#dirty.clear();
    for (const [ip, before] of this.#localBefore) {
      const now = this.#localCount.has(ip);
      if (now && !before) diff.local.added.push(ip);
      else if (!now && before) diff.local.removed.push(ip);
    }
    this.#localBefore.clear();
    const changed =
      diff.added.length + diff.removed.length + diff.local.added.length + diff.local.removed.length + diff.subnets.added.length + diff.subnets.removed.length;
    if (changed === 0) return null;
    this.#version = diff.to;
    return diff;
  }

  /** A local container appears, goes or changes: its contributions go and come back only when its address or app changed. */
  #setContainer(id: string, old: LocalContainer | undefined, next: LocalContainer | undefined): void {
    if (old && next && old.ip === next.ip && old.appId === next.appId) return;
    if (old) {
      this.#containerFlows(id, old, -1);
      this.#containersOf.get(old.appId)?.delete(id);
      if (this.#containersOf.get(old.appId)?.size === 0) this.#containersOf.delete(old.appId);
      this.#countLocal(old.ip, -1);
    }
    if (next) {
      (this.#containersOf.get(next.appId) ?? this.#containersOf.set(next.appId, new Set()).get(next.appId)!).add(id);
      this.#countLocal(next.ip, 1);
      this.#containerFlows(id, next, 1);
    }
  }

  /** An app's ingress rules change: the rules that went or came, for each of its local containers. */
  #setIngress(app: string, old: Dict<IngressRule> | undefined, next: Dict<IngressRule> | undefined): void {
    if (old) {
      for (const key in old) {
        const rule = old[key]!;
        const kept = next && Object.hasOwn(next, key) ? next[key] : undefined;
        if (kept && sameRule(rule, kept)) continue;
        this.#ruleFlows(app, rule, -1);
        const byDest = this.#rulesFrom.get(rule.sourceAppId);
        byDest?.get(app)?.delete(key);
        if (byDest?.get(app)?.size === 0) byDest.delete(app);
        if (byDest?.size === 0) this.#rulesFrom.delete(rule.sourceAppId);
      }
    }
    if (next) {
      for (const key in next) {
        const rule = next[key]!;
        const was = old && Object.hasOwn(old, key) ? old[key] : undefined;
        if (was && sameRule(was, rule)) continue;
        const byDest = this.#rulesFrom.get(rule.sourceAppId) ?? this.#rulesFrom.set(rule.sourceAppId, new Map()).get(rule.sourceAppId)!;
        (byDest.get(app) ?? byDest.set(app, new Set()).get(app)!).add(key);
        this.#ruleFlows(app, rule, 1);
      }
    }
  }

  /** A source app's IPs change: the IPs that went or came, for each rule naming it and each container of its destinations. */
  #setSources(app: string, old: Dict<true> | undefined, next: Dict<true> | undefined): void {
    const byDest = this.#rulesFrom.get(app);
    if (!byDest) return;
    if (old) for (const ip in old) if (!next || !Object.hasOwn(next, ip)) this.#sourceFlows(byDest, ip, -1);
    if (next) for (const ip in next) if (!old || !Object.hasOwn(old, ip)) this.#sourceFlows(byDest, ip, 1);
  }

  /** Every contribution of one container: its app's rules × their sources' IPs. */
  #containerFlows(id: string, c: LocalContainer, sign: 1 | -1): void {
    const rules = this.#ingress.get(c.appId);
    for (const key in rules) {
      const rule = rules[key]!;
      const policy = portsOf(rule.protocol, rule.startPort, rule.endPort);
      for (const src in this.#sources.get(rule.sourceAppId)) this.#contribute(id, c, rule, policy, src, sign);
    }
  }

  /** Every contribution of one rule of `app`: its source's IPs × the app's local containers. */
  #ruleFlows(app: string, rule: IngressRule, sign: 1 | -1): void {
    const ids = this.#containersOf.get(app);
    if (!ids) return;
    const ips = this.#sources.get(rule.sourceAppId);
    const policy = portsOf(rule.protocol, rule.startPort, rule.endPort);
    for (const id of ids) {
      const c = this.#containers.get(id)!;
      for (const src in ips) this.#contribute(id, c, rule, policy, src, sign);
    }
  }

  /** Every contribution of one source IP: the rules naming its app × their apps' local containers. */
  #sourceFlows(byDest: Map<string, Set<string>>, src: string, sign: 1 | -1): void {
    for (const [app, keys] of byDest) {
      const ids = this.#containersOf.get(app);
      if (!ids) continue;
      const rules = this.#ingress.get(app)!;
      for (const key of keys) {
        const rule = rules[key]!;
        const policy = portsOf(rule.protocol, rule.startPort, rule.endPort);
        for (const id of ids) this.#contribute(id, this.#containers.get(id)!, rule, policy, src, sign);
      }
    }
  }

  /** Adds (1) or removes (-1) what container `id` gets from `rule` (its `policy` text) for source address `src`. */
  #contribute(id: string, c: LocalContainer, rule: IngressRule, policy: string, src: string, sign: 1 | -1): void {
    let bySource = this.#pairs.get(c.ip);
    if (!bySource) this.#pairs.set(c.ip, (bySource = new Map()));
    let pair = bySource.get(src);
    if (!pair) bySource.set(src, (pair = { src, dst: c.ip, containers: [], contributions: [], flows: [] }));
    this.#dirty.add(pair);
    if (sign > 0) {
      pair.containers.push(id);
      pair.contributions.push({
        src,
        dst: c.ip,
        protocol: rule.protocol,
        startPort: rule.startPort,
        endPort: rule.endPort,
        srcApp: rule.sourceAppId,
        dstApp: c.appId,
        policy,
      });
      return;
    }
    const { containers, contributions } = pair;
    for (let i = 0; i < containers.length; i++) {
      const a = contributions[i]!;
      if (containers[i] !== id || a.srcApp !== rule.sourceAppId || a.protocol !== rule.protocol || a.startPort !== rule.startPort || a.endPort !== rule.endPort)
        continue;
      const last = containers.length - 1;
      containers[i] = containers[last]!;
      contributions[i] = contributions[last]!;
      containers.pop();
      contributions.pop();
      return;
    }
  }

  #countLocal(ip: string, by: 1 | -1): void {
    const n = this.#localCount.get(ip) ?? 0;
    if (!this.#localBefore.has(ip)) this.#localBefore.set(ip, n > 0);
    if (n + by > 0) this.#localCount.set(ip, n + by);
    else this.#localCount.delete(ip);
  }
}

const sameRule = (a: IngressRule, b: IngressRule) =>
  a === b || (a.sourceAppId === b.sourceAppId && a.protocol === b.protocol && a.startPort === b.startPort && a.endPort === b.endPort);

/**
 * Walks one section of a state against what was expanded from it (`held`): `set(key, old, next)` for every entry
 * that is a different object or gone (then `next` is undefined); `held` follows. Entries are compared by identity:
 * the feed replaces an entry whole when it changes.
 */
function syncSection<V>(entries: Dict<V>, held: Map<string, V>, set: (key: string, old: V | undefined, next: V | undefined) => void): void {
  let count = 0;
  for (const key in entries) {
    count++;
    const next = entries[key]!;
    const old = held.get(key);
    if (old === next) continue;
    set(key, old, next);
    held.set(key, next);
  }
  if (held.size === count) return;
  for (const [key, old] of held) {
    if (key in entries) continue;
    set(key, old, undefined);
    held.delete(key);
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
  // the last range and the last single port kept (indexes into out): a single port may sort between two ranges
  // that overlap (1000-1010, 1005, 1008-1012), so a range is merged into the last range, not the last flow
  let range = -1;
  let single = -1;
  const sameFlowKey = (a: Allow, b: Allow | undefined) => b !== undefined && b.src === a.src && b.dst === a.dst && b.protocol === a.protocol;
  for (const a of sorted) {
    if (a.startPort !== a.endPort) {
      const prev = out[range];
      if (sameFlowKey(a, prev) && a.startPort <= prev!.endPort) {
        out[range] = { ...prev!, endPort: Math.max(prev!.endPort, a.endPort), policy: joinPolicies(prev!.policy, a.policy) };
        continue;
      }
      range = out.length;
    } else {
      if (sameFlowKey(a, out[single]) && out[single]!.startPort === a.startPort) continue;
      single = out.length;
    }
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
