// The developer gateway over real HTTP against a real nats-server: CF shapes, validation, authz, quota,
// idempotency, malformed and oversized bodies.
import t, { type Test } from 'tap';
import { EventLog } from '../runtime/event-log.ts';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';

const P = '/networking/v1/external/policies';

async function setup(t: Test, overrides = {}) {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats, overrides);
  const log = new EventLog(gw.bus);
  for (const [appId, spaceId] of [['a1', 's1'], ['a2', 's1'], ['b1', 's2'], ['b2', 's2']] as const) {
    const r = await gw.intake('registerApp', { appId, name: appId, spaceId, orgId: 'o1' });
    t.equal(r.ok, true);
  }
  return { gw, log };
}

async function unchanged(t: Test, log: EventLog, work: () => Promise<void>) {
  const before = await log.lastSeq();
  await work();
  t.equal(await log.lastSeq(), before, 'nothing was appended');
}

t.test('create, list, delete with CF shapes; repeats are idempotent', async (t) => {
  const { gw, log } = await setup(t);
  const body = { policies: [cfPolicy('a1', 'a2', 'tcp', 8080, 8090), cfPolicy('a1', 'b1', 'udp', 53)] };
  const r1 = await gw.http('POST', P, { body });
  t.equal(r1.status, 200);
  t.type(r1.body.revision, 'number');
  const seqAfterCreate = await log.lastSeq();
  const r2 = await gw.http('POST', P, { body });
  t.equal(r2.status, 200, 'creating an existing policy succeeds');
  t.equal(await log.lastSeq(), seqAfterCreate, 'and appends nothing');
  t.equal(r2.body.revision, r1.body.revision, 'the repeat answers the revision that holds the state');

  const list = await gw.http('GET', P);
  t.same(list.body, { total_policies: 2, policies: [cfPolicy('a1', 'a2', 'tcp', 8080, 8090), cfPolicy('a1', 'b1', 'udp', 53)], revision: seqAfterCreate });

  const del = await gw.http('POST', `${P}/delete`, { body: { policies: [cfPolicy('a1', 'b1', 'udp', 53)] } });
  t.equal(del.status, 200);
  t.ok(del.body.revision > r1.body.revision);
  const delAgain = await gw.http('POST', `${P}/delete`, { body: { policies: [cfPolicy('a1', 'b1', 'udp', 53)] } });
  t.equal(delAgain.status, 200, 'deleting a missing policy succeeds');
  t.same((await gw.http('GET', P)).body.policies, [cfPolicy('a1', 'a2', 'tcp', 8080, 8090)]);
});

t.test('list filters: id, source_id, dest_id', async (t) => {
  const { gw } = await setup(t);
  await gw.http('POST', P, { body: { policies: [cfPolicy('a1', 'a2'), cfPolicy('a2', 'b1'), cfPolicy('b1', 'b2')] } });
  const ids = async (q: string) => ((await gw.http('GET', `${P}${q}`)).body.policies as any[]).map((p) => `${p.source.id}>${p.destination.id}`);
  t.same(await ids('?id=a2'), ['a1>a2', 'a2>b1']);
  t.same(await ids('?id=a1,b2'), ['a1>a2', 'b1>b2']);
  t.same(await ids('?source_id=a2'), ['a2>b1']);
  t.same(await ids('?dest_id=b1,b2'), ['a2>b1', 'b1>b2']);
  t.same(await ids('?source_id=a2&dest_id=b2'), []);
  const bad = await gw.http('GET', `${P}?id=a,,b`);
  t.equal(bad.status, 400);
  t.equal(bad.body.code, 'invalid-input');
});

t.test('validation errors are 400 with a code and append nothing', async (t) => {
  const { gw, log } = await setup(t);
  const bodies: unknown[] = [
    {},
    { policies: [] },
    { policies: [cfPolicy('a1', 'a2', 'icmp')] },
    { policies: [cfPolicy('a1', 'a2', 'tcp', 0, 10)] },
    { policies: [cfPolicy('a1', 'a2', 'tcp', 10, 9)] },
    { policies: [cfPolicy('a1', 'a2', 'tcp', 1, 65536)] },
    { policies: [{ source: { id: 'a1', tag: '0001' }, destination: cfPolicy('a1', 'a2').destination }] },
    { policies: [{ source: {}, destination: cfPolicy('a1', 'a2').destination }] },
    // one bad policy refuses the whole request, good ones included
    { policies: [cfPolicy('a1', 'a2'), cfPolicy('a1', 'a2', 'sctp')] },
  ];
  await unchanged(t, log, async () => {
    for (const body of bodies) {
      const r = await gw.http('POST', P, { body });
      t.equal(r.status, 400, JSON.stringify(body));
      t.equal(r.body.code, 'invalid-input');
      t.type(r.body.error, 'string');
    }
  });
});

t.test('malformed JSON, wrong content type and oversized bodies get clear 4xx', async (t) => {
  const { gw, log } = await setup(t, { httpBodyLimit: 4096 });
  await unchanged(t, log, async () => {
    const bad = await gw.http('POST', P, { rawBody: '{"policies": [' });
    t.equal(bad.status, 400);
    t.equal(bad.body.code, 'invalid-json');
    const empty = await gw.http('POST', P, { rawBody: '' });
    t.equal(empty.status, 400);
    const text = await gw.http('POST', P, { rawBody: 'hello', headers: { 'content-type': 'text/plain' } });
    t.equal(text.status, 415);
    t.equal(text.body.code, 'unsupported-media-type');
    const big = { policies: Array.from({ length: 200 }, (_, i) => cfPolicy('a1', 'a2', 'tcp', i + 1)) };
    const tooBig = await gw.http('POST', P, { body: big });
    t.equal(tooBig.status, 413);
    t.equal(tooBig.body.code, 'body-too-large');
  });
  const nowhere = await gw.http('GET', '/networking/v1/external/nothing');
  t.equal(nowhere.status, 404);
  t.equal(nowhere.body.code, 'not-found');
});

t.test('too many policies in one request', async (t) => {
  const { gw, log } = await setup(t, { maxPoliciesPerRequest: 5 });
  await unchanged(t, log, async () => {
    const r = await gw.http('POST', P, { body: { policies: Array.from({ length: 6 }, (_, i) => cfPolicy('a1', 'a2', 'tcp', i + 1)) } });
    t.equal(r.status, 400);
    t.match(r.body.error, /at most 5/);
  });
});

t.test('authentication: no, malformed, forged or expired token is 401', async (t) => {
  const { gw } = await setup(t);
  const none = await gw.http('GET', P, { token: null });
  t.equal(none.status, 401);
  t.equal(none.body.code, 'unauthenticated');
  t.equal((await gw.http('GET', P, { token: 'garbage' })).status, 401);
  t.equal((await gw.http('GET', P, { headers: { authorization: 'Basic abc' }, token: null })).status, 401);
  const { mintToken } = await import('../runtime/tokens.ts');
  const forged = await mintToken('another-secret-another-secret-12', { user: 'eve', scopes: ['network.admin'], spaces: [] }, 3600);
  t.equal((await gw.http('GET', P, { token: forged })).status, 401);
  const { TEST_SECRET } = await import('./harness/gateway.ts');
  const expired = await mintToken(TEST_SECRET, { user: 'old', scopes: ['network.admin'], spaces: [] }, 60, new Date(Date.now() - 3600_000));
  const r = await gw.http('GET', P, { token: expired });
  t.equal(r.status, 401);
  t.match(r.body.error, /expired/);
});

t.test('authorization: admin, developer in and out of space, missing scope', async (t) => {
  const { gw, log } = await setup(t);
  const devS1 = await gw.token({ user: 'dev1', scopes: ['network.write'], spaces: ['s1'] });
  const devBoth = await gw.token({ user: 'dev2', scopes: ['network.write'], spaces: ['s1', 's2'] });
  const noScope = await gw.token({ user: 'ro', scopes: ['cloud_controller.read'], spaces: ['s1'] });

  t.equal((await gw.http('POST', P, { token: devS1, body: { policies: [cfPolicy('a1', 'a2')] } })).status, 200, 'dev within own space');
  await unchanged(t, log, async () => {
    const out = await gw.http('POST', P, { token: devS1, body: { policies: [cfPolicy('a1', 'b1')] } });
    t.equal(out.status, 403, 'destination outside the space');
    t.same(out.body, { code: 'app-not-accessible', error: 'one or more applications cannot be found or accessed' });
    t.equal((await gw.http('POST', P, { token: devS1, body: { policies: [cfPolicy('b1', 'a1')] } })).status, 403, 'source outside the space');
    t.equal((await gw.http('POST', P, { token: devS1, body: { policies: [cfPolicy('a1', 'nope')] } })).status, 403, 'unknown app looks the same');
    t.equal((await gw.http('POST', P, { token: gw.admin, body: { policies: [cfPolicy('a1', 'nope')] } })).status, 403, 'admin: unknown app');
    const ns = await gw.http('POST', P, { token: noScope, body: { policies: [cfPolicy('a1', 'a2')] } });
    t.equal(ns.status, 403);
    t.equal(ns.body.code, 'missing-scope');
    // all-or-nothing: one inaccessible policy refuses the request
    t.equal((await gw.http('POST', P, { token: devS1, body: { policies: [cfPolicy('a2', 'a1'), cfPolicy('a2', 'b2')] } })).status, 403);
    t.equal((await gw.http('POST', `${P}/delete`, { token: devS1, body: { policies: [cfPolicy('a1', 'b1')] } })).status, 403, 'delete checks access too');
  });
  t.equal((await gw.http('POST', P, { token: devBoth, body: { policies: [cfPolicy('a1', 'b1')] } })).status, 200, 'dev of both spaces');
  t.equal((await gw.http('POST', P, { token: gw.admin, body: { policies: [cfPolicy('b1', 'b2')] } })).status, 200, 'admin anywhere');

  const seen = async (token: string) => ((await gw.http('GET', P, { token })).body.policies as any[]).map((p) => `${p.source.id}>${p.destination.id}`);
  t.same(await seen(gw.admin), ['a1>a2', 'a1>b1', 'b1>b2']);
  t.same(await seen(devS1), ['a1>a2', 'a1>b1'], 'non-admins see policies touching their spaces');
  t.equal((await gw.http('GET', P, { token: noScope })).status, 403);

  const tags = await gw.http('GET', '/networking/v1/external/tags', { token: devS1 });
  t.equal(tags.status, 403, 'tags are admin-only');
  const adminTags = await gw.http('GET', '/networking/v1/external/tags');
  t.same(adminTags.body, { tags: [{ id: 'a1', tag: '0001', type: 'app' }, { id: 'a2', tag: '0002', type: 'app' }, { id: 'b1', tag: '0003', type: 'app' }, { id: 'b2', tag: '0004', type: 'app' }] });
  t.same((await gw.http('GET', '/networking/v1/external/whoami', { token: devS1 })).body, { user_name: 'dev1' });
});

t.test('quota: 150 (here 3) policies per source app for non-admins', async (t) => {
  const { gw, log } = await setup(t, { policyQuota: 3 });
  const dev = await gw.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] });
  t.equal((await gw.http('POST', P, { token: dev, body: { policies: [1, 2, 3].map((p) => cfPolicy('a1', 'a2', 'tcp', p)) } })).status, 200);
  await unchanged(t, log, async () => {
    const r = await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('a1', 'a2', 'tcp', 4)] } });
    t.equal(r.status, 403);
    t.same(r.body, { code: 'quota-exceeded', error: 'policy quota exceeded' });
  });
  t.equal((await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('a1', 'a2', 'tcp', 3)] } })).status, 200, 'an existing policy does not count twice');
  t.equal((await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('a2', 'a1', 'tcp', 4)] } })).status, 200, 'other sources have their own quota');
  t.equal((await gw.http('POST', P, { token: gw.admin, body: { policies: [cfPolicy('a1', 'a2', 'tcp', 4)] } })).status, 200, 'admins have no quota');
});

t.test('a request id header becomes the correlation id of the events', async (t) => {
  const { gw } = await setup(t);
  const r = await gw.http('POST', P, { body: { policies: [cfPolicy('a1', 'a2')] }, headers: { 'x-request-id': 'req-123' } });
  const log = new EventLog(gw.bus);
  const events = [];
  for await (const rec of log.read(r.body.revision)) events.push(rec);
  t.match(events, [{ seq: r.body.revision, subject: 'nf.evt.policy.a1', event: { type: 'PoliciesCreated', actor: 'user:admin', correlationId: 'req-123' } }]);
});

