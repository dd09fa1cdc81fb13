// Answering DNS queries for the discovery zone, on the wire format (dns-packet). Pure: bytes in, bytes out.
//   <name>.<zone>          A: the live instances, at most `maxAnswers` (32) of them, a random selection, TTL
//                          configurable (0 by default)
//   <index>.<name>.<zone>  A: that instance
//   ANY for a known name   one HINFO "RFC8482" record (RFC 8482: minimal answers to ANY), never the A set
//   unknown name in zone   NXDOMAIN with the zone's SOA in authority; known name, other type: NOERROR, no answers
//   outside the zone       REFUSED (no recursion, no amplification)
//   malformed              FORMERR when the header can be read, otherwise dropped (null)
// A records point at the question's name (compression: 16 bytes each). Over UDP an answer that does not fit (512
// bytes, or the client's EDNS size up to 1232, DNS Flag Day 2020) is truncated (TC, no answers): resolvers retry
// over TCP. So a UDP answer is at most 512 bytes, or 1232 for a client that asked for more with EDNS.
import { isIPv4 } from 'node:net';
import * as dnsPacket from 'dns-packet';

export type Resolve = (fqdn: string) => { ip: string }[];

export type DnsOptions = { zone: string; ttl: number; random: () => number; /** Most A records per answer (default 32). */ maxAnswers?: number };

export const MAX_UDP = 512;
/** The largest UDP answer whatever the client's EDNS says (DNS Flag Day 2020: no IP fragmentation). */
export const MAX_EDNS = 1232;
export const DEFAULT_MAX_ANSWERS = 32;

const RCODES = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;
type Rcode = keyof typeof RCODES;

function soa(zone: string, ttl: number): dnsPacket.Answer {
  return {
    type: 'SOA',
    name: zone,
    ttl,
    data: { mname: `ns.${zone}`, rname: `hostmaster.${zone}`, serial: 1, refresh: 60, retry: 60, expire: 3600, minimum: ttl },
  } as dnsPacket.Answer;
}

/** `count` elements of `list` chosen at random, in random order (a partial Fisher-Yates shuffle). */
function pick<T>(list: readonly T[], count: number, random: () => number): T[] {
  const a = [...list];
  const n = Math.min(count, a.length);
  for (let i = 0; i < n; i++) {
    const j = i + Math.floor(random() * (a.length - i));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  a.length = n;
  return a;
}

/** RFC 8482 section 4.2: one synthesized HINFO record instead of everything the name has. */
function hinfo(name: string, ttl: number): dnsPacket.Answer {
  return { type: 'HINFO', name, ttl, data: { cpu: 'RFC8482', os: '' } } as dnsPacket.Answer;
}

function reply(
  id: number,
  rcode: Rcode,
  q: dnsPacket.Question[] | undefined,
  rd: boolean,
  parts: { answers?: dnsPacket.Answer[]; authorities?: dnsPacket.Answer[] } = {},
): dnsPacket.Packet {
  return {
    id,
    type: 'response',
    // dns-packet encodes the rcode from the low 4 bits of `flags`
    flags: dnsPacket.AUTHORITATIVE_ANSWER | (rd ? dnsPacket.RECURSION_DESIRED : 0) | RCODES[rcode],
    rcode,
    questions: q ?? [],
    answers: parts.answers ?? [],
    authorities: parts.authorities ?? [],
  } as dnsPacket.Packet;
}

/** Decodes, answers and encodes one query; `transport` decides the size limit. Never throws. */
export function answer(query: Buffer, resolve: Resolve, opts: DnsOptions, transport: 'udp' | 'tcp'): { bytes: Buffer; rcode: string } | null {
  if (query.length < 12) return null;
  const id = query.readUInt16BE(0);
  const isResponse = (query[2]! & 0x80) !== 0;
  if (isResponse) return null; // never answer answers (reflection loops)
  let packet: dnsPacket.Packet;
  try {
    packet = dnsPacket.decode(query);
  } catch {
    return encode(reply(id, 'FORMERR', [], false), transport, MAX_UDP);
  }
  const rd = ((packet.flags ?? 0) & dnsPacket.RECURSION_DESIRED) !== 0;
  const questions = packet.questions ?? [];
  const opcode = (query[2]! >> 3) & 0x0f;
  if (opcode !== 0) return encode(reply(id, 'NOTIMP', questions, rd), transport, MAX_UDP);
  if (questions.length !== 1) return encode(reply(id, 'FORMERR', questions, rd), transport, MAX_UDP);
  const opt = (packet.additionals ?? []).find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
  const limit = Math.min(MAX_EDNS, Math.max(MAX_UDP, opt?.udpPayloadSize ?? MAX_UDP));
  const q = questions[0]!;
  const name = q.name.toLowerCase().replace(/\.$/, '');
  const zone = opts.zone;
  if (q.class !== 'IN' && (q.class as string) !== 'ANY') return encode(reply(id, 'REFUSED', questions, rd), transport, limit);
  if (name !== zone && !name.endsWith(`.${zone}`)) return encode(reply(id, 'REFUSED', questions, rd), transport, limit);
  const isAny = (q.type as string) === 'ANY';
  if (name === zone) {
    if (isAny) return encode(reply(id, 'NOERROR', questions, rd, { answers: [hinfo(q.name, opts.ttl)] }), transport, limit);
    if (q.type === 'SOA') return encode(reply(id, 'NOERROR', questions, rd, { answers: [soa(zone, opts.ttl)] }), transport, limit);
    return encode(reply(id, 'NOERROR', questions, rd, { authorities: [soa(zone, opts.ttl)] }), transport, limit);
  }
  const instances = resolve(name);
  if (instances.length === 0) return encode(reply(id, 'NXDOMAIN', questions, rd, { authorities: [soa(zone, opts.ttl)] }), transport, limit);
  if (isAny) return encode(reply(id, 'NOERROR', questions, rd, { answers: [hinfo(q.name, opts.ttl)] }), transport, limit);
  if (q.type !== 'A') return encode(reply(id, 'NOERROR', questions, rd, { authorities: [soa(zone, opts.ttl)] }), transport, limit);
  const ips = pick(instances, opts.maxAnswers ?? DEFAULT_MAX_ANSWERS, opts.random).map((i) => i.ip);
  return encodeA(reply(id, 'NOERROR', questions, rd), ips, opts.ttl, transport, limit);
}

/** Over UDP: a truncated, empty response (TC) to a query, for rate-limited sources; null when there is nothing to answer. */
export function truncated(query: Buffer): Buffer | null {
  if (query.length < 12 || (query[2]! & 0x80) !== 0) return null;
  let packet: dnsPacket.Packet;
  try {
    packet = dnsPacket.decode(query);
  } catch {
    return null;
  }
  const rd = ((packet.flags ?? 0) & dnsPacket.RECURSION_DESIRED) !== 0;
  const p = reply(query.readUInt16BE(0), 'NOERROR', packet.questions ?? [], rd);
  return dnsPacket.encode({ ...p, flags: (p.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE });
}

/** The header and question encoded by dns-packet, then the A records, each naming the question by a pointer. */
function encodeA(p: dnsPacket.Packet, ips: string[], ttl: number, transport: 'udp' | 'tcp', limit: number): { bytes: Buffer; rcode: string } {
  const valid = ips.filter((ip) => isIPv4(ip));
  const head = dnsPacket.encode(p);
  const bytes = Buffer.alloc(head.length + 16 * valid.length);
  head.copy(bytes);
  bytes.writeUInt16BE(valid.length, 6); // ANCOUNT
  let o = head.length;
  for (const ip of valid) {
    bytes.writeUInt16BE(0xc000 | 12, o); // the question's name, right after the 12-byte header
    bytes.writeUInt16BE(1, o + 2); // A
    bytes.writeUInt16BE(1, o + 4); // IN
    bytes.writeUInt32BE(ttl, o + 6);
    bytes.writeUInt16BE(4, o + 10);
    const octets = ip.split('.');
    for (let k = 0; k < 4; k++) bytes[o + 12 + k] = Number(octets[k]);
    o += 16;
  }
  if (transport === 'udp' && bytes.length > limit) return encode(p, transport, 0);
  return { bytes, rcode: 'NOERROR' };
}

function encode(p: dnsPacket.Packet, transport: 'udp' | 'tcp', limit: number): { bytes: Buffer; rcode: string } {
  let bytes = dnsPacket.encode(p);
  if (transport === 'udp' && bytes.length > limit) {
    bytes = dnsPacket.encode({ ...p, answers: [], authorities: [], flags: (p.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE });
  }
  return { bytes, rcode: (p as { rcode?: string }).rcode ?? 'NOERROR' };
}
