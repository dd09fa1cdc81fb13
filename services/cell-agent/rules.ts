// From a cell's desired state to the rules its dataplane enforces: a pure expansion and a deterministic nftables
// rendering. Enforcement is at the destination, default deny for traffic from the overlay to local containers.

export { type Allow, type Protocol, type RuleSet, RuleExpander, allows, expandRules, normalizeAllows } from '../../projections/flows.ts';
import type { Allow, Protocol, RuleSet } from '../../projections/flows.ts';
import type { CellState } from '../../projections/cell.ts';
import { CIDR_PATTERN as CIDR, IPV4_PATTERN as IPV4, cidrWithin, isCanonicalCidr } from '../../projections/ipv4.ts';

export class InvalidRuleError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidRuleError';
  }
}

export const TABLE = 'netfold';

/** What a loaded table enforces: the revision and hash of the cell's desired state it was built from. */
export type AppliedStamp = { revision: number; hash: string };

/** Is `cidr` a CIDR (host bits zero) inside the overlay? */
function isSubnetOf(cidr: string, overlayCidr: string): boolean {
  return CIDR.test(cidr) && CIDR.test(overlayCidr) && isCanonicalCidr(cidr) && cidrWithin(overlayCidr, cidr);
}

/** Parses a comma list of this cell's container CIDRs (`--cell-subnet`); each must lie inside the overlay. */
export function parseCellSubnets(text: string | undefined, overlayCidr: string): string[] {
  if (text === undefined || text.trim() === '') return [];
  const out = text.split(',').map((c) => c.trim());
  for (const c of out)
    if (!isSubnetOf(c, overlayCidr))
      throw new InvalidRuleError(`cell subnet ${JSON.stringify(c)} is not a CIDR (host bits zero) inside the overlay ${overlayCidr}`);
  return [...new Set(out)].sort();
}

/**
 * The CIDRs of a cell's container range: the range the cell was registered with (CellRegistered, carried in its
 * desired state's `cell` section); the agent's `--cell-subnet` option (`configured`) only while none is known.
 */
export function cellSubnetsOf(state: CellState, cellId: string, configured: readonly string[] = []): string[] {
  const registered = state.cell[cellId]?.subnet;
  return registered !== undefined && CIDR.test(registered) ? [registered] : [...configured];
}

/** Validates every address (each distinct one once), subnet and port range; nft would resolve a bad address as a name. */
function validateRules(rules: RuleSet, overlayCidr: string): void {
  if (!CIDR.test(overlayCidr)) throw new InvalidRuleError(`invalid overlay CIDR ${overlayCidr}`);
  const seen = new Set<string>();
  const address = (ip: string, what: string) => {
    if (seen.has(ip)) return;
    if (!IPV4.test(ip)) throw new InvalidRuleError(`invalid ${what} address ${JSON.stringify(ip)}`);
    seen.add(ip);
  };
  for (const ip of rules.local) address(ip, 'local');
  for (const c of rules.subnets)
    if (!isSubnetOf(c, overlayCidr)) throw new InvalidRuleError(`invalid cell subnet ${JSON.stringify(c)} (a CIDR inside ${overlayCidr})`);
  for (const a of rules.allows) {
    address(a.src, 'source');
    address(a.dst, 'destination');
    if (!Number.isInteger(a.startPort) || !Number.isInteger(a.endPort) || a.startPort < 1 || a.endPort > 65535 || a.startPort > a.endPort) {
      throw new InvalidRuleError(`invalid ports in ${JSON.stringify(a)}`);
    }
  }
}

/** nft refuses comments over 128 bytes; ours stay well below, in a character set that needs no quoting. */
const COMMENT_MAX = 120;

/**
 * A safe nft comment: only letters, digits and ` _.:/>+,=-` (anything else becomes `_`: no quote or backslash can
 * end the string), cut to COMMENT_MAX bytes with a trailing `~` when cut.
 */
export function commentText(text: string): string {
  const safe = text.replace(/[^A-Za-z0-9 _.:/>+,=-]/g, '_');
  return safe.length <= COMMENT_MAX ? safe : `${safe.slice(0, COMMENT_MAX - 1)}~`;
}

/** The comment of an allowed flow's element: `web->api tcp/8080-8081` (source app, destination app, policy). */
export const commentOf = (a: Allow): string => commentText(`${a.srcApp}->${a.dstApp} ${a.policy}`);

/**
 * The table's stamp, kept in set `applied` so a restarted agent can read it: one element per stamped revision (key
 * = the revision, comment = revision and hash); the highest is the stamp. A change adds the new element without
 * deleting the old ones — in nftables a transaction with any element deletion costs ~13 ms more (measured: one
 * added element 5.5 ms, with one deleted 18–20 ms) — and old ones go in a transaction that deletes anyway, or once
 * STAMP_KEEP have piled up.
 */
const stampComment = (s: AppliedStamp): string => commentText(`netfold revision=${s.revision} hash=${s.hash}`);
const STAMP_SET = /set applied \{[^}]*\}/;
const STAMP = /comment "netfold revision=(\d+) hash=([0-9a-f]+)"/g;
/** Stamp elements kept before a transaction deletes the old ones even without other deletions. */
export const STAMP_KEEP = 32;
/** The key of a revision's stamp element (a 32-bit mark). */
const stampKey = (revision: number): number => revision % 2 ** 32;

/** The stamp recorded in a listing of the table (`nft list table inet netfold`), or null when it has none. */
export function stampOf(listing: string): AppliedStamp | null {
  const block = STAMP_SET.exec(listing)?.[0] ?? '';
  let best: AppliedStamp | null = null;
  for (const m of block.matchAll(STAMP)) {
    const revision = Number(m[1]);
    if (!best || revision > best.revision) best = { revision, hash: m[2]! };
  }
  return best;
}

function validateStamp(s: AppliedStamp): void {
  if (!Number.isSafeInteger(s.revision) || s.revision < 0 || !/^[0-9a-f]{1,64}$/.test(s.hash)) throw new InvalidRuleError(`invalid stamp ${JSON.stringify(s)}`);
}

/**
 * The nftables table, complete, as one `nft -f` transaction: create-if-missing, delete, create — so the swap is
 * atomic and an existing table (e.g. after an agent restart) is replaced without a gap. Every address is validated
 * first: nft would resolve an invalid one as a host name.
 *
 * Forwarded traffic: established/related accepted first; IPv6 goes to `forward_ipv6`, which denies it (ICMPv6
 * errors excepted: netfold allows IPv4 flows only); IPv4 to an address that is neither a local container nor in the
 * cell's subnets, or from outside the overlay, is not container-to-container and is accepted; the rest is denied
 * unless an allow set has it.
 */
export function renderNft(rules: RuleSet, overlayCidr: string, stamp?: AppliedStamp): string {
  validateRules(rules, overlayCidr);
  if (stamp) validateStamp(stamp);
  const ranges = new Map<string, Allow[]>();
  for (const a of rules.allows) {
    if (a.startPort === a.endPort) continue;
    const k = `${a.src}|${a.dst}|${a.protocol}`;
    for (const b of ranges.get(k) ?? []) {
      if (a.startPort <= b.endPort && b.startPort <= a.endPort) throw new InvalidRuleError(`overlapping port ranges for ${k}: normalize with normalizeAllows`);
    }
    (ranges.get(k) ?? ranges.set(k, []).get(k)!).push(a);
  }
  const set = (name: string, type: string, elements: string[], interval: boolean) => [
    `  set ${name} {`,
    `    type ${type}`,
    ...(interval ? ['    flags interval'] : []),
    ...(elements.length > 0 ? [`    elements = { ${elements.join(', ')} }`] : []),
    '  }',
  ];
  const of = (p: Protocol, ranged: boolean) => rules.allows.filter((a) => a.protocol === p && (a.startPort !== a.endPort) === ranged).map(elementWithComment);
  const tuple = 'ipv4_addr . ipv4_addr . inet_service';
  return [
    `table inet ${TABLE}`,
    `delete table inet ${TABLE}`,
    `table inet ${TABLE} {`,
    ...set('applied', 'mark', stamp ? [`${stampKey(stamp.revision)} comment "${stampComment(stamp)}"`] : [], false),
    ...set('local', 'ipv4_addr', rules.local, false),
    ...set('subnets', 'ipv4_addr', rules.subnets, true),
    ...set('allow_tcp', tuple, of('tcp', false), false),
    ...set('allow_udp', tuple, of('udp', false), false),
    ...set('range_tcp', tuple, of('tcp', true), true),
    ...set('range_udp', tuple, of('udp', true), true),
    '  chain forward_ipv6 {',
    '    icmpv6 type { destination-unreachable, packet-too-big, time-exceeded, parameter-problem } accept',
    '    meta l4proto tcp reject with tcp reset',
    '    reject with icmpx admin-prohibited',
    '  }',
    '  chain forward {',
    '    type filter hook forward priority filter - 1; policy accept;',
    '    ct state established,related accept',
    '    meta nfproto ipv6 goto forward_ipv6',
    '    ip daddr != @local ip daddr != @subnets accept',
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
const elementWithComment = (a: Allow): string => `${elementOf(a)} comment "${commentOf(a)}"`;

/**
 * A rule set indexed by nft set and element (with its comment: a flow whose comment changes is deleted and added
 * again), to compute the next change without rebuilding the last index; with the stamp loaded with it.
 */
export type RuleIndex = {
  local: Set<string>;
  subnets: Set<string>;
  allows: Map<string, Allow>;
  stamp?: AppliedStamp;
  /** Keys of the stamp elements in set `applied` (the stamp's and older ones not deleted yet). */
  stampKeys: number[];
};

export function indexRules(rules: RuleSet, stamp?: AppliedStamp, stampKeys: number[] = stamp ? [stampKey(stamp.revision)] : []): RuleIndex {
  const index: RuleIndex = {
    local: new Set(rules.local),
    subnets: new Set(rules.subnets),
    allows: new Map(rules.allows.map((a) => [`${setOf(a)}|${elementWithComment(a)}`, a])),
    stampKeys,
  };
  if (stamp) index.stamp = stamp;
  return index;
}

/**
 * The changes from one rule set (indexed) to the next as one nft transaction of set element additions and
 * deletions (the table's chains never change), or null when there is nothing to do; with the next set's index.
 * A new stamp replaces the old one in the same transaction. Only what is added needs validating: what is loaded
 * already was.
 */
export function renderNftChanges(prev: RuleIndex, next: RuleSet, overlayCidr: string, stamp?: AppliedStamp): { text: string | null; index: RuleIndex } {
  const index = indexRules(next, stamp ?? prev.stamp, prev.stampKeys);
  const addedLocal = next.local.filter((ip) => !prev.local.has(ip));
  const removedLocal = [...prev.local].filter((ip) => !index.local.has(ip));
  const addedSubnets = next.subnets.filter((c) => !prev.subnets.has(c));
  const removedSubnets = [...prev.subnets].filter((c) => !index.subnets.has(c));
  const added: Allow[] = [];
  for (const [k, a] of index.allows) if (!prev.allows.has(k)) added.push(a);
  const removed: Allow[] = [];
  for (const [k, a] of prev.allows) if (!index.allows.has(k)) removed.push(a);
  validateRules({ local: addedLocal, subnets: addedSubnets, allows: added }, overlayCidr);
  if (stamp) validateStamp(stamp);
  const group = (list: Allow[], render: (a: Allow) => string) => {
    const by = new Map<string, string[]>();
    for (const a of list) (by.get(setOf(a)) ?? by.set(setOf(a), []).get(setOf(a))!).push(render(a));
    return [...by].sort(([x], [y]) => (x < y ? -1 : 1));
  };
  const lines: string[] = [];
  // Deletions first: an element and its replacement (the same one with a new comment, or one overlapping it in an
  // interval set) are then added back. The transaction is atomic.
  for (const [set, els] of group(removed, elementOf)) lines.push(`delete element inet ${TABLE} ${set} { ${els.join(', ')} }`);
  if (removedLocal.length > 0) lines.push(`delete element inet ${TABLE} local { ${removedLocal.join(', ')} }`);
  if (removedSubnets.length > 0) lines.push(`delete element inet ${TABLE} subnets { ${removedSubnets.join(', ')} }`);
  for (const [set, els] of group(added, elementWithComment)) lines.push(`add element inet ${TABLE} ${set} { ${els.join(', ')} }`);
  if (addedLocal.length > 0) lines.push(`add element inet ${TABLE} local { ${addedLocal.join(', ')} }`);
  if (addedSubnets.length > 0) lines.push(`add element inet ${TABLE} subnets { ${addedSubnets.join(', ')} }`);
  // The stamp moves only with a change of the rules: a state whose rules equal the loaded ones needs no load.
  if (lines.length === 0) {
    if (prev.stamp) index.stamp = prev.stamp;
    else delete index.stamp;
  } else if (stamp && (stamp.revision !== prev.stamp?.revision || stamp.hash !== prev.stamp?.hash)) {
    const key = stampKey(stamp.revision);
    const deletes = lines.some((l) => l.startsWith('delete '));
    // Old stamp elements go when this transaction deletes anyway, when too many piled up, or when the key is taken.
    const old = deletes || prev.stampKeys.length >= STAMP_KEEP || prev.stampKeys.includes(key) ? prev.stampKeys : [];
    if (old.length > 0) lines.push(`delete element inet ${TABLE} applied { ${old.join(', ')} }`);
    lines.push(`add element inet ${TABLE} applied { ${key} comment "${stampComment(stamp)}" }`);
    index.stampKeys = [...prev.stampKeys.filter((k) => !old.includes(k)), key];
  }
  return { text: lines.length > 0 ? lines.join('\n') + '\n' : null, index };
}
