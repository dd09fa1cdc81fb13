// From a cell's desired state to the rules its dataplane enforces: a pure expansion and a deterministic nftables
// rendering. Enforcement is at the destination, default deny for traffic from the overlay to local containers.

export { type Allow, type Protocol, type RuleSet, RuleExpander, allows, expandRules, inCidr, normalizeAllows } from '../../projections/flows.ts';
import type { Allow, Protocol, RuleSet } from '../../projections/flows.ts';

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
const CIDR = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\/([0-9]|[12][0-9]|3[0-2])$/;

export class InvalidRuleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidRuleError';
  }
}

export const TABLE = 'netfold';

/** Validates every address (each distinct one once) and port range; nft would resolve a bad address as a name. */
export function validateRules(rules: RuleSet, overlayCidr: string): void {
  if (!CIDR.test(overlayCidr)) throw new InvalidRuleError(`invalid overlay CIDR ${overlayCidr}`);
  const seen = new Set<string>();
  const address = (ip: string, what: string) => {
    if (seen.has(ip)) return;
    if (!IPV4.test(ip)) throw new InvalidRuleError(`invalid ${what} address ${JSON.stringify(ip)}`);
    seen.add(ip);
  };
  for (const ip of rules.local) address(ip, 'local');
  for (const a of rules.allows) {
    address(a.src, 'source');
    address(a.dst, 'destination');
    if (!Number.isInteger(a.startPort) || !Number.isInteger(a.endPort) || a.startPort < 1 || a.endPort > 65535 || a.startPort > a.endPort) {
      throw new InvalidRuleError(`invalid ports in ${JSON.stringify(a)}`);
    }
  }
}

/**
 * The nftables table, complete, as one `nft -f` transaction: create-if-missing, delete, create — so the swap is
 * atomic and an existing table (e.g. after an agent restart) is replaced without a gap. Every address is validated
 * first: nft would resolve an invalid one as a host name.
 */
export function renderNft(rules: RuleSet, overlayCidr: string): string {
  validateRules(rules, overlayCidr);
  const ranges = new Map<string, Allow[]>();
  for (const a of rules.allows) {
    if (a.startPort === a.endPort) continue;
    const k = `${a.src}|${a.dst}|${a.protocol}`;
    for (const b of ranges.get(k) ?? []) {
      if (a.startPort <= b.endPort && b.startPort <= a.endPort) throw new InvalidRuleError(`overlapping port ranges for ${k}: normalize with normalizeAllows`);
    }
    (ranges.get(k) ?? ranges.set(k, []).get(k)!).push(a);
  }
  const set = (name: string, type: string, elements: string[], interval: boolean) =>
    [`  set ${name} {`, `    type ${type}`, ...(interval ? ['    flags interval'] : []), ...(elements.length > 0 ? [`    elements = { ${elements.join(', ')} }`] : []), '  }'];
  const exact = (p: Protocol) => rules.allows.filter((a) => a.protocol === p && a.startPort === a.endPort).map((a) => `${a.src} . ${a.dst} . ${a.startPort}`);
  const ranged = (p: Protocol) => rules.allows.filter((a) => a.protocol === p && a.startPort !== a.endPort).map((a) => `${a.src} . ${a.dst} . ${a.startPort}-${a.endPort}`);
  const tuple = 'ipv4_addr . ipv4_addr . inet_service';
  return [
    `table inet ${TABLE}`,
    `delete table inet ${TABLE}`,
    `table inet ${TABLE} {`,
    ...set('local', 'ipv4_addr', rules.local, false),
    ...set('allow_tcp', tuple, exact('tcp'), false),
    ...set('allow_udp', tuple, exact('udp'), false),
    ...set('range_tcp', tuple, ranged('tcp'), true),
    ...set('range_udp', tuple, ranged('udp'), true),
    '  chain forward {',
    '    type filter hook forward priority filter - 1; policy accept;',
    '    meta nfproto != ipv4 accept',
    '    ct state established,related accept',
    '    ip daddr != @local accept',
    `    ip saddr != ${overlayCidr} accept`,
    '    ip saddr . ip daddr . tcp dport @allow_tcp accept',
    '    ip saddr . ip daddr . tcp dport @range_tcp accept',
    '    ip saddr . ip daddr . udp dport @allow_udp accept',
    '    ip saddr . ip daddr . udp dport @range_udp accept',
    '    meta l4proto tcp reject with tcp reset',
    '    reject',
    '  }',
    '}',
    '',
  ].join('\n');
}

const setOf = (a: Allow): string => `${a.startPort === a.endPort ? 'allow' : 'range'}_${a.protocol}`;
const elementOf = (a: Allow): string => `${a.src} . ${a.dst} . ${a.startPort === a.endPort ? a.startPort : `${a.startPort}-${a.endPort}`}`;

/** A rule set indexed by nft set and element, to compute the next change without rebuilding the last index. */
export type RuleIndex = { local: Set<string>; allows: Map<string, Allow> };

export function indexRules(rules: RuleSet): RuleIndex {
  return { local: new Set(rules.local), allows: new Map(rules.allows.map((a) => [`${setOf(a)}|${elementOf(a)}`, a])) };
}

/**
 * The changes from one rule set (indexed) to the next as one nft transaction of set element additions and
 * deletions (the table's chains never change), or null when there is nothing to do; with the next set's index.
 * Only what is added needs validating: what is loaded already was.
 */
export function renderNftChanges(prev: RuleIndex, next: RuleSet, overlayCidr: string): { text: string | null; index: RuleIndex } {
  const index = indexRules(next);
  const addedLocal = next.local.filter((ip) => !prev.local.has(ip));
  const removedLocal = [...prev.local].filter((ip) => !index.local.has(ip));
  const added: Allow[] = [];
  for (const [k, a] of index.allows) if (!prev.allows.has(k)) added.push(a);
  const removed: Allow[] = [];
  for (const [k, a] of prev.allows) if (!index.allows.has(k)) removed.push(a);
  validateRules({ local: addedLocal, allows: added }, overlayCidr);
  const group = (list: Allow[]) => {
    const by = new Map<string, string[]>();
    for (const a of list) (by.get(setOf(a)) ?? by.set(setOf(a), []).get(setOf(a))!).push(elementOf(a));
    return [...by].sort(([x], [y]) => (x < y ? -1 : 1));
  };
  const lines: string[] = [];
  // Deletions first: an element and its replacement may overlap in an interval set. The transaction is atomic.
  for (const [set, els] of group(removed)) lines.push(`delete element inet ${TABLE} ${set} { ${els.join(', ')} }`);
  if (removedLocal.length > 0) lines.push(`delete element inet ${TABLE} local { ${removedLocal.join(', ')} }`);
  for (const [set, els] of group(added)) lines.push(`add element inet ${TABLE} ${set} { ${els.join(', ')} }`);
  if (addedLocal.length > 0) lines.push(`add element inet ${TABLE} local { ${addedLocal.join(', ')} }`);
  return { text: lines.length > 0 ? lines.join('\n') + '\n' : null, index };
}
