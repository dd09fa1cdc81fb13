// The discovery service against a real nats-server, fed by the real planner and agents (memory dataplane), queried
// with real resolvers: Node's dns.Resolver, dig, and raw dns-packet over UDP and TCP. Expiry uses an injected clock.
import t from 'tap';
import { Resolver } from 'node:dns/promises';
import { createSocket } from 'node:dgram';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as dnsPacket from 'dns-packet';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway } from './harness/gateway.ts';
import { startStack } from './harness/stack.ts';
import { startDiscovery, defaultDiscoveryConfig } from '../services/discovery/service.ts';
import { MAX_UDP } from '../services/discovery/dns.ts';
import { DiscoveryIndex } from '../services/discovery/records.ts';
import { tcpQuery } from './harness/dns.ts';
import { parseDiscoveryRecord } from '../projections/discovery-record.ts';

const exec = promisify(execFile);

function udpQuery(port: number, packet: Buffer, timeoutMs = 1000): Promise<Buffer | null> {
  return new Promise((resolve) => {
    const s = createSocket('udp4');
    const timer = setTimeout(() => {
      s.close();
      resolve(null);
    }, timeoutMs);
    s.once('message', (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m);
    });
    s.send(packet, port, '127.0.0.1');
  });
}


const query = (name: string, type: dnsPacket.RecordType = 'A', id = 42) => dnsPacket.encode({ id, type: 'query', flags: dnsPacket.RECURSION_DESIRED, questions: [{ type, name }] });

t.test('discovery: names follow containers; DNS semantics; expiry; outage; fuzz', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells('cell-1', 'cell-2');
  const stack = await startStack(t, nats, ['cell-1', 'cell-2'], { agent: { heartbeatMs: 100 } });
  let clock = Date.now();
  const discovery = await startDiscovery({ bus: await nats.connectAs('discovery'), log: nats.log, config: { ...defaultDiscoveryConfig, dnsPort: 0, httpPort: 0, expiryMs: 1000, rateLimit: 0 }, now: () => clock });
  // rateLimit 0: every query here comes from 127.0.0.1 with a stopped clock (the fuzz sends 3,000); the per-source
  // limit has its own test (dns-limits.test.ts).
  t.teardown(() => discovery.stop());
  const resolver = new Resolver({ timeout: 2000, tries: 1 });
  resolver.setServers([`127.0.0.1:${discovery.dnsPort}`]);
  const a4 = (name: string) => resolver.resolve4(name).then((ips) => ips.sort(), (err: { code: string }) => err.code);

  await gw.intake('registerApp', { appId: 'web', name: 'web', spaceId: 's', orgId: 'o' });
  await gw.intake('registerApp', { appId: 'big', name: 'Big', spaceId: 's', orgId: 'o' });
  await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
  await gw.intake('startContainer', { containerId: 'web-1', appId: 'web', cellId: 'cell-2', instanceIndex: 1, ip: '10.255.2.2' });

  await eventually(async () => ((await a4('web.apps.internal')).length === 2 ? true : undefined), 10_000, 'both web instances resolve');
  t.same(await a4('web.apps.internal'), ['10.255.1.2', '10.255.2.2'], 'app name: every instance');
  t.same(await a4('WEB.apps.internal'), ['10.255.1.2', '10.255.2.2'], 'case-insensitive');
  t.same(await a4('1.web.apps.internal'), ['10.255.2.2'], 'index: one instance');
  t.equal(await a4('nope.apps.internal'), 'ENOTFOUND', 'unknown name in the zone: NXDOMAIN');
  t.equal(await a4('example.com'), 'EREFUSED', 'outside the zone: REFUSED');
  t.equal(await resolver.resolve6('web.apps.internal').then(() => 'answered', (e: { code: string }) => e.code), 'ENODATA', 'AAAA for a known name: no answers');

  const nx = dnsPacket.decode((await udpQuery(discovery.dnsPort, query('nope.apps.internal')))!);
  t.match(nx, { id: 42, rcode: 'NXDOMAIN', flag_aa: true, flag_ra: false, authorities: [{ type: 'SOA', name: 'apps.internal' }] });
  const aaaa = dnsPacket.decode((await udpQuery(discovery.dnsPort, query('web.apps.internal', 'AAAA')))!);
  t.match(aaaa, { rcode: 'NOERROR', answers: [] });
  const ok = dnsPacket.decode((await udpQuery(discovery.dnsPort, query('web.apps.internal')))!);
  t.ok(ok.answers!.every((a) => (a as { ttl?: number }).ttl === 0 && a.type === 'A'), 'TTL 0');

  // dig, over UDP and TCP
  const dig = async (...args: string[]) => (await exec('dig', [`@127.0.0.1`, '-p', String(discovery.dnsPort), '+time=2', '+tries=1', ...args])).stdout;
  t.match(await dig('web.apps.internal', 'A', '+short').then((o) => o.trim().split('\n').sort()), ['10.255.1.2', '10.255.2.2']);
  t.match(await dig('+tcp', 'nope.apps.internal'), /status: NXDOMAIN/);
  t.match(await dig('example.com'), /status: REFUSED/);

  // HTTP lookup
  const http = await fetch(`${discovery.httpUrl}/v1/registration/web`);
  t.same(await http.json(), { name: 'web.apps.internal', hosts: [{ ip_address: '10.255.1.2', cell_id: 'cell-1' }, { ip_address: '10.255.2.2', cell_id: 'cell-2' }] });
  t.equal((await fetch(`${discovery.httpUrl}/v1/registration/nope`)).status, 404);

  // Records follow a stop.
  await gw.intake('stopContainer', { containerId: 'web-1' });
  await eventually(async () => ((await a4('web.apps.internal')).length === 1 ? true : undefined), 10_000, 'the stopped instance leaves');
  t.same(await a4('web.apps.internal'), ['10.255.1.2']);
  t.equal(await a4('1.web.apps.internal'), 'ENOTFOUND');

  // Truncation: 32 of 40 instances (the cap) do not fit in 512 bytes over UDP; TCP carries them.
  for (let i = 0; i < 40; i++) await gw.intake('startContainer', { containerId: `big-${i}`, appId: 'big', cellId: 'cell-1', instanceIndex: i, ip: `10.255.1.${100 + i}` });
  await eventually(async () => ((await discovery.index.lookup('big.apps.internal')).length === 40 ? true : undefined), 10_000, '40 instances indexed');
  const udpBig = (await udpQuery(discovery.dnsPort, query('big.apps.internal')))!;
  t.ok(udpBig.length <= MAX_UDP, `UDP answer within 512 bytes (${udpBig.length})`);
  t.match(dnsPacket.decode(udpBig), { flag_tc: true, answers: [] });
  t.equal(dnsPacket.decode(await tcpQuery(discovery.dnsPort, query('big.apps.internal'))).answers!.length, 32, 'TCP: 32 instances (--dns-max-answers)');
  t.equal((await a4('big.apps.internal')).length, 32, 'a real resolver falls back to TCP');

  // A silent cell's records expire; a talking one's do not.
  await stack.stopAgent('cell-2');
  await gw.intake('startContainer', { containerId: 'web-2', appId: 'web', cellId: 'cell-2', instanceIndex: 2, ip: '10.255.2.3' });
  // Time passes in steps shorter than the threshold, each once cell-1's heartbeat has been heard: cell-1 never
  // looks silent, cell-2 does after the threshold (the periodic check or an explicit one drops it).
  for (let step = 0; step < 4; step++) {
    clock += 600;
    await eventually(() => ((discovery.index.heardAt('cell-1') ?? 0) >= clock ? true : undefined), 5000, 'cell-1 heard of after the clock moved');
    discovery.expireNow();
  }
  await eventually(() => (discovery.index.heardAt('cell-2') === undefined ? true : undefined), 5000, 'cell-2 expired');
  t.equal(discovery.stats.expired, 1, 'the silent cell expired, and only it');
  t.ok(discovery.index.heardAt('cell-1') !== undefined, 'the talking cell stays');
  t.equal(await a4('big.apps.internal').then((r) => r.length), 32, 'the live cell still answers');

  // A NATS outage does not empty DNS: no expiry while disconnected, nor for one threshold after.
  await nats.server.kill();
  await eventually(() => (!discovery.expiry.connected ? true : undefined), 10_000, 'discovery noticed the outage');
  clock += 60_000;
  t.same(discovery.expireNow(), [], 'nothing expires while disconnected');
  t.ok(discovery.index.heardAt('cell-1') !== undefined && discovery.stats.expired === 1, 'the periodic check expired nothing either');
  t.equal(await a4('0.web.apps.internal').then((r) => r[0]), '10.255.1.2', 'answers during the outage');
  await nats.restart();
  await eventually(() => (discovery.expiry.connected ? true : undefined), 15_000, 'discovery reconnected');
  t.same(discovery.expireNow(), [], 'nothing expires during the threshold after reconnecting');
  t.equal(discovery.stats.expired, 1);
  t.equal(await a4('0.web.apps.internal').then((r) => r[0]), '10.255.1.2');

  // Fuzz: random and mutated packets never crash it; no answer exceeds 512 bytes.
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const valid = query('web.apps.internal');
  const packets: Buffer[] = [];
  for (let i = 0; i < 3000; i++) {
    let p: Buffer;
    if (i % 3 === 0) p = Buffer.from(Array.from({ length: Math.floor(rnd() * 600) }, () => Math.floor(rnd() * 256)));
    else {
      p = Buffer.from(valid);
      for (let k = 0; k < 1 + Math.floor(rnd() * 6); k++) p[Math.floor(rnd() * p.length)] = Math.floor(rnd() * 256);
      if (i % 3 === 2) p = p.subarray(0, Math.floor(rnd() * p.length));
    }
    packets.push(p);
  }
  const sock = createSocket('udp4');
  let answered = 0;
  sock.on('message', (r) => {
    answered++;
    if (r.length > MAX_UDP) t.fail(`an answer of ${r.length} bytes`);
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  for (let i = 0; i < packets.length; i += 100) {
    await Promise.all(packets.slice(i, i + 100).map((p) => new Promise<void>((r) => sock.send(p, discovery.dnsPort, '127.0.0.1', () => r()))));
    await new Promise((r) => setImmediate(r));
  }
  // the last answers: wait until a valid query sent after the fuzz is answered on the same socket
  const marker = query('web.apps.internal', 'A', 7777);
  const markerSeen = new Promise<void>((resolve) => sock.on('message', (r) => r.readUInt16BE(0) === 7777 && resolve()));
  sock.send(marker, discovery.dnsPort, '127.0.0.1');
  await markerSeen;
  sock.close();
  t.ok(answered > 100, `the server kept answering (${answered} of 3000 fuzz packets got an answer)`);
  t.same(await a4('0.web.apps.internal'), ['10.255.1.2'], 'still healthy after the fuzz');
  t.ok(discovery.stats.answers.FORMERR! > 0 && discovery.stats.dropped > 0, 'malformed packets were answered FORMERR or dropped');
});

t.test('discovery index: incremental puts, removes and expiry answer as a rebuild from the records would', async (t) => {
  const index = new DiscoveryIndex(1000);
  const records = new Map<string, { names: Record<string, string[]>; at: number }>();
  const expected = (fqdn: string) =>
    [...records.entries()]
      .flatMap(([cellId, r]) => (r.names[fqdn] ?? []).map((ip) => ({ ip, cellId })))
      .sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.cellId < b.cellId ? -1 : 1));
  let seed = 7;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const names = ['web.apps.internal', '0.web.apps.internal', 'db.apps.internal', 'api.apps.internal'];
  let now = 0;
  for (let step = 0; step < 500; step++) {
    now += rnd(200);
    const cellId = `cell-${rnd(5)}`;
    const kind = rnd(10);
    if (kind < 6) {
      const r: Record<string, string[]> = {};
      for (const n of names) if (rnd(2)) r[n] = [`10.0.${rnd(3)}.${rnd(4)}`];
      index.put(cellId, r, now);
      records.set(cellId, { names: r, at: now });
    } else if (kind < 8 && records.has(cellId)) {
      // a heartbeat: the same names again
      index.put(cellId, records.get(cellId)!.names, now);
      records.get(cellId)!.at = now;
    } else if (kind === 8) {
      index.remove(cellId);
      records.delete(cellId);
    } else {
      const dropped = index.expire(now);
      const stale = [...records.entries()].filter(([, r]) => now - r.at > 1000).map(([c]) => c).sort();
      t.same(dropped, stale, `step ${step}: expired cells`);
      for (const c of stale) records.delete(c);
    }
    for (const n of [...names, 'nope.apps.internal']) t.same(index.lookup(n), expected(n), `step ${step}: ${n}`);
  }
  const parsed = parseDiscoveryRecord('{"cellId":"cell-x","names":{"web.apps.internal":"not-a-list","api.apps.internal":["nope"],"db.apps.internal":["10.9.9.9"],"__proto__":["10.6.6.6"]}}');
  t.same(Object.keys(parsed!), ['db.apps.internal', '__proto__'], 'a "__proto__" name is an ordinary key');
  t.same(parseDiscoveryRecord('not json'), null);
  t.same(parseDiscoveryRecord('{"names":"x"}'), null);
  index.put('cell-x', parsed!, now);
  t.same(index.lookup('db.apps.internal').filter((h) => h.cellId === 'cell-x'), [{ ip: '10.9.9.9', cellId: 'cell-x' }], 'a malformed entry is ignored, the rest kept');
  t.same(index.lookup('web.apps.internal').filter((h) => h.cellId === 'cell-x'), []);
  t.same(index.lookup('api.apps.internal').filter((h) => h.cellId === 'cell-x'), [], 'only IPv4 addresses are names\' values');
});
