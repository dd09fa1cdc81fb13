// Answering DNS queries for the discovery zone, on the wire format (dns-packet). Pure: bytes in, bytes out.
//   <name>.<zone>          A: every live instance, shuffled, TTL configurable (0 by default)
//   <index>.<name>.<zone>  A: that instance
//   unknown name in zone   NXDOMAIN with the zone's SOA in authority; known name, other type: NOERROR, no answers
//   outside the zone       REFUSED (no recursion, no amplification)
//   malformed              FORMERR when the header can be read, otherwise dropped (null)
// Over UDP an answer that does not fit (512 bytes, or the client's EDNS size up to 4096) is truncated (TC).
import * as dnsPacket from 'dns-packet';

export type Resolve = (fqdn: string) => { ip: string }[];

export type DnsOptions = { zone: string; ttl: number; random: () => number };

export const MAX_UDP = 512;
const MAX_EDNS = 4096;

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

function shuffle<T>(list: T[], random: () => number): T[] {
  const a = [...list];
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [a[i], a[j]] = [a[j]!, a[i]!];
  }
  return a;
}

function reply(id: number, rcode: Rcode, q: dnsPacket.Question[] | undefined, rd: boolean, parts: { answers?: dnsPacket.Answer[]; authorities?: dnsPacket.Answer[] } = {}): dnsPacket.Packet {
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
  const opcode = ((query[2]! >> 3) & 0x0f);
  if (opcode !== 0) return encode(reply(id, 'NOTIMP', questions, rd), transport, MAX_UDP);
  if (questions.length !== 1) return encode(reply(id, 'FORMERR', questions, rd), transport, MAX_UDP);
  const opt = (packet.additionals ?? []).find((a) => a.type === 'OPT') as { udpPayloadSize?: number } | undefined;
  const limit = Math.min(MAX_EDNS, Math.max(MAX_UDP, opt?.udpPayloadSize ?? MAX_UDP));
  const q = questions[0]!;
  const name = q.name.toLowerCase().replace(/\.$/, '');
  const zone = opts.zone;
  if (q.class !== 'IN' && (q.class as string) !== 'ANY') return encode(reply(id, 'REFUSED', questions, rd), transport, limit);
  if (name !== zone && !name.endsWith(`.${zone}`)) return encode(reply(id, 'REFUSED', questions, rd), transport, limit);
  if (name === zone) {
    if (q.type === 'SOA') return encode(reply(id, 'NOERROR', questions, rd, { answers: [soa(zone, opts.ttl)] }), transport, limit);
    return encode(reply(id, 'NOERROR', questions, rd, { authorities: [soa(zone, opts.ttl)] }), transport, limit);
  }
  const instances = resolve(name);
  if (instances.length === 0) return encode(reply(id, 'NXDOMAIN', questions, rd, { authorities: [soa(zone, opts.ttl)] }), transport, limit);
  if (q.type !== 'A' && (q.type as string) !== 'ANY') return encode(reply(id, 'NOERROR', questions, rd, { authorities: [soa(zone, opts.ttl)] }), transport, limit);
  const answers = shuffle(instances, opts.random).map((i) => ({ type: 'A', name: q.name, ttl: opts.ttl, data: i.ip }) as dnsPacket.Answer);
  return encode(reply(id, 'NOERROR', questions, rd, { answers }), transport, limit);
}

function encode(p: dnsPacket.Packet, transport: 'udp' | 'tcp', limit: number): { bytes: Buffer; rcode: string } {
  let bytes = dnsPacket.encode(p);
  if (transport === 'udp' && bytes.length > limit) {
    bytes = dnsPacket.encode({ ...p, answers: [], authorities: [], flags: (p.flags ?? 0) | dnsPacket.TRUNCATED_RESPONSE });
  }
  return { bytes, rcode: (p as { rcode?: string }).rcode ?? 'NOERROR' };
}
