// From a cell's desired state to the rules its dataplane enforces: a pure expansion and a deterministic nftables
// rendering. Enforcement is at the destination, default deny for traffic from the overlay to local containers.

export { type Allow, type Protocol, type RuleDiff, type RuleSet, RuleExpander, allows, expandRules, normalizeAllows } from '../../projections/flows.ts';
import type { Allow, Protocol, RuleDiff, RuleSet } from '../../projections/flows.ts';
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
/**
 * Stamp elements kept before a transaction deletes the old ones even without other deletions: a run of additions
 * pays the deletion once in STAMP_KEEP changes (with 32, one change in 32 — 3%, the p99 of additions — paid it).
 */
export const STAMP_KEEP = 256;
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
  // one pass over the flows, each comment built once per (source app, destination app, policy)
  const [allowTcp, allowUdp, rangeTcp, rangeUdp] = [[], [], [], []] as string[][];
  const comment = commentMemo((text) => ` comment "${text}"`);
  for (const a of rules.allows) {
    const single = a.startPort === a.endPort;
    const element = `${a.src} . ${a.dst} . ${single ? a.startPort : `${a.startPort}-${a.endPort}`}${comment(a)}`;
    (single ? (a.protocol === 'tcp' ? allowTcp : allowUdp) : a.protocol === 'tcp' ? rangeTcp : rangeUdp)!.push(element);
  }
  const of = (p: Protocol, ranged: boolean) => (ranged ? (p === 'tcp' ? rangeTcp : rangeUdp) : p === 'tcp' ? allowTcp : allowUdp)!;
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

const setOf = (a: Allow): string =>
  a.startPort === a.endPort ? (a.protocol === 'tcp' ? 'allow_tcp' : 'allow_udp') : a.protocol === 'tcp' ? 'range_tcp' : 'range_udp';
const elementOf = (a: Allow): string => `${a.src} . ${a.dst} . ${a.startPort === a.endPort ? a.startPort : `${a.startPort}-${a.endPort}`}`;

/** commentOf (through `as`), remembered per (source app, destination app, policy): a table has few distinct comments. */
function commentMemo(as: (comment: string) => string = (c) => c): (a: Allow) => string {
  const memo = new Map<string, Map<string, Map<string, string>>>();
  return (a) => {
    const byDest = memo.get(a.srcApp) ?? memo.set(a.srcApp, new Map()).get(a.srcApp)!;
    const byPolicy = byDest.get(a.dstApp) ?? byDest.set(a.dstApp, new Map()).get(a.dstApp)!;
    let text = byPolicy.get(a.policy);
    if (text === undefined) byPolicy.set(a.policy, (text = as(commentOf(a))));
    return text;
  };
}

/**
 * What a table holds, set by set: each element as `nft list` prints it (without its comment) → its comment ('' when
 * none). What the driver expects is kept in this form, and a listing is read back into it (`readTable`).
 */
export type TableElements = Map<string, Map<string, string>>;

/** The sets of netfold's table (what `renderNft` declares). */
const SETS = ['applied', 'local', 'subnets', 'allow_tcp', 'allow_udp', 'range_tcp', 'range_udp'] as const;
/** How nft lists a stamp element's key (a mark): `0x0000002a`. */
const listedMark = (key: number): string => `0x${key.toString(16).padStart(8, '0')}`;
/** How nft lists an interval set's CIDR: a /32 as the address alone. */
const listedCidr = (cidr: string): string => (cidr.endsWith('/32') ? cidr.slice(0, -3) : cidr);

/** The stamp elements of set `applied` (as listed → comment) a whole load stamped with `stamp` makes. */
export function stampElementsOf(stamp?: AppliedStamp): Map<string, string> {
  return new Map(stamp ? [[listedMark(stampKey(stamp.revision)), stampComment(stamp)]] : []);
}

/**
 * What a whole load of `rules` leaves in the table, with `stamps` as set `applied` (the same map, not a copy).
 * Built in slices, yielding to the event loop between them (`pause`).
 */
export async function tableElementsOf(rules: RuleSet, stamps: Map<string, string>, pause: () => Promise<void>): Promise<TableElements> {
  const sets: TableElements = new Map(SETS.map((s) => [s, new Map<string, string>()]));
  sets.set('applied', stamps);
  for (const ip of rules.local) sets.get('local')!.set(ip, '');
  for (const c of rules.subnets) sets.get('subnets')!.set(listedCidr(c), '');
  const comment = commentMemo();
  let count = 0;
  for (const a of rules.allows) {
    sets.get(setOf(a))!.set(elementOf(a), comment(a));
    if (++count % 5000 === 0) await pause();
  }
  return sets;
}

/** Applies a difference to what a table holds (`elements`, changed in place). */
export function applyDiffTo(elements: TableElements, diff: RuleDiff): void {
  for (const a of diff.removed) elements.get(setOf(a))!.delete(elementOf(a));
  for (const ip of diff.local.removed) elements.get('local')!.delete(ip);
  for (const c of diff.subnets.removed) elements.get('subnets')!.delete(listedCidr(c));
  for (const a of diff.added) elements.get(setOf(a))!.set(elementOf(a), commentOf(a));
  for (const ip of diff.local.added) elements.get('local')!.set(ip, '');
  for (const c of diff.subnets.added) elements.get('subnets')!.set(listedCidr(c), '');
}

/**
 * A rule difference (RuleExpander) as one nft transaction of set element deletions and additions (the table's
 * chains never change), with the elements it touches (as listed: `keys`). The stamp moves in the same transaction;
 * old stamp elements are deleted when it deletes anyway, once STAMP_KEEP have piled up, or when the key is taken;
 * `commit` (once nft took it) updates `stamps`, the stamp elements loaded. Only what is added needs validating:
 * what is loaded already was.
 */
export function renderNftDiff(
  diff: RuleDiff,
  stamps: Map<string, string>,
  overlayCidr: string,
  stamp?: AppliedStamp,
): { text: string | null; keys: Array<[string, string]>; commit: () => void } {
  validateRules({ local: diff.local.added, subnets: diff.subnets.added, allows: diff.added }, overlayCidr);
  if (stamp) validateStamp(stamp);
  const deletes = new Map<string, string[]>();
  const adds = new Map<string, string[]>();
  const keys: Array<[string, string]> = [];
  // `listed`: the element as a listing shows it
  const change = (set: string, element: string, comment: string | null, listed = element) => {
    const into = comment === null ? deletes : adds;
    (into.get(set) ?? into.set(set, []).get(set)!).push(comment ? `${element} comment "${comment}"` : element);
    keys.push([set, listed]);
  };
  for (const a of diff.removed) change(setOf(a), elementOf(a), null);
  for (const ip of diff.local.removed) change('local', ip, null);
  for (const c of diff.subnets.removed) change('subnets', c, null, listedCidr(c));
  for (const a of diff.added) change(setOf(a), elementOf(a), commentOf(a));
  for (const ip of diff.local.added) change('local', ip, '');
  for (const c of diff.subnets.added) change('subnets', c, '', listedCidr(c));
  const lines: string[] = [];
  // Deletions first: an element and its replacement (the same one with a new comment, or one overlapping it in an
  // interval set) are then added back. The transaction is atomic.
  for (const [set, els] of deletes) lines.push(`delete element inet ${TABLE} ${set} { ${els.join(', ')} }`);
  for (const [set, els] of adds) lines.push(`add element inet ${TABLE} ${set} { ${els.join(', ')} }`);
  let commit = () => {};
  // The stamp moves only with a change of the rules.
  if (lines.length > 0 && stamp) {
    const key = listedMark(stampKey(stamp.revision));
    if (stamps.get(key) !== stampComment(stamp)) {
      const old = deletes.size > 0 || stamps.size >= STAMP_KEEP || stamps.has(key) ? [...stamps.keys()] : [];
      if (old.length > 0) lines.push(`delete element inet ${TABLE} applied { ${old.map(Number).join(', ')} }`);
      lines.push(`add element inet ${TABLE} applied { ${stampKey(stamp.revision)} comment "${stampComment(stamp)}" }`);
      for (const k of old) keys.push(['applied', k]);
      keys.push(['applied', key]);
      commit = () => {
        for (const k of old) stamps.delete(k);
        stamps.set(key, stampComment(stamp));
      };
    }
  }
  return { text: lines.length > 0 ? lines.join('\n') + '\n' : null, keys, commit };
}

/**
 * Reads a listing of the table (`nft list table inet netfold`) back: every element of a named set, handed to
 * `element(set, element, comment)` as TableElements keeps them, and the rest (`skeleton`: the listing without its
 * element lists — chains, set declarations), to compare with what was loaded. Yields to the event loop every few
 * thousand elements (`pause`), so a large table does not hold the agent up.
 */
export async function readTable(listing: string, element: (set: string, key: string, comment: string) => void, pause?: () => Promise<void>): Promise<string> {
  const skeleton: string[] = [];
  const ELEMENTS = /^[ \t]*elements = \{/gm;
  const SET = /set (\S+) \{/g;
  const ITEM = /\s*([^,"{}]*?)(?:\s+comment\s+"([^"]*)")?\s*([,}])/y;
  let at = 0;
  let count = 0;
  for (let m = ELEMENTS.exec(listing); m; m = ELEMENTS.exec(listing)) {
    let set = '';
    SET.lastIndex = at;
    for (let s = SET.exec(listing); s && s.index < m.index; s = SET.exec(listing)) set = s[1]!;
    skeleton.push(listing.slice(at, m.index));
    ITEM.lastIndex = m.index + m[0].length;
    for (;;) {
      const item = ITEM.exec(listing);
      if (!item) throw new InvalidRuleError(`unreadable elements of set ${set} at ${ITEM.lastIndex}`);
      element(set, item[1]!, item[2] ?? '');
      if (pause && ++count % 5000 === 0) await pause();
      if (item[3] === '}') break;
    }
    at = ITEM.lastIndex;
    const eol = listing.indexOf('\n', at);
    at = eol < 0 ? listing.length : eol + 1;
    ELEMENTS.lastIndex = at;
  }
  skeleton.push(listing.slice(at));
  return skeleton.join('');
}
