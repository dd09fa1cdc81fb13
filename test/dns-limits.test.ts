// DNS hardening: minimal ANY answers (RFC 8482), at most 32 A records per answer, a bounded amplification factor,
// and per-source response rate limiting on UDP — the pure parts without NATS, then the service over real UDP
// (two source addresses, 127.0.0.1 and 127.0.0.2) with its clock stopped, so the counts are exact.
import t from 'tap';
import { createSocket, type Socket } from 'node:dgram';
import * as dnsPacket from 'dns-packet';
import { DEFAULT_MAX_ANSWERS, MAX_EDNS, MAX_UDP, answer, truncated } from '../services/discovery/dns.ts';
import { ResponseRateLimiter } from '../services/discovery/rate-limit.ts';
import { startNats, eventually } from './harness/nats.ts';
import { startDiscovery, defaultDiscoveryConfig } from '../services/discovery/service.ts';
import { Registry } from '../runtime/metrics.ts';
import { Kvm } from '@nats-io/kv';
import { DISCOVERY_BUCKET } from '../runtime/subjects.ts';
import { tcpQuery } from './harness/dns.ts';

const ZONE = 'apps.internal';
const instancesOf = (n: number) => Array.from({ length: n }, (_, i) => ({ ip: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }));
const opts = { zone: ZONE, ttl: 0, random: Math.random };
const q = (name: string, type: string = 'A', edns?: number, id = 1) =>
  dnsPacket.encode({
    id,
    type: 'query',
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: type as dnsPacket.RecordType, name }],
    ...(edns ? { additionals: [{ type: 'OPT', name: '.', udpPayloadSize: edns } as unknown as dnsPacket.Answer] } : {}),
  });

t.test('ANY is answered minimally (RFC 8482): one HINFO, never the A set', async (t) => {
  const resolve = () => instancesOf(100);
  const r = answer(q('web.apps.internal', 'ANY'), resolve, opts, 'tcp')!;
  const p = dnsPacket.decode(r.bytes);
  t.match(p, { rcode: 'NOERROR' });
  t.match(p.answers, [{ type: 'HINFO', name: 'web.apps.internal', data: { cpu: 'RFC8482', os: '' } }]);
  t.equal(p.answers!.length, 1, 'a single record, over TCP too');
  t.ok(r.bytes.length < 100, `small (${r.bytes.length} bytes)`);
  t.match(dnsPacket.decode(answer(q('apps.internal', 'ANY'), resolve, opts, 'udp')!.bytes), { rcode: 'NOERROR', answers: [{ type: 'HINFO' }] }, 'the apex too');
  t.match(dnsPacket.decode(answer(q('nope.apps.internal', 'ANY'), () => [], opts, 'udp')!.bytes), { rcode: 'NXDOMAIN', answers: [] }, 'unknown name: still NXDOMAIN');
});

t.test('at most 32 A records per answer, a random selection, readable by a decoder', async (t) => {
  const all = instancesOf(1000).map((i) => i.ip);
  const seen = new Set<string>();
  for (let k = 0; k < 20; k++) {
    const p = dnsPacket.decode(answer(q('Big.apps.internal'), () => instancesOf(1000), opts, 'tcp')!.bytes);
    const ips = p.answers!.map((a) => (a as { data: string }).data);
    t.equal(ips.length, DEFAULT_MAX_ANSWERS, 'capped over TCP too');
    t.equal(new Set(ips).size, ips.length, 'no instance twice');
    t.ok(ips.every((ip) => all.includes(ip)), 'only live instances');
    t.ok(p.answers!.every((a) => a.type === 'A' && a.name === 'Big.apps.internal' && (a as { ttl: number }).ttl === 0), 'A records of the name as asked');
    for (const ip of ips) seen.add(ip);
  }
  t.ok(seen.size > 100, `different selections (${seen.size} distinct instances over 20 answers)`);
  const few = dnsPacket.decode(answer(q('web.apps.internal'), () => instancesOf(3), opts, 'udp')!.bytes);
  t.same(few.answers!.map((a) => (a as { data: string }).data).sort(), ['10.0.0.0', '10.0.0.1', '10.0.0.2'], 'fewer than the cap: all of them');
  const capped = dnsPacket.decode(answer(q('web.apps.internal'), () => instancesOf(50), { ...opts, maxAnswers: 5 }, 'tcp')!.bytes);
  t.equal(capped.answers!.length, 5, 'a configured cap');
});

t.test('amplification: UDP answer bytes / query bytes is bounded (was 3,733 / 54 = 69x)', async (t) => {
  let worst = { ratio: 0, what: '' };
  for (const name of ['a.apps.internal', 'web.apps.internal', 'a-much-longer-application-name.apps.internal']) {
    for (const edns of [undefined, 512, 1232, 4096, 65535]) {
      for (const n of [1, 10, 28, 29, 30, 32, 33, 40, 70, 110, 120, 1000]) {
        const query = q(name, 'A', edns);
        const r = answer(query, () => instancesOf(n), opts, 'udp')!;
        const limit = edns ? Math.min(MAX_EDNS, Math.max(MAX_UDP, edns)) : MAX_UDP;
        if (r.bytes.length > limit) t.fail(`${name} edns=${edns} n=${n}: ${r.bytes.length} bytes > ${limit}`);
        const ratio = r.bytes.length / query.length;
        if (ratio > worst.ratio) worst = { ratio, what: `${name}, EDNS ${edns ?? 'none'}, ${n} instances: ${query.length} -> ${r.bytes.length} bytes` };
      }
    }
  }
  t.comment(`worst amplification: ${worst.ratio.toFixed(1)}x (${worst.what})`);
  t.ok(worst.ratio <= 16, `at most 16x (${worst.ratio.toFixed(1)}x: ${worst.what})`);
  // with the cap raised, the EDNS ceiling (1232 bytes, not 4096) still bounds an answer
  const big = answer(q('a.apps.internal', 'A', 4096), () => instancesOf(1000), { ...opts, maxAnswers: 1000 }, 'udp')!;
  t.ok(big.bytes.length <= MAX_EDNS, `cap raised to 1000: still <= ${MAX_EDNS} bytes (${big.bytes.length}, TC)`);
  t.match(dnsPacket.decode(big.bytes), { flag_tc: true, answers: [] });
});

t.test('rate limiter: token bucket per source, slip, bounded and idle-evicted', async (t) => {
  let now = 1_000_000;
  const rrl = new ResponseRateLimiter({ ratePerSecond: 100, burst: 100, slip: 2, maxSources: 3, now: () => now });
  const tally = (source: string, n: number) => {
    const c = { answer: 0, slip: 0, drop: 0 };
    for (let i = 0; i < n; i++) c[rrl.check(source)] += 1;
    return c;
  };
  t.same(tally('192.0.2.1', 1000), { answer: 100, slip: 450, drop: 450 }, '1,000 in one instant: the burst answered, then every 2nd slips');
  t.same(tally('192.0.2.2', 10), { answer: 10, slip: 0, drop: 0 }, 'another source is unaffected');
  now += 500;
  t.same(tally('192.0.2.1', 100), { answer: 50, slip: 25, drop: 25 }, 'half a second later: 50 more');
  now += 10_000;
  t.same(tally('192.0.2.1', 150), { answer: 100, slip: 25, drop: 25 }, 'refilled to the burst, not beyond');

  t.equal(rrl.size, 1, 'the idle source was evicted (its bucket was full again)');
  tally('a', 1);
  tally('b', 1);
  tally('c', 1);
  t.equal(rrl.size, 3, 'at most maxSources');
  t.same(tally('c', 200), { answer: 99, slip: 50, drop: 51 }, 'a busy source');
  tally('d', 1);
  t.equal(rrl.size, 3, 'still at most maxSources: the least recently used went');

  const never = new ResponseRateLimiter({ ratePerSecond: 1, burst: 1, slip: 0, maxSources: 10, now: () => now });
  t.same([never.check('x'), never.check('x'), never.check('x')], ['answer', 'drop', 'drop'], 'slip 0: all dropped');
  const always = new ResponseRateLimiter({ ratePerSecond: 1, burst: 1, slip: 1, maxSources: 10, now: () => now });
  t.same([always.check('x'), always.check('x'), always.check('x')], ['answer', 'slip', 'slip'], 'slip 1: all truncated');
  const off = new ResponseRateLimiter({ ratePerSecond: 0, burst: 1, slip: 2, maxSources: 10, now: () => now });
  t.ok(Array.from({ length: 1000 }, () => off.check('x')).every((v) => v === 'answer'), 'rate 0: off');
  t.match(dnsPacket.decode(truncated(q('web.apps.internal', 'A', undefined, 99))!), { id: 99, type: 'response', flag_tc: true, answers: [], questions: [{ name: 'web.apps.internal' }] }, 'the slip answer: TC, empty');
});

function udpClient(address: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = createSocket('udp4');
    s.once('error', reject);
    s.bind(0, address, () => resolve(s));
  });
}

t.test('discovery over UDP: 1,000 queries from one source in one instant; TCP and other sources unaffected', async (t) => {
  const nats = await startNats(t);
  await nats.connect('dns-limits'); // the admin creates the buckets
  const agent = await nats.connectAs('agent_cell-1'); // the records of cell-1, written as its agent writes them
  const kv = await new Kvm(agent.js).create(DISCOVERY_BUCKET, { history: 1 });
  const names: Record<string, string[]> = { 'web.apps.internal': instancesOf(200).map((i) => i.ip) };
  await kv.put('cell-1', JSON.stringify({ cellId: 'cell-1', names }));
  const clock = 5_000_000; // stopped: no token comes back during the test
  const metrics = new Registry();
  const discovery = await startDiscovery({ bus: await nats.connectAs('discovery'), log: nats.log, config: { ...defaultDiscoveryConfig, dnsPort: 0, httpPort: 0 }, now: () => clock, metrics });
  t.teardown(() => discovery.stop());
  await eventually(() => (discovery.index.lookup('web.apps.internal').length === 200 ? true : undefined), 10_000, 'records indexed');

  const attacker = await udpClient('127.0.0.1');
  t.teardown(() => attacker.close());
  const got = { answered: 0, truncated: 0, other: 0, maxBytes: 0 };
  attacker.on('message', (m) => {
    const p = dnsPacket.decode(m);
    got.maxBytes = Math.max(got.maxBytes, m.length);
    if (p.flag_tc && p.answers!.length === 0) got.truncated += 1;
    else if (p.answers!.length > 0) got.answered += 1;
    else got.other += 1;
  });
  // In batches, each once the server has decided on the previous one (the kernel's socket buffer would drop a
  // thousand datagrams sent at once); the clock does not move, so this is one instant for the limiter.
  const decided = () => Object.values(discovery.stats.answers).reduce((a, b) => a + b, 0) + discovery.stats.rateLimited.dropped + discovery.stats.rateLimited.slipped;
  const query = q('web.apps.internal', 'A', 1232);
  for (let sent = 0; sent < 1000; ) {
    for (let i = 0; i < 50; i++, sent++) attacker.send(query, discovery.dnsPort, '127.0.0.1');
    const target = sent;
    await eventually(() => (decided() >= target ? true : undefined), 10_000, `${target} queries decided`);
  }
  t.same(discovery.stats.rateLimited, { dropped: 450, slipped: 450 }, 'the server: 100 answered, then 450 slipped and 450 dropped');
  t.equal(discovery.stats.answers.NOERROR, 100);
  await eventually(() => (got.answered + got.truncated + got.other >= 550 ? true : undefined), 10_000, 'the client received 550 datagrams');
  t.same({ answered: got.answered, truncated: got.truncated, other: got.other }, { answered: 100, truncated: 450, other: 0 }, 'the client: 100 answers, 450 truncated (retry over TCP), 450 nothing');
  t.ok(got.maxBytes <= MAX_EDNS, `no datagram over ${MAX_EDNS} bytes (${got.maxBytes})`);

  const neighbour = await udpClient('127.0.0.2');
  t.teardown(() => neighbour.close());
  let neighbourAnswers = 0;
  neighbour.on('message', (m) => (dnsPacket.decode(m).answers!.length > 0 ? (neighbourAnswers += 1) : undefined));
  for (let i = 0; i < 20; i++) neighbour.send(query, discovery.dnsPort, '127.0.0.1');
  await eventually(() => (neighbourAnswers >= 20 ? true : undefined), 10_000, 'the other source answered');
  t.equal(neighbourAnswers, 20, 'another source address is unaffected');

  // TCP, where the handshake proves the source, is not rate-limited: the limited source still gets answers there.
  for (let i = 0; i < 5; i++) {
    const a = await tcpQuery(discovery.dnsPort, query);
    t.equal(dnsPacket.decode(a).answers!.length, DEFAULT_MAX_ANSWERS, `TCP query ${i + 1}: answered (32 of 200)`);
  }
  const text = metrics.render();
  t.match(text, /netfold_dns_rate_limited_total\{action="dropped"\} 450/);
  t.match(text, /netfold_dns_rate_limited_total\{action="slipped"\} 450/);
});
