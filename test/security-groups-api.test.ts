// The gateway's Cloud Foundry v3 security groups over real HTTP against a real nats-server: shapes, validation
// (422 with every issue, 400 for a bad query), authorization (admins write; developers read the groups of their
// spaces; everyone else is refused), nothing appended on any refusal.
import t, { type Test } from 'tap';
import { EventLog } from '../runtime/event-log.ts';
import { startNats } from './harness/nats.ts';
import { startGateway, type GatewayFixture } from './harness/gateway.ts';

const SG = '/v3/security_groups';
const rule = { protocol: 'tcp', destination: '203.0.113.5', ports: '443' };

async function setup(t: Test) {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  return { gw, log: new EventLog(gw.bus) };
}

async function unchanged(t: Test, log: EventLog, work: () => Promise<void>) {
  const before = await log.lastSeq();
  await work();
  t.equal(await log.lastSeq(), before, 'nothing was appended');
}

const create = (gw: GatewayFixture, body: unknown) => gw.http('POST', SG, { body });

t.test('create, get, list, update, bind, unbind, delete: Cloud Foundry v3 shapes', async (t) => {
  const { gw, log } = await setup(t);
  const r = await create(gw, {
    name: 'public-api',
    rules: [rule, { protocol: 'icmp', destination: '0.0.0.0/0', type: 8, code: -1, description: 'ping', log: true }],
    globally_enabled: { staging: true },
    relationships: { running_spaces: { data: [{ guid: 's1' }] } },
  });
  t.equal(r.status, 201);
  const guid = r.body.guid as string;
  t.match(guid, /^[0-9a-f-]{36}$/, 'a server-chosen guid');
  t.equal(r.headers['x-netfold-revision'], String(await log.lastSeq()), 'the revision of the change');
  t.same(Object.keys(r.body).sort(), ['created_at', 'globally_enabled', 'guid', 'links', 'name', 'relationships', 'revision', 'rules', 'updated_at']);
  t.match(r.body, {
    name: 'public-api',
    globally_enabled: { running: false, staging: true },
    rules: [rule, { protocol: 'icmp', destination: '0.0.0.0/0', type: 8, code: -1, description: 'ping', log: true }],
    relationships: { running_spaces: { data: [{ guid: 's1' }] }, staging_spaces: { data: [] } },
    links: { self: { href: `${SG}/${guid}` } },
  });
  t.same((await gw.http('GET', `${SG}/${guid}`)).body, r.body, 'GET shows what POST answered');

  const patched = await gw.http('PATCH', `${SG}/${guid}`, { body: { name: 'api', globally_enabled: { running: true } } });
  t.equal(patched.status, 200);
  t.match(patched.body, { name: 'api', globally_enabled: { running: true, staging: true }, rules: [rule, {}] }, 'rules kept when not given');
  const again = await gw.http('PATCH', `${SG}/${guid}`, { body: { name: 'api' } });
  t.equal(again.status, 200);
  t.equal(again.headers['x-netfold-revision'], patched.headers['x-netfold-revision'], 'an update that changes nothing appends nothing');

  const bound = await gw.http('POST', `${SG}/${guid}/relationships/staging_spaces`, { body: { data: [{ guid: 's3' }, { guid: 's2' }] } });
  t.equal(bound.status, 200);
  t.same(bound.body, { data: [{ guid: 's2' }, { guid: 's3' }] }, 'every space now bound for staging');
  const unbound = await gw.http('DELETE', `${SG}/${guid}/relationships/staging_spaces/s2`);
  t.equal(unbound.status, 204);
  t.same((await gw.http('GET', `${SG}/${guid}`)).body.relationships.staging_spaces, { data: [{ guid: 's3' }] });
  await unchanged(t, log, async () => {
    t.equal((await gw.http('DELETE', `${SG}/${guid}/relationships/staging_spaces/s2`)).status, 204, 'unbinding again: nothing to do');
  });

  const del = await gw.http('DELETE', `${SG}/${guid}`);
  t.equal(del.status, 202);
  t.equal((await gw.http('GET', `${SG}/${guid}`)).status, 404);
  await unchanged(t, log, async () => {
    const r2 = await gw.http('DELETE', `${SG}/${guid}`);
    t.match(r2, { status: 404, body: { code: 'security-group-not-found' } });
  });
});

t.test('list: filters by name, guid and bound space; pagination; bad queries are 400', async (t) => {
  const { gw } = await setup(t);
  const guids: Record<string, string> = {};
  for (const [name, running, staging] of [
    ['a', ['s1'], []],
    ['b', ['s2'], ['s1']],
    ['c', [], []],
  ] as const) {
    const r = await create(gw, {
      name,
      rules: [rule],
      relationships: { running_spaces: { data: running.map((guid) => ({ guid })) }, staging_spaces: { data: staging.map((guid) => ({ guid })) } },
    });
    guids[name] = r.body.guid;
  }
  const names = async (q: string) => ((await gw.http('GET', `${SG}${q}`)).body.resources as { name: string }[]).map((g) => g.name);
  t.same(await names(''), ['a', 'b', 'c'], 'sorted by name');
  t.same(await names('?names=c,a'), ['a', 'c']);
  t.same(await names(`?guids=${guids.b}`), ['b']);
  t.same(await names('?running_space_guids=s1,s2'), ['a', 'b']);
  t.same(await names('?staging_space_guids=s1'), ['b']);
  t.same(await names('?running_space_guids=s2&names=a'), []);
  const page = await gw.http('GET', `${SG}?per_page=2&page=2`);
  t.match(page.body, {
    pagination: { total_results: 3, total_pages: 2, next: null, previous: { href: `${SG}?page=1&per_page=2` } },
    resources: [{ name: 'c' }],
  });
  for (const q of ['?page=0', '?per_page=5001', '?names=a,,b', '?running_space_guids=a.b', '?colour=blue', '?order_by=created_at']) {
    const r = await gw.http('GET', `${SG}${q}`);
    t.equal(r.status, 400, `${q}: 400`);
    t.equal(r.body.code, 'invalid-input');
  }
});

t.test('validation: 422 with every issue and its path; malformed JSON 400; nothing appended', async (t) => {
  const { gw, log } = await setup(t);
  const { body } = await create(gw, { name: 'taken', rules: [rule] });
  const guid = body.guid as string;
  await unchanged(t, log, async () => {
    const cases: [unknown, RegExp][] = [
      [{}, /name: is required/],
      [{ name: 'x', rules: [{ protocol: 'tcp', destination: '203.0.113.5' }] }, /rules\[0\]\.ports: ports are required for protocols of type TCP and UDP/],
      [{ name: 'x', rules: [{ protocol: 'gre', destination: '1.2.3.4' }] }, /rules\[0\]\.protocol/],
      [{ name: 'x', rules: [{ protocol: 'all', destination: '10.0.0.9-10.0.0.1' }] }, /inverted/],
      [{ name: 'x', rules: [{ protocol: 'icmp', destination: '1.2.3.4', type: 300, code: 0 }] }, /type must be an integer between -1 and 255/],
      [{ name: 'x', rules: [rule], relationships: { running_spaces: { data: [{}] } } }, /relationships\.running_spaces\.data\[0\]\.guid: is required/],
      [{ name: 'x', guid: 'mine' }, /guid: is not a known field/],
      [{ name: 'taken' }, /Security group with name 'taken' already exists/],
    ];
    for (const [b, message] of cases) {
      const r = await create(gw, b);
      t.equal(r.status, 422, `422 for ${JSON.stringify(b)}`);
      t.match(r.body.error, message);
    }
    const two = await create(gw, { name: '', rules: [{ protocol: 'udp', destination: 'x', ports: '0' }] });
    t.equal(two.body.issues.length, 3, 'every problem at once');
    t.equal((await gw.http('PATCH', `${SG}/${guid}`, { body: { rules: [{ protocol: 'tcp', destination: '1.2.3.4', ports: 'http' }] } })).status, 422);
    t.equal((await gw.http('POST', `${SG}/${guid}/relationships/running_spaces`, { body: { data: [] } })).status, 422, 'a bind names a space');
    t.equal((await gw.http('POST', `${SG}/${guid}/relationships/dancing_spaces`, { body: { data: [{ guid: 's1' }] } })).status, 400);
    t.equal((await gw.http('DELETE', `${SG}/${guid}/relationships/running_spaces/a.b`)).status, 422);
    const bad = await gw.http('POST', SG, { rawBody: '{"name":' });
    t.match(bad, { status: 400, body: { code: 'invalid-json' } });
  });
});

t.test('authorization: admins write; developers read the groups of their spaces; others are refused', async (t) => {
  const { gw, log } = await setup(t);
  const mine = (await create(gw, { name: 'mine', rules: [rule], relationships: { running_spaces: { data: [{ guid: 's1' }, { guid: 's2' }] } } })).body.guid;
  const theirs = (await create(gw, { name: 'theirs', rules: [rule], relationships: { staging_spaces: { data: [{ guid: 's2' }] } } })).body.guid;
  const global = (await create(gw, { name: 'global', rules: [rule], globally_enabled: { running: true } })).body.guid;
  const dev = await gw.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] });
  const nobody = await gw.token({ user: 'nobody', scopes: ['cloud_controller.read'], spaces: ['s1'] });

  const list = await gw.http('GET', SG, { token: dev });
  t.same(
    (list.body.resources as { name: string }[]).map((g) => g.name),
    ['global', 'mine'],
    'a developer lists the global groups and those bound to their spaces',
  );
  const seen = await gw.http('GET', `${SG}/${mine}`, { token: dev });
  t.same(seen.body.relationships.running_spaces, { data: [{ guid: 's1' }] }, 'and sees only their own spaces among the bound ones');
  t.match(await gw.http('GET', `${SG}/${theirs}`, { token: dev }), { status: 404 }, 'a group of other spaces looks like no group');
  t.equal((await gw.http('GET', `${SG}/${global}`, { token: dev })).status, 200);

  await unchanged(t, log, async () => {
    const writes: [string, string, unknown?][] = [
      ['POST', SG, { name: 'dev-made', rules: [rule] }],
      ['PATCH', `${SG}/${mine}`, { name: 'renamed' }],
      ['DELETE', `${SG}/${mine}`],
      ['POST', `${SG}/${mine}/relationships/running_spaces`, { data: [{ guid: 's1' }] }],
      ['DELETE', `${SG}/${mine}/relationships/running_spaces/s1`],
    ];
    for (const [method, path, body] of writes) {
      const r = await gw.http(method, path, body === undefined ? { token: dev } : { token: dev, body });
      t.equal(r.status, 403, `developer ${method} ${path}: 403`);
      t.equal(r.body.code, 'admin-only');
    }
    t.equal((await gw.http('DELETE', `${SG}/${theirs}`, { token: dev })).status, 404, 'a group the developer cannot see: 404 before 403');
    t.match(await gw.http('GET', SG, { token: nobody }), { status: 403, body: { code: 'missing-scope' } });
    t.match(await gw.http('GET', SG, { token: null }), { status: 401, body: { code: 'unauthenticated' } });
    t.match(await gw.http('POST', SG, { token: null, body: { name: 'x' } }), { status: 401 });
  });
});
