// The write path decides each policy command once: a request spanning several source apps is decided whole by
// the writer (nothing appended if one part is refused), and that same decision is what gets appended; only an
// append conflict (another process moved the source app) decides that command again. Counted with the writer's
// own `stats.decisions`, against a real nats-server.
import t, { type Test } from 'tap';
import { EventLog, LogFollower } from '../runtime/event-log.ts';
import { MAX_TAG, type Model, initialModel, liveModelFold } from '../projections/model.ts';
import { Writer } from '../services/policy-writer/writer.ts';
import { newId } from '../runtime/ids.ts';
import { eventSubject } from '../runtime/subjects.ts';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy, type GatewayFixture } from './harness/gateway.ts';

const P = '/networking/v1/external/policies';

async function setup(t: Test, gateways = 1, overrides = {}) {
  const nats = await startNats(t);
  const gws: GatewayFixture[] = [];
  for (let i = 0; i < gateways; i++) gws.push(await startGateway(t, nats, overrides));
  const gw = gws[0]!;
  for (const [appId, spaceId] of [['a1', 's1'], ['a2', 's1'], ['a3', 's1'], ['b1', 's2']] as const) {
    t.equal((await gw.intake('registerApp', { appId, name: appId, spaceId, orgId: 'o1' })).ok, true);
  }
  return { gws, gw, log: new EventLog(gw.bus) };
}

/** What `work` cost the writer: decider runs, events appended, conflicts. */
async function counted(gw: GatewayFixture, work: () => Promise<void>) {
  const s = gw.writer.writer.stats;
  const before = { ...s };
  await work();
  return { decisions: s.decisions - before.decisions, appended: s.appended - before.appended, conflicts: s.conflicts - before.conflicts };
}

async function eventsFrom(log: EventLog, seq: number) {
  const out: { subject: string; type: string; source: string }[] = [];
  for await (const rec of log.read(seq)) if ('event' in rec && 'sourceAppId' in rec.event.data) out.push({ subject: rec.subject, type: rec.event.type, source: rec.event.data.sourceAppId as string });
  return out;
}

t.test('one decision per command: a request over three source apps decides three times, dry run included', async (t) => {
  const { gw, log } = await setup(t);
  const body = { policies: [cfPolicy('a3', 'a1'), cfPolicy('a1', 'a2'), cfPolicy('a2', 'a3'), cfPolicy('a1', 'a3', 'udp', 53)] };
  const start = (await log.lastSeq()) + 1;

  let dry: any;
  t.same(await counted(gw, async () => void (dry = await gw.http('POST', `${P}?dry_run=true`, { body }))), { decisions: 3, appended: 0, conflicts: 0 }, 'dry run: one decision per source app, nothing appended');
  t.equal(dry.status, 200);
  t.same(dry.body.events.map((e: any) => e.data.sourceAppId), ['a1', 'a2', 'a3'], 'the dry run lists the events in source order');

  let created: any;
  t.same(await counted(gw, async () => void (created = await gw.http('POST', P, { body }))), { decisions: 3, appended: 3, conflicts: 0 }, 'create: the decision of the whole-request check is the one appended');
  t.equal(created.status, 200);
  t.same(await eventsFrom(log, start), ['a1', 'a2', 'a3'].map((s) => ({ subject: eventSubject.policy(s), type: 'PoliciesCreated', source: s })), 'appended per source app, in order');
  t.equal(created.body.revision, await log.lastSeq(), 'the answer is the revision of the last part');

  t.same(await counted(gw, async () => void t.equal((await gw.http('POST', P, { body })).status, 200)), { decisions: 3, appended: 0, conflicts: 0 }, 'a repeat decides each command once and appends nothing');
  t.same(await counted(gw, async () => void t.equal((await gw.http('POST', `${P}/delete`, { body })).status, 200)), { decisions: 3, appended: 3, conflicts: 0 }, 'delete: the same');
});

t.test('a request over several source apps is refused whole', async (t) => {
  const { gw, log } = await setup(t, 1, { policyQuota: 2 });
  const dev = await gw.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] });
  t.equal((await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('a3', 'a1', 'tcp', 1), cfPolicy('a3', 'a1', 'tcp', 2)] } })).status, 200, 'a3 is at its quota');
  const before = await log.lastSeq();
  // a1 and a2 sort before a3: their parts are fine, the last part is over quota
  const overQuota = await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('a1', 'a2'), cfPolicy('a2', 'a1'), cfPolicy('a3', 'a2')] } });
  t.equal(overQuota.status, 403);
  t.same(overQuota.body, { code: 'quota-exceeded', error: 'policy quota exceeded' });
  const inaccessible = await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('a1', 'a2'), cfPolicy('b1', 'a1')] } });
  t.equal(inaccessible.status, 403);
  t.equal(inaccessible.body.code, 'app-not-accessible');
  t.equal(await log.lastSeq(), before, 'no part was appended');
  t.same((await gw.http('GET', P)).body.policies.map((p: any) => p.source.id), ['a3', 'a3']);
});

t.test('only a conflict decides again: two processes racing on the same source apps', async (t) => {
  const { gws } = await setup(t, 2);
  const before = gws.map((g) => ({ ...g.writer.writer.stats }));
  // every request names both source apps, so both processes' batches collide on both subjects
  const results = await Promise.all(
    Array.from({ length: 40 }, (_, i) => gws[i % 2]!.http('POST', P, { body: { policies: [cfPolicy('a1', 'a2', 'tcp', 1000 + i), cfPolicy('a2', 'a1', 'tcp', 1000 + i)] } })),
  );
  t.same(results.map((r) => r.status), Array(40).fill(200));
  let conflicts = 0;
  for (const [i, g] of gws.entries()) {
    const s = g.writer.writer.stats;
    const commands = 20 * 2;
    t.equal(s.decisions - before[i]!.decisions, commands + (s.conflicts - before[i]!.conflicts), `writer ${i}: one decision per command, plus one per conflict`);
    t.equal(s.appended - before[i]!.appended, commands);
    conflicts += s.conflicts - before[i]!.conflicts;
  }
  t.ok(conflicts > 0, `the processes really raced (${conflicts} conflicts)`);
  for (const g of gws) await g.writer.follower.waitFor(Math.max(...results.map((r) => r.body.revision)));
  t.equal((await gws[1]!.http('GET', `${P}?source_id=a1`)).body.total_policies, 40);
  t.equal((await gws[1]!.http('GET', `${P}?source_id=a2`)).body.total_policies, 40);
});

t.test('tags: the parts of a batch count the tags the parts before them will claim', async (t) => {
  // A model with three tags left, as if 65 532 apps held one: a1->a2 and b1->b2 each fit alone, not together.
  const nats = await startNats(t);
  await nats.connect('topology'); // the admin creates the streams
  const bus = await nats.connectAs('writer');
  const start: Model = initialModel();
  start.tags.next = MAX_TAG - 2;
  const follower = new LogFollower<Model>(bus, liveModelFold, nats.log, { initialState: start });
  await follower.start();
  t.teardown(() => follower.stop());
  const log = new EventLog(bus);
  const writer = new Writer({ log: nats.log, eventLog: log, follower, now: () => new Date(), newId, policyQuota: 150, overlayCidr: '10.255.0.0/16' });
  const meta = { actor: 'test', correlationId: 'c' };
  for (const appId of ['a1', 'a2', 'b1', 'b2']) await writer.app({ type: 'RegisterApp', data: { appId, name: appId, spaceId: 's1', orgId: 'o1' } }, meta);
  const admin = { admin: true, spaces: [] };
  const rule = (destAppId: string) => ({ destAppId, protocol: 'tcp' as const, startPort: 80, endPort: 80 });
  const before = await log.lastSeq();
  await t.rejects(
    writer.policies([{ type: 'CreatePolicies', data: { sourceAppId: 'a1', policies: [rule('a2')] } }, { type: 'CreatePolicies', data: { sourceAppId: 'b1', policies: [rule('b2')] } }], admin, meta),
    { code: 'tags-exhausted' },
    'four new apps, three tags: refused whole',
  );
  t.equal(await log.lastSeq(), before, 'nothing was appended');
  const r = await writer.policies([{ type: 'CreatePolicies', data: { sourceAppId: 'a1', policies: [rule('a2')] } }, { type: 'CreatePolicies', data: { sourceAppId: 'b1', policies: [rule('a2')] } }], admin, meta);
  t.equal(r.results.length, 2, 'three new apps, three tags: both parts appended');
  t.same(Object.keys(follower.state.tags.byApp).sort(), ['a1', 'a2', 'b1']);
});
