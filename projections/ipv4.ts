// IPv4 addresses and CIDR ranges: the one pattern and the arithmetic every part uses (validation of commands and
// events, the deciders' "who may hold an IP", the folds). Pure.

export const IPV4_PATTERN = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
export const CIDR_PATTERN = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}\/([0-9]|[12][0-9]|3[0-2])$/;

/** A dotted quad (already validated) as an unsigned 32-bit number; no allocation (it runs per fold and decision). */
function ipToInt(ip: string): number {
  let n = 0;
  let octet = 0;
  for (let i = 0; i < ip.length; i++) {
    const c = ip.charCodeAt(i);
    if (c === 46) {
      n = n * 256 + octet;
      octet = 0;
    } else if (c >= 48 && c <= 57) octet = octet * 10 + (c - 48);
    else break; // the '/' of a CIDR ends the address
  }
  return n * 256 + octet;
}

export function intToIp(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

type Range = { readonly first: number; readonly size: number; readonly bits: number };

/** Ranges parsed lately: cells' ranges are checked against every registration and start (bounded: emptied when full). */
const ranges = new Map<string, Range>();

/** First address and size of a CIDR range. */
export function cidrRange(cidr: string): Range {
  const known = ranges.get(cidr);
  if (known) return known;
  const slash = cidr.indexOf('/');
  const bits = Number(cidr.slice(slash + 1));
  const size = 2 ** (32 - bits);
  const first = bits === 0 ? 0 : (ipToInt(cidr) & (2 ** 32 - size)) >>> 0;
  if (ranges.size >= 16_384) ranges.clear();
  const range = { first, size, bits };
  ranges.set(cidr, range);
  return range;
}

export function cidrContains(cidr: string, ip: string): boolean {
  const { first, size } = cidrRange(cidr);
  const n = ipToInt(ip);
  return n >= first && n < first + size;
}

/** Is `inner` wholly inside `outer`? */
export function cidrWithin(outer: string, inner: string): boolean {
  const o = cidrRange(outer);
  const i = cidrRange(inner);
  return i.first >= o.first && i.first + i.size <= o.first + o.size;
}

export function cidrsOverlap(a: string, b: string): boolean {
  const x = cidrRange(a);
  const y = cidrRange(b);
  return x.first < y.first + y.size && y.first < x.first + x.size;
}

/** The network or broadcast address of a range of 4 or more addresses: never a container's. */
export function isNetworkOrBroadcast(cidr: string, ip: string): boolean {
  const { first, size } = cidrRange(cidr);
  if (size < 4) return false;
  const n = ipToInt(ip);
  return n === first || n === first + size - 1;
}

/** True when the CIDR has no host bits set (10.255.1.0/24, not 10.255.1.7/24). */
export function isCanonicalCidr(cidr: string): boolean {
  return ipToInt(cidr) === cidrRange(cidr).first;
}

/** The `index`-th (0-based) subnet of prefix length `bits` inside `outer`; undefined past its end. */
export function nthSubnet(outer: string, bits: number, index: number): string | undefined {
  const o = cidrRange(outer);
  const size = 2 ** (32 - bits);
  if (bits < o.bits || index < 0 || (index + 1) * size > o.size) return undefined;
  return `${intToIp(o.first + index * size)}/${bits}`;
}

/**
 * The first subnet of prefix length `bits` inside `outer` that overlaps none of `taken` (CIDRs, any sizes), lowest
 * address first; undefined when none is left. Deterministic: the same ranges give the same answer in every process.
 */
export function firstFreeSubnet(outer: string, bits: number, taken: readonly string[]): string | undefined {
  const o = cidrRange(outer);
  const size = 2 ** (32 - bits);
  if (bits < o.bits || bits > 32) return undefined;
  const ranges = taken.map(cidrRange).sort((a, b) => a.first - b.first);
  let candidate = o.first;
  for (const r of ranges) {
    if (candidate + size > o.first + o.size) return undefined;
    if (r.first + r.size <= candidate) continue;
    if (candidate + size <= r.first) break;
    candidate = Math.ceil((r.first + r.size - o.first) / size) * size + o.first;
  }
  return candidate + size <= o.first + o.size ? `${intToIp(candidate)}/${bits}` : undefined;
}

/** The gateway of a container range: its first host address (the cell's side of every container's link). */
export function gatewayOf(cidr: string): string {
  return intToIp(cidrRange(cidr).first + 1);
}

/**
 * The lowest address of `cidr` a container may be given: not the network, gateway or broadcast address, and not one
 * `taken` says is held. Undefined when the range is full.
 */
export function firstFreeAddress(cidr: string, taken: (ip: string) => boolean): string | undefined {
  const { first, size } = cidrRange(cidr);
  for (let n = first + 2; n < first + size - 1; n++) {
    const ip = intToIp(n);
    if (!taken(ip)) return ip;
  }
  return undefined;
}
