// Several gateway instances (each with its own connection, model and in-process locks) write the same source
// app at once: optimistic concurrency on the aggregate subject must lose no update and never exceed the quota.
import t from 'tap';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { EventLog } from '../runtime/event-log.ts';

const P = '/networking/v1/external/policies';

t.test('concurrent writers on one source app', async (t) => {
  const nats = await startNats(t);
  const gateways = [
    await startGateway(t, nats, { policyQuota: 20 }),
    await startGateway(t, nats, { policyQuota: 20 }),
    await startGateway(t, nats, { policyQuota: 20 }),
  ];
  const [g0] = gateways;
  await g0!.intake('registerApp', { appId: 'src', name: 'src', spaceId: 's1', orgId: 'o1' });
  await g0!.intake('registerApp', { appId: 'dst', name: 'dst', spaceId: 's1', orgId: 'o1' });
  const dev = await g0!.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] });

  await t.test('admin: 90 distinct policies at once, none lost', async (t) => {
    const results = await Promise.all(
      Array.from({ length: 90 }, (_, i) => gateways[i % 3]!.http('POST', P, { body: { policies: [cfPolicy('src', 'dst', 'tcp', 1000 + i)] } })),
    );
    t.same(
      results.map((r) => r.status),
      Array(90).fill(200),
    );
    for (const g of gateways) await g.writer.follower.waitFor(Math.max(...results.map((r) => r.body.revision)));
    const listed = await g0!.http('GET', `${P}?source_id=src`);
    t.equal(listed.body.total_policies, 90);
    for (const g of gateways.slice(1)) t.same((await g.http('GET', `${P}?source_id=src`)).body.policies, listed.body.policies, 'every instance agrees');
  });

  await t.test('developer: quota 20 per source app is never exceeded', async (t) => {
    const results = await Promise.all(
      Array.from({ length: 60 }, (_, i) => gateways[i % 3]!.http('POST', P, { token: dev, body: { policies: [cfPolicy('dst', 'src', 'udp', 2000 + i)] } })),
    );
    const ok = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 403);
    t.equal(ok.length, 20, 'exactly the quota was granted');
    t.equal(refused.length, 40);
    t.ok(refused.every((r) => r.body.code === 'quota-exceeded'));
    for (const g of gateways) await g.writer.follower.waitFor(Math.max(...ok.map((r) => r.body.revision)));
    t.equal((await g0!.http('GET', `${P}?source_id=dst`)).body.total_policies, 20);
    let recorded = 0;
    for await (const rec of new EventLog(g0!.bus).read(1)) {
      if ('event' in rec && rec.event.type === 'PoliciesCreated' && rec.event.data.sourceAppId === 'dst') recorded += rec.event.data.policies.length;
    }
    t.equal(recorded, 20, 'the log holds exactly 20 created policies for the source');
  });

  const conflicts = gateways.reduce((n, g) => n + g.writer.writer.stats.conflicts, 0);
  t.ok(conflicts > 0, `the instances really raced (${conflicts} append conflicts resolved)`);
});

t.test('concurrent writers leasing ranges and addresses: every cell its own range, every container its own address', async (t) => {
  const nats = await startNats(t);
  const gateways = [await startGateway(t, nats), await startGateway(t, nats), await startGateway(t, nats)];
  const [g0] = gateways;
  // Twelve cells join at once through three writers: the fold settles each race in log order and the loser is told
  // to retry (lease-conflict, retryable), as a joining agent does.
  const join = async (i: number) => {
    for (let attempt = 0; ; attempt++) {
      const r = await gateways[i % 3]!.intake('registerCell', { cellId: `host-${i}`, underlay: `192.0.2.${i + 1}` });
      if (r.ok || !r.retryable || attempt > 20) return r;
    }
  };
  const joined = await Promise.all(Array.from({ length: 12 }, (_, i) => join(i)));
  t.ok(
    joined.every((r) => r.ok),
    'every cell joined',
  );
  const ranges = joined.map((r) => (r.ok ? r.subnet : undefined));
  t.equal(new Set(ranges).size, 12, 'twelve distinct ranges');
  t.same([...ranges].sort(), Array.from({ length: 12 }, (_, i) => `10.255.${i}.0/24`).sort(), 'the twelve lowest /24s');
  await g0!.intake('registerApp', { appId: 'app-1', name: 'one', spaceId: 's1', orgId: 'o1' });
  const start = async (i: number) => {
    for (let attempt = 0; ; attempt++) {
      const r = await gateways[i % 3]!.intake('startContainer', { containerId: `c-${i}`, appId: 'app-1', cellId: 'host-0', instanceIndex: i });
      if (r.ok || !r.retryable || attempt > 20) return r;
    }
  };
  const started = await Promise.all(Array.from({ length: 20 }, (_, i) => start(i)));
  t.ok(
    started.every((r) => r.ok),
    'every container started',
  );
  const ips = started.map((r) => (r.ok ? r.ip : undefined));
  t.equal(new Set(ips).size, 20, 'twenty distinct addresses');
  const net = ranges[0]!.replace(/\.0\/24$/, ''); // host-0's lease
  t.same([...ips].sort(), Array.from({ length: 20 }, (_, i) => `${net}.${i + 2}`).sort(), "the twenty lowest of host-0's lease");
});
