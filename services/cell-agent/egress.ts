// Egress enforcement (application security groups) on a cell: from the cell's desired state to a plan (pure), the
// plan as nftables text — whole, or as the difference between two plans — and the enforcer the converger calls.
//
// Egress lives in its own table, `inet netfold_egress`, beside the container-to-container table `inet netfold`:
// both have a base chain on the forward hook, and a packet must pass both (a drop or reject in either is final;
// an accept ends only its own table's verdict). This one runs first (priority filter - 2) and judges only traffic
// from this cell's containers to destinations outside the overlay; overlay traffic is left to the c2c table.
//
//   chain forward:  established/related → accept; IPv6 → accept (the c2c table denies it);
//                   source not in this cell's range and not a local container → accept;
//                   destination inside the overlay → accept (container-to-container policy governs it);
//                   source in map `egress_of` → goto that (space, lifecycle)'s chain;
//                   otherwise the default (`--egress-default`: deny → reject, allow → accept).
//   chain s_<space>_<r|s>: jump g_<group> for each group that applies, then reject.
//   chain g_<group>:     one rule per group rule (`log prefix "netfold-asg <name> "` when the rule logs), accept.
//
// A change is one `nft -f` transaction of the chains and map elements that differ: a bind touches one s_ chain, a
// group's rule change flushes and refills its g_ chain, a container start adds one map element. Only the first load
// (and a retry after a failed load) loads the table whole.
import { createHash } from 'node:crypto';
import { type EgressRule, type NumRange, destinationRanges, egressRuleOf, portRanges } from '../../events/security-groups.ts';
import type { CellState } from '../../projections/cell.ts';
import { ID_PATTERN } from '../../events/fields.ts';
import { IPV4_PATTERN, intToIp } from '../../projections/ipv4.ts';
import { commentText } from './rules.ts';
import { run } from './dataplane.ts';

export const EGRESS_TABLE = 'netfold_egress';
export const EGRESS_DEFAULTS = ['deny', 'allow'] as const;
/** What traffic to non-overlay destinations from a container no security group applies to gets. */
export type EgressDefault = (typeof EGRESS_DEFAULTS)[number];

/** A group ready to render: its name and its rules as nft rule bodies (each ends in `accept`). */
export type PlannedGroup = { name: string; rules: string[] };

export type EgressPlan = {
  /** Local container IPs and the cell's container ranges (sources this table judges). */
  local: string[];
  subnets: string[];
  /** Local container IP → the chain of its (space, lifecycle); `DENY_CHAIN` when its entry was not valid. */
  bindings: Map<string, string>;
  /** Chain of a (space, lifecycle) → the group chains it jumps to, in order. */
  chains: Map<string, string[]>;
  /** Group chain → the group. */
  groups: Map<string, PlannedGroup>;
  /** Entries left out as invalid (never loaded; their containers are denied). */
  refused: string[];
};

/** Where the containers of an invalid egress entry go: nothing but the reject. */
const DENY_CHAIN = 's_invalid';

/** A readable chain name when the id allows it (ids are letters, digits, `-`, `_`), a hashed one otherwise. */
function chainName(prefix: string, id: string): string {
  if (ID_PATTERN.test(id) && id.length <= 200) return `${prefix}_${id}`;
  return `${prefix}_h${createHash('sha256').update(id).digest('hex').slice(0, 24)}`;
}

export const groupChainOf = (groupId: string) => chainName('g', groupId);
export const spaceChainOf = (spaceId: string, lifecycle: string) => `${chainName('s', spaceId)}_${lifecycle === 'staging' ? 's' : 'r'}`;

/** How a range of addresses is written: an address, a CIDR when aligned, else `a-b`. */
function rangeText(r: NumRange): string {
  if (r.first === r.last) return intToIp(r.first);
  const size = r.last - r.first + 1;
  const bits = 32 - Math.log2(size);
  if (Number.isInteger(bits) && r.first % size === 0) return `${intToIp(r.first)}/${bits}`;
  return `${intToIp(r.first)}-${intToIp(r.last)}`;
}

const portText = (r: NumRange) => (r.first === r.last ? `${r.first}` : `${r.first}-${r.last}`);
const setOf = (items: string[]) => (items.length === 1 ? items[0]! : `{ ${items.join(', ')} }`);

/** The log prefix of a group's logging rules: names the group (nft allows 127 bytes; kept well below). */
export const logPrefixOf = (name: string): string => `netfold-asg ${commentText(name).replace(/ /g, '_').slice(0, 48)} `;

/**
 * Most nft rules one group rule expands to (its destination ranges times its port ranges). Anonymous sets would keep
 * it to one rule, but nft 1.0 loads them slowly — 10,000 rules with two small sets each took 69 s where the same
 * allowances as 40,000 plain rules took 1.0 s (docs/benchmarks.md, bench:egress) — so a rule is expanded, and only
 * one whose product exceeds this keeps sets.
 */
export const MAX_EXPANSION = 64;

/** One rule as nft rule bodies, or null when it is not valid (left out: narrower, never wider). */
export function renderEgressRule(rule: EgressRule, groupName: string): string[] | null {
  const issues: { path: string; message: string }[] = [];
  const r = egressRuleOf(rule, '', issues);
  if (issues.length > 0) return null;
  const dest = destinationRanges(r.destination);
  if (typeof dest === 'string') return null;
  let ports: NumRange[] = [];
  if (r.protocol === 'tcp' || r.protocol === 'udp') {
    const p = portRanges(r.ports ?? '');
    if (typeof p === 'string') return null;
    ports = p;
  }
  const rest: string[] = [];
  if (r.protocol === 'icmp') {
    rest.push('meta l4proto icmp');
    if (r.type !== undefined && r.type >= 0) rest.push(`icmp type ${r.type}`);
    if (r.code !== undefined && r.code >= 0) rest.push(`icmp code ${r.code}`);
  }
  if (r.log === true) rest.push(`log prefix "${logPrefixOf(groupName)}"`);
  rest.push('accept');
  const tail = rest.join(' ');
  const portPart = (p: string) => `${r.protocol} dport ${p} `;
  if (dest.length * Math.max(1, ports.length) > MAX_EXPANSION) {
    const p = ports.length > 0 ? portPart(setOf(ports.map(portText))) : '';
    return [`ip daddr ${setOf(dest.map(rangeText))} ${p}${tail}`];
  }
  const out: string[] = [];
  for (const d of dest) {
    if (ports.length === 0) out.push(`ip daddr ${rangeText(d)} ${tail}`);
    else for (const p of ports) out.push(`ip daddr ${rangeText(d)} ${portPart(portText(p))}${tail}`);
  }
  return out;
}

/**
 * The egress plan of a cell's state: which local IPs go to which (space, lifecycle) chain, which groups each
 * chain jumps to, and each group's rules. Every address is validated (nft would resolve a bad one as a host name).
 */
export function planEgress(state: CellState, subnets: readonly string[], cache?: EgressRenderCache): EgressPlan {
  const refused: string[] = [];
  const local = [...new Set(Object.values(state.containers).map((c) => c.ip))].filter((ip) => IPV4_PATTERN.test(ip)).sort();
  const groups = new Map<string, PlannedGroup>();
  for (const [id, g] of Object.entries(state.asg).sort(([a], [b]) => (a < b ? -1 : 1))) {
    // an entry the state still holds (the same object: entries are replaced whole, never edited) is rendered once
    const known = typeof g === 'object' && g !== null ? cache?.get(g) : undefined;
    if (known && known.id === id) {
      if (known.invalid > 0) refused.push(`asg ${id}: ${known.invalid} invalid rule(s) left out`);
      groups.set(groupChainOf(id), known.group);
      continue;
    }
    const name = typeof g?.name === 'string' ? g.name : id;
    const rules = Array.isArray(g?.rules) ? g.rules.map((r) => renderEgressRule(r, name)) : [null];
    const invalid = rules.filter((r) => r === null).length;
    if (invalid > 0) refused.push(`asg ${id}: ${invalid} invalid rule(s) left out`);
    const group = { name, rules: rules.flatMap((r) => r ?? []) };
    if (typeof g === 'object' && g !== null) cache?.set(g, { id, group, invalid });
    groups.set(groupChainOf(id), group);
  }
  const bindings = new Map<string, string>();
  const chains = new Map<string, string[]>();
  for (const [key, entry] of Object.entries(state.egress).sort(([a], [b]) => (a < b ? -1 : 1))) {
    const bar = key.lastIndexOf('|');
    const lifecycle = key.slice(bar + 1);
    const ips = entry && typeof entry.ips === 'object' ? Object.keys(entry.ips).filter((ip) => IPV4_PATTERN.test(ip)) : [];
    const valid = bar > 0 && (lifecycle === 'running' || lifecycle === 'staging') && Array.isArray(entry?.groups);
    if (!valid) {
      refused.push(`egress ${key}: not a valid entry (its containers are denied)`);
      for (const ip of ips) bindings.set(ip, DENY_CHAIN);
      continue;
    }
    const chain = spaceChainOf(key.slice(0, bar), lifecycle);
    // a group the state does not carry has no rules here: leaving it out only narrows
    chains.set(
      chain,
      entry.groups.map(groupChainOf).filter((g) => groups.has(g)),
    );
    for (const ip of ips) bindings.set(ip, chain);
  }
  return { local, subnets: [...subnets].sort(), bindings, chains, groups, refused };
}

/** Rendered groups by the state's entry object: a pass re-renders only the groups whose entries changed. */
export type EgressRenderCache = WeakMap<object, { id: string; group: PlannedGroup; invalid: number }>;

const T = `inet ${EGRESS_TABLE}`;

const denyLines = ['meta l4proto tcp reject with tcp reset', 'reject with icmpx admin-prohibited'];

function chainBody(lines: string[]): string[] {
  return lines.map((l) => `    ${l}`);
}

const spaceChainLines = (groupChains: string[]) => [...groupChains.map((g) => `jump ${g}`), ...denyLines];

/** The whole table as one `nft -f` transaction (create-if-missing, delete, create: an atomic swap). */
export function renderEgressTable(plan: EgressPlan, overlayCidr: string, egressDefault: EgressDefault): string {
  const lines = [`table ${T}`, `delete table ${T}`, `table ${T} {`];
  const set = (name: string, type: string, elements: string[], interval: boolean) => {
    lines.push(`  set ${name} {`, `    type ${type}`);
    if (interval) lines.push('    flags interval');
    if (elements.length > 0) lines.push(`    elements = { ${elements.join(', ')} }`);
    lines.push('  }');
  };
  set('local', 'ipv4_addr', plan.local, false);
  set('subnets', 'ipv4_addr', plan.subnets, true);
  lines.push('  map egress_of {', '    type ipv4_addr : verdict');
  if (plan.bindings.size > 0) lines.push(`    elements = { ${[...plan.bindings].map(([ip, chain]) => `${ip} : goto ${chain}`).join(', ')} }`);
  lines.push('  }');
  for (const [chain, g] of plan.groups) lines.push(`  chain ${chain} {`, ...chainBody(g.rules), '  }');
  lines.push(`  chain ${DENY_CHAIN} {`, ...chainBody(denyLines), '  }');
  for (const [chain, groups] of plan.chains) lines.push(`  chain ${chain} {`, ...chainBody(spaceChainLines(groups)), '  }');
  lines.push(
    '  chain forward {',
    '    type filter hook forward priority filter - 2; policy accept;',
    '    ct state established,related accept',
    '    meta nfproto ipv6 accept',
    '    ip saddr != @subnets ip saddr != @local accept',
    `    ip daddr ${overlayCidr} accept`,
    '    ip saddr vmap @egress_of',
    ...(egressDefault === 'allow' ? ['    accept'] : chainBody(denyLines)),
    '  }',
    '}',
    '',
  );
  return lines.join('\n');
}

const sameList = (a: readonly string[] | undefined, b: readonly string[] | undefined) =>
  a !== undefined && b !== undefined && a.length === b.length && a.every((x, i) => x === b[i]);

/** The difference between two plans as one nft transaction, or null when nothing differs. */
export function renderEgressDiff(from: EgressPlan, to: EgressPlan): string | null {
  const out: string[] = [];
  const setDiff = (name: string, a: string[], b: string[]) => {
    const before = new Set(a);
    const after = new Set(b);
    const removed = a.filter((x) => !after.has(x));
    const added = b.filter((x) => !before.has(x));
    return { name, removed, added };
  };
  const sets = [setDiff('local', from.local, to.local), setDiff('subnets', from.subnets, to.subnets)];
  // 1. groups: new chains, changed ones flushed and refilled
  for (const [chain, g] of to.groups) {
    const old = from.groups.get(chain);
    if (old && (old === g || sameList(old.rules, g.rules))) continue;
    out.push(old ? `flush chain ${T} ${chain}` : `add chain ${T} ${chain}`);
    for (const r of g.rules) out.push(`add rule ${T} ${chain} ${r}`);
  }
  // 2. (space, lifecycle) chains
  for (const [chain, groups] of to.chains) {
    const old = from.chains.get(chain);
    if (sameList(old, groups)) continue;
    out.push(old ? `flush chain ${T} ${chain}` : `add chain ${T} ${chain}`);
    for (const l of spaceChainLines(groups)) out.push(`add rule ${T} ${chain} ${l}`);
  }
  // 3. sources, then the map (deletions first: an IP moving chains is deleted and added back)
  for (const s of sets) if (s.added.length > 0) out.push(`add element ${T} ${s.name} { ${s.added.join(', ')} }`);
  const unbound = [...from.bindings].filter(([ip, chain]) => to.bindings.get(ip) !== chain).map(([ip]) => ip);
  const bound = [...to.bindings].filter(([ip, chain]) => from.bindings.get(ip) !== chain);
  if (unbound.length > 0) out.push(`delete element ${T} egress_of { ${unbound.join(', ')} }`);
  if (bound.length > 0) out.push(`add element ${T} egress_of { ${bound.map(([ip, chain]) => `${ip} : goto ${chain}`).join(', ')} }`);
  for (const s of sets) if (s.removed.length > 0) out.push(`delete element ${T} ${s.name} { ${s.removed.join(', ')} }`);
  // 4. chains no longer used: (space, lifecycle) chains first (they jump to groups), then groups
  for (const chain of from.chains.keys()) if (!to.chains.has(chain)) out.push(`flush chain ${T} ${chain}`, `delete chain ${T} ${chain}`);
  for (const chain of from.groups.keys()) if (!to.groups.has(chain)) out.push(`flush chain ${T} ${chain}`, `delete chain ${T} ${chain}`);
  return out.length === 0 ? null : `${out.join('\n')}\n`;
}

/** Counts for status and metrics. */
export const egressCounts = (plan: EgressPlan) => ({
  bound: plan.bindings.size,
  groups: plan.groups.size,
  rules: [...plan.groups.values()].reduce((n, g) => n + g.rules.length, 0),
});

/** Where egress plans are loaded: the kernel (nft), or memory (simulations, benchmarks, tests of what a plan allows). */
export interface EgressDriver {
  readonly kind: 'nftables' | 'memory' | 'render';
  /** Loads `text` (whole table or a difference) as one transaction. */
  load(text: string, whole: boolean): Promise<void>;
  /** The kernel's listing of the table (undefined: there is none); absent where there is no kernel to read. */
  listing?(): Promise<string | undefined>;
}

export type EgressOptions = {
  overlayCidr: string;
  egressDefault: EgressDefault;
  driver: EgressDriver;
};

/**
 * Keeps the cell's egress table in line with its desired state: the first load (and any load after a failure) is
 * whole; after that, only the difference. One load at a time (the converger runs one pass at a time).
 */
export class EgressEnforcer {
  readonly #o: EgressOptions;
  #applied: EgressPlan | undefined;
  /** Loads so far (a drift check spanning one is moot), and the listing the first check after the last load read. */
  #loads = 0;
  #listed: string | undefined;
  readonly #cache: EgressRenderCache = new WeakMap();
  /** Loads by kind, for benchmarks and tests. */
  readonly loads = { full: 0, incremental: 0 };
  lastRefused: string[] = [];

  constructor(opts: EgressOptions) {
    this.#o = opts;
  }

  get egressDefault(): EgressDefault {
    return this.#o.egressDefault;
  }

  /**
   * Reads the table back: the first check after a load keeps the kernel's listing; a later one that lists something
   * else (a chain flushed, an element added by hand) or no table is drift — what was loaded is forgotten, so the next
   * pass loads the table whole. A load during the check makes it moot. Undefined: no drift (or nothing to read).
   */
  async drifted(): Promise<'egress-table-missing' | 'egress-table-changed' | undefined> {
    const read = this.#o.driver.listing;
    if (!read || this.#applied === undefined) return undefined;
    const loads = this.#loads;
    const listing = await read.call(this.#o.driver);
    if (loads !== this.#loads || this.#applied === undefined) return undefined;
    if (listing === undefined) return this.#drift('egress-table-missing');
    if (this.#listed === undefined) {
      this.#listed = listing;
      return undefined;
    }
    return listing === this.#listed ? undefined : this.#drift('egress-table-changed');
  }

  #drift<K extends string>(kind: K): K {
    this.#applied = undefined;
    this.#listed = undefined;
    return kind;
  }

  /** The plan last loaded (undefined: none, or the last load failed). */
  get applied(): EgressPlan | undefined {
    return this.#applied;
  }

  /** Brings the table to `state`; resolves with what changed (`none`, `whole`, `incremental`). */
  async converge(state: CellState, subnets: readonly string[]): Promise<'none' | 'whole' | 'incremental'> {
    const plan = planEgress(state, subnets, this.#cache);
    this.lastRefused = plan.refused;
    const from = this.#applied;
    const text = from ? renderEgressDiff(from, plan) : renderEgressTable(plan, this.#o.overlayCidr, this.#o.egressDefault);
    if (text === null) {
      this.#applied = plan;
      return 'none';
    }
    this.#applied = undefined; // unknown until the load succeeded: the next pass loads whole
    this.#loads += 1; // a check listing meanwhile is moot, and the next one reads the new table as it is
    this.#listed = undefined;
    await this.#o.driver.load(text, !from);
    this.#applied = plan;
    if (from) this.loads.incremental += 1;
    else this.loads.full += 1;
    return from ? 'incremental' : 'whole';
  }
}

/** In process: keeps the plan, answers what it allows (for `netfold up`'s simulated cells, benchmarks, tests). */
export class MemoryEgressDriver implements EgressDriver {
  readonly kind = 'memory' as const;
  loaded = 0;
  async load(): Promise<void> {
    this.loaded += 1;
  }
}

/** Dry run: prints what it would load. */
export class RenderEgressDriver implements EgressDriver {
  readonly kind = 'render' as const;
  constructor(private readonly print: (text: string) => void) {}
  async load(text: string): Promise<void> {
    this.print(text);
  }
}

/** The kernel: `nft -f -` (in `netns` when given). */
export class NftEgressDriver implements EgressDriver {
  readonly kind = 'nftables' as const;
  constructor(private readonly netns?: string) {}
  async load(text: string): Promise<void> {
    await this.#nft(['-f', '-'], text);
  }

  async listing(): Promise<string | undefined> {
    return this.#nft(['list', 'table', 'inet', EGRESS_TABLE]).catch(() => undefined);
  }

  #nft(args: string[], input?: string): Promise<string> {
    return this.netns ? run('ip', ['netns', 'exec', this.netns, 'nft', ...args], input) : run('nft', args, input);
  }
}
