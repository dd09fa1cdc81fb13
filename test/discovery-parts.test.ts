// The discovery service's parts, each alone and without NATS: the expiry policy and its periodic check (an injected
// clock and a hand-fed connection status stream), the records follower's handling of watch entries, TCP framing,
// the DNS server on real sockets with a static resolver and a stopped clock, and the HTTP lookup through inject.
import t from 'tap';
import { Writable } from 'node:stream';
import { createSocket, type Socket } from 'node:dgram';
import { connect as tcpConnect } from 'node:net';
import { pino } from 'pino';
import * as dnsPacket from 'dns-packet';
import { DiscoveryIndex } from '../services/discovery/records.ts';
import { ExpiryPolicy, type ConnectionStatus, expiryCheckIntervalOf, startExpiry } from '../services/discovery/expiry.ts';
import { applyRecordEntry, type RecordEntry } from '../services/discovery/follower.ts';
import { MAX_TCP_BUFFER, framed, startDnsServer, takeFrames } from '../services/discovery/dns-server.ts';
import { buildHttpLookup, registrationName } from '../services/discovery/http.ts';
import { Registry } from '../runtime/metrics.ts';
import { silentLogger } from '../runtime/logger.ts';
import { eventually } from './harness/nats.ts';
import { tcpQuery } from './harness/dns.ts';

const ZONE = 'apps.internal';

/** A logger whose lines (parsed) land in `lines`. */
function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const log = pino(
    { level: 'debug' },
    new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    }),
  );
  return { log, lines };
}

/** A connection status stream fed by hand, as `nc.status()` would be. */
function statusFeed() {
  const queue: ConnectionStatus[] = [];
  let wake: (() => void) | undefined;
  let ended = false;
  const statuses: AsyncIterable<ConnectionStatus> = {
    async *[Symbol.asyncIterator]() {
      for (;;) {
        while (queue.length > 0) yield queue.shift()!;
        if (ended) return;
        await new Promise<void>((r) => (wake = r));
      }
    },
  };
  const push = (type: string) => {
    queue.push({ type });
    wake?.();
  };
  return { statuses, push, end: () => ((ended = true), wake?.()) };
}

const entry = (key: string, operation: RecordEntry['operation'], value: string = ''): RecordEntry => ({ key, operation, value: new TextEncoder().encode(value) });

t.test('expiry policy: connection events and the clock decide when cells may expire', async (t) => {
  const policy = new ExpiryPolicy(1000);
  t.ok(policy.mayExpire(0), 'connected from the start: may expire');
  t.same({ connected: policy.connected, pausedUntil: policy.pausedUntil }, { connected: true, pausedUntil: 0 });
  policy.disconnected();
  t.notOk(policy.mayExpire(5_000), 'disconnected: never');
  t.notOk(policy.mayExpire(1e12), 'however long the outage');
  t.equal(policy.reconnected(10_000), 11_000, 'reconnected at 10 s: paused until one threshold later');
  t.ok(policy.connected);
  t.notOk(policy.mayExpire(10_000), 'right after reconnecting: not yet');
  t.notOk(policy.mayExpire(10_999), 'within the threshold: not yet');
  t.ok(policy.mayExpire(11_000), 'one threshold after reconnecting: again');
  policy.disconnected();
  t.equal(policy.reconnected(11_500), 12_500, 'another outage: paused from its own reconnect');
  policy.disconnected();
  t.notOk(policy.mayExpire(20_000), 'a disconnect during the pause: still never');
  policy.reconnected(20_000);
  policy.reconnected(20_400);
  t.equal(policy.pausedUntil, 21_400, 'a second reconnect restarts the pause');
  t.notOk(policy.mayExpire(21_000));
  t.ok(policy.mayExpire(21_400));
  t.equal(expiryCheckIntervalOf(180_000), 1000, 'checked every second at the default threshold');
  t.equal(expiryCheckIntervalOf(1000), 250);
  t.equal(expiryCheckIntervalOf(100), 50, 'never more often than every 50 ms');
});

t.test('expiry: silent cells dropped, counted and logged, paused by the connection stream', async (t) => {
  let clock = 0;
  const index = new DiscoveryIndex(1000);
  const feed = statusFeed();
  const { log, lines } = capturingLogger();
  const expiry = startExpiry({ index, thresholdMs: 1000, statuses: feed.statuses, now: () => clock, log });
  t.teardown(() => (expiry.stop(), feed.end()));
  index.put('cell-1', { [`web.${ZONE}`]: ['10.0.0.1'] }, 0);
  index.put('cell-2', { [`web.${ZONE}`]: ['10.0.0.2'] }, 0);

  clock = 1000;
  t.same(expiry.expireNow(), [], 'at the threshold: not yet (silent for longer than it)');
  clock = 1500;
  index.put('cell-1', { [`web.${ZONE}`]: ['10.0.0.1'] }, clock); // a heartbeat
  clock = 1001 + 500;
  t.same(expiry.expireNow(), ['cell-2'], 'the silent cell goes, the talking one stays');
  t.equal(expiry.expired, 1);
  t.match(lines.at(-1), { msg: 'discovery-records-expired', cells: ['cell-2'] });
  const logged = lines.length;
  t.same(expiry.expireNow(), [], 'nothing more to drop');
  t.equal(lines.length, logged, 'and nothing logged for it');

  feed.push('disconnect');
  await eventually(() => (!expiry.state.connected ? true : undefined), 5000, 'the disconnect is seen');
  clock += 60_000;
  t.same(expiry.expireNow(), [], 'nothing expires while disconnected');
  t.equal(index.cells, 1);
  feed.push('reconnect');
  await eventually(() => (expiry.state.connected ? true : undefined), 5000, 'the reconnect is seen');
  t.equal(expiry.state.pausedUntil, clock + 1000);
  t.match(lines.at(-1), { msg: 'discovery-expiry-paused', pausedUntil: new Date(clock + 1000).toISOString() });
  t.same(expiry.expireNow(), [], 'nor during one threshold after reconnecting');
  feed.push('pingTimer'); // other status events change nothing
  clock += 1000;
  t.same(expiry.expireNow(), ['cell-1'], 'then the cell silent all along goes');
  t.equal(expiry.expired, 2);
  t.equal(index.lookup(`web.${ZONE}`).length, 0);
});

t.test('records follower: a put indexes the parsed record, a delete or purge removes it, an unreadable one changes nothing', async (t) => {
  const index = new DiscoveryIndex(1000);
  const record = (ips: string[]) => JSON.stringify({ cellId: 'cell-1', at: '2024-01-01T00:00:00.000Z', names: { [`web.${ZONE}`]: ips } });
  t.equal(applyRecordEntry(index, entry('cell-1', 'PUT', record(['10.0.0.1'])), 5), 'put');
  t.same(index.lookup(`web.${ZONE}`), [{ ip: '10.0.0.1', cellId: 'cell-1' }]);
  t.equal(index.heardAt('cell-1'), 5, 'heard of at the clock given');
  t.equal(applyRecordEntry(index, entry('cell-1', 'PUT', 'not json'), 9), 'invalid');
  t.same(index.lookup(`web.${ZONE}`), [{ ip: '10.0.0.1', cellId: 'cell-1' }], 'an unreadable record keeps the last good one');
  t.equal(index.heardAt('cell-1'), 5, 'and does not count as hearing of the cell');
  t.equal(applyRecordEntry(index, entry('cell-1', 'PUT', record(['10.0.0.2', 'bogus'])), 10), 'put', 'a name with a non-IPv4 value is left out, the record kept');
  t.same(index.lookup(`web.${ZONE}`), []);
  t.equal(applyRecordEntry(index, entry('cell-1', 'PUT', record(['10.0.0.2'])), 11), 'put');
  t.equal(applyRecordEntry(index, entry('cell-2', 'PUT', record(['10.0.0.3'])), 11), 'put');
  t.equal(applyRecordEntry(index, entry('cell-1', 'DEL'), 12), 'removed');
  t.same(index.lookup(`web.${ZONE}`), [{ ip: '10.0.0.3', cellId: 'cell-2' }]);
  t.equal(applyRecordEntry(index, entry('cell-2', 'PURGE'), 13), 'removed');
  t.equal(index.cells, 0);
  t.equal(applyRecordEntry(index, entry('cell-9', 'DEL'), 14), 'removed', 'removing an unknown cell is harmless');
});

t.test('TCP framing: whole messages after a two-byte length, the rest kept for the next chunk', async (t) => {
  const a = Buffer.from('hello');
  const b = Buffer.from('dns');
  t.same(framed(a), Buffer.from([0, 5, ...a]));
  const both = Buffer.concat([framed(a), framed(b)]);
  t.same(takeFrames(both).frames, [a, b], 'two in one chunk');
  t.equal(takeFrames(both).rest.length, 0);
  for (let cut = 0; cut <= both.length; cut++) {
    const first = takeFrames(both.subarray(0, cut));
    const second = takeFrames(Buffer.concat([first.rest, both.subarray(cut)]));
    t.same([...first.frames, ...second.frames], [a, b], `cut at ${cut}`);
  }
  t.same(takeFrames(Buffer.from([0, 0, 0, 1, 7])).frames, [Buffer.alloc(0), Buffer.from([7])], 'an empty message is a message');
  t.same(takeFrames(Buffer.from([0])), { frames: [], rest: Buffer.from([0]) }, 'half a length');
  t.equal(MAX_TCP_BUFFER, 2 + 65_535, 'room for the largest message and its length');
});

type Decoded = ReturnType<typeof dnsPacket.decode>;
const query = (name: string, type: dnsPacket.RecordType = 'A', id = 1) => dnsPacket.encode({ id, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] });

function udpClient(): Promise<Socket> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    s.bind(0, '127.0.0.1', () => resolve(s));
  });
}

t.test('DNS server: UDP and TCP on one port, the answer cap, the per-source limit and its counts, no NATS', async (t) => {
  const hosts = Array.from({ length: 50 }, (_, i) => ({ ip: `10.0.0.${i + 1}` }));
  const metrics = new Registry();
  const clock = 1_000_000; // stopped: no token comes back
  const dns = await startDnsServer({
    host: '127.0.0.1',
    port: 0,
    resolve: (fqdn) => (fqdn === `web.${ZONE}` ? hosts : []),
    answers: { zone: ZONE, ttl: 0, random: Math.random, maxAnswers: 5 },
    rateLimit: { ratePerSecond: 10, burst: 3, slip: 2, maxSources: 10, now: () => clock },
    metrics,
    log: silentLogger(),
  });
  t.teardown(() => dns.stop());
  t.ok(dns.port > 0, 'a port chosen for both transports');

  const client = await udpClient();
  t.teardown(() => client.close());
  const received: Decoded[] = [];
  client.on('message', (m) => received.push(dnsPacket.decode(m)));
  const decided = () => Object.values(dns.stats.answers).reduce((a, b) => a + b, 0) + dns.stats.rateLimited.dropped + dns.stats.rateLimited.slipped + dns.stats.dropped;
  for (let i = 0; i < 10; i++) client.send(query(`web.${ZONE}`, 'A', i), dns.port, '127.0.0.1');
  client.send(Buffer.from([1, 2, 3]), dns.port, '127.0.0.1'); // unreadable: dropped before the limiter
  await eventually(() => (decided() >= 11 ? true : undefined), 5000, '11 packets decided');
  t.same(dns.stats.answers, { NOERROR: 3 }, 'the burst answered');
  t.same(dns.stats.rateLimited, { dropped: 4, slipped: 3 }, 'then every 2nd slipped');
  t.equal(dns.stats.dropped, 1, 'the unreadable packet');
  await eventually(() => (received.length >= 6 ? true : undefined), 5000, '6 datagrams back');
  t.equal(received.filter((p) => p.answers!.length === 5).length, 3, 'answers capped at 5');
  t.equal(received.filter((p) => p.flag_tc && p.answers!.length === 0).length, 3, 'slipped: truncated and empty');

  // TCP: not limited; two queries in one write and one trickled byte by byte are both answered.
  t.equal(dnsPacket.decode(await tcpQuery(dns.port, query(`web.${ZONE}`))).answers!.length, 5, 'the limited source still answered over TCP');
  t.match(dnsPacket.decode(await tcpQuery(dns.port, query(`nope.${ZONE}`))), { rcode: 'NXDOMAIN' });
  const replies = await new Promise<Decoded[]>((resolve, reject) => {
    const sock = tcpConnect(dns.port, '127.0.0.1');
    let buf: Buffer = Buffer.alloc(0);
    const out: Decoded[] = [];
    sock.on('data', (d: Buffer) => {
      const { frames, rest } = takeFrames(Buffer.concat([buf, d]));
      buf = rest;
      for (const f of frames) out.push(dnsPacket.decode(f));
      if (out.length === 3) {
        sock.destroy();
        resolve(out);
      }
    });
    sock.once('error', reject);
    sock.write(Buffer.concat([framed(query(`web.${ZONE}`, 'A', 101)), framed(query(`web.${ZONE}`, 'AAAA', 102))]));
    const third = framed(query(`x.${ZONE}`, 'A', 103));
    let i = 0;
    const trickle = () => (i < third.length ? sock.write(third.subarray(i, ++i), trickle) : undefined);
    trickle();
  });
  t.match(replies, [{ id: 101, rcode: 'NOERROR' }, { id: 102, rcode: 'NOERROR', answers: [] }, { id: 103, rcode: 'NXDOMAIN', answers: [] }], 'answered in order');
  t.equal(replies[0]!.answers!.length, 5);

  const text = metrics.render();
  t.match(text, /netfold_dns_queries_total\{rcode="NOERROR",transport="udp"\} 3/);
  t.match(text, /netfold_dns_queries_total\{rcode="NOERROR",transport="tcp"\} 3/);
  t.match(text, /netfold_dns_queries_total\{rcode="NXDOMAIN",transport="tcp"\} 2/);
  t.match(text, /netfold_dns_dropped_total 1/);
  t.match(text, /netfold_dns_rate_limited_total\{action="slipped"\} 3/);
  t.match(text, /netfold_dns_rate_limited_total\{action="dropped"\} 4/);

  const closed = await new Promise<boolean>((resolve) => {
    const sock = tcpConnect(dns.port, '127.0.0.1');
    sock.on('close', () => resolve(true));
    sock.on('error', () => undefined);
    // the start of the largest message, then more than it can hold: closed without waiting for the rest
    sock.write(Buffer.concat([Buffer.from([0xff, 0xff]), Buffer.alloc(100, 0xff)]), () => sock.write(Buffer.alloc(MAX_TCP_BUFFER, 0xff)));
  });
  t.ok(closed, 'a connection buffering more than one message is closed');
});

t.test('HTTP lookup: names completed into the zone, hosts with their cells, 404 when none', async (t) => {
  t.equal(registrationName('web', ZONE), `web.${ZONE}`);
  t.equal(registrationName('WEB.', ZONE), `web.${ZONE}`, 'lower case, no trailing dot');
  t.equal(registrationName(`0.web.${ZONE}`, ZONE), `0.web.${ZONE}`, 'already in the zone');
  t.equal(registrationName(ZONE, ZONE), ZONE, 'the apex');
  t.equal(registrationName('apps.internal.evil', ZONE), `apps.internal.evil.${ZONE}`);

  const index = new DiscoveryIndex(1000);
  index.put('cell-2', { [`web.${ZONE}`]: ['10.0.0.2'] }, 0);
  index.put('cell-1', { [`web.${ZONE}`]: ['10.0.0.1'], [`0.web.${ZONE}`]: ['10.0.0.1'] }, 0);
  const metrics = new Registry();
  metrics.counter('netfold_test_total', 'a metric of the registry').inc();
  const http = buildHttpLookup({ index, zone: ZONE, metrics });
  t.teardown(() => http.close());
  const web = await http.inject({ method: 'GET', url: '/v1/registration/Web' });
  t.equal(web.statusCode, 200);
  t.same(web.json(), { name: `web.${ZONE}`, hosts: [{ ip_address: '10.0.0.1', cell_id: 'cell-1' }, { ip_address: '10.0.0.2', cell_id: 'cell-2' }] });
  t.same((await http.inject({ method: 'GET', url: `/v1/registration/0.web.${ZONE}.` })).json(), { name: `0.web.${ZONE}`, hosts: [{ ip_address: '10.0.0.1', cell_id: 'cell-1' }] });
  const nope = await http.inject({ method: 'GET', url: '/v1/registration/nope' });
  t.equal(nope.statusCode, 404);
  t.same(nope.json(), { code: 'not-found', error: `no instances of nope.${ZONE}` });
  t.same((await http.inject({ method: 'GET', url: '/healthz' })).json(), { ok: true, cells: 2 });
  const m = await http.inject({ method: 'GET', url: '/metrics' });
  t.match(m.headers['content-type'], /text\/plain/);
  t.match(m.body, /netfold_test_total 1/);
});
