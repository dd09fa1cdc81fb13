// Platform intake over NATS request/reply against a real nats-server.
import t, { type Test } from 'tap';
import { EventLog } from '../runtime/event-log.ts';
import { intakeBatchSubject, intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { startNats } from './harness/nats.ts';
import { MAX_INTAKE_BATCH } from '../services/policy-writer/intake.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';

async function setup(t: Test) {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  return { gw, log: new EventLog(gw.bus) };
}

async function eventsFrom(log: EventLog, from: number) {
  const out = [];
  for await (const rec of log.read(from)) if ('event' in rec) out.push(rec.event);
  return out;
}

t.test('app lifecycle: register, rename, delete, with revisions', async (t) => {
  const { gw, log } = await setup(t);
  const reg = await gw.intake('registerApp', { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1', requestId: 'r-1' }, 'cc');
  t.same(reg, { ok: true, revision: 1, appended: 1 });
  const ren = await gw.intake('renameApp', { appId: 'a1', name: 'site' });
  t.same(ren, { ok: true, revision: 2, appended: 1 });
  const del = await gw.intake('deleteApp', { appId: 'a1' });
  t.same(del, { ok: true, revision: 3, appended: 1 });
  const events = await eventsFrom(log, 1);
  t.match(events, [
    { type: 'AppRegistered', v: 1, actor: 'platform:cc', correlationId: 'r-1', data: { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1' } },
    { type: 'AppRenamed', data: { appId: 'a1', name: 'site', previousName: 'web' } },
    { type: 'AppDeleted', data: { appId: 'a1' } },
  ]);
  t.same(await gw.intake('deleteApp', { appId: 'a1' }), { ok: true, revision: 3, appended: 0, note: 'already-deleted' });
  t.match(await gw.intake('registerApp', { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1' }), { ok: false, code: 'app-deleted', retryable: false });
});

t.test('invalid input gets an error reply and appends nothing', async (t) => {
  const { gw, log } = await setup(t);
  await gw.intake('registerApp', { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1' });
  const before = await log.lastSeq();
  const raw = await gw.bus.nc.request(intakeSubject('test', intakeCommand.startContainer), '{not json', { timeout: 5000 });
  t.match(raw.json(), { ok: false, code: 'invalid-json' });
  const bad = await gw.intake('startContainer', { containerId: 'c1', appId: 'a1', cellId: 'cell-1', instanceIndex: 0, ip: '10.0.0.300' });
  t.match(bad, { ok: false, code: 'invalid-input', issues: [{ path: 'ip' }] });
  t.match(await gw.intake('registerApp', { appId: 'a.b', name: 'x', spaceId: 's', orgId: 'o' }), { ok: false, code: 'invalid-input' });
  t.match(await gw.intake('startContainer', { containerId: 'c1', appId: 'nope', cellId: 'cell-1', instanceIndex: 0, ip: '10.0.0.3' }), {
    ok: false,
    code: 'app-not-found',
  });
  t.match(await gw.intake('registerApp', { appId: 'a2', name: 'WEB', spaceId: 's1', orgId: 'o1' }), { ok: false, code: 'app-name-taken' });
  t.match(await gw.intake('renameApp', { appId: 'ghost', name: 'x' }), { ok: false, code: 'app-not-found' });
  // Who is asking is the subject's caller token (bound to the connection's user when authorization is on), never a
  // field of the body: a body naming an actor is refused.
  t.match(await gw.intake('registerApp', { appId: 'a9', name: 'x9', spaceId: 's', orgId: 'o', actor: 'admin' }), {
    ok: false,
    code: 'invalid-input',
    issues: [{ path: 'actor', message: 'is not a known field' }],
  });
  for (const subject of ['nf.cmd.test.app.explode', 'nf.cmd.-x.app.register', 'nf.cmd.test.app']) {
    const r = await gw.bus.nc.request(subject, JSON.stringify({ appId: 'a9', name: 'x9', spaceId: 's', orgId: 'o' }), { timeout: 5000 }).catch((e: Error) => e);
    if (subject.split('.').length === 5) t.match((r as { json(): unknown }).json(), { ok: false, code: 'unknown-command' }, `${subject}: refused`);
    else t.ok(r instanceof Error, `${subject}: nobody answers`);
  }
  t.equal(await log.lastSeq(), before, 'nothing was appended');
});

t.test('retries with the same request id are idempotent', async (t) => {
  const { gw, log } = await setup(t);
  await gw.registerCells('cell-1');
  const reg = { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1', requestId: 'req-1' };
  const first = await gw.intake('registerApp', reg);
  const again = await Promise.all([gw.intake('registerApp', reg), gw.intake('registerApp', reg)]);
  for (const r of again) t.same(r, { ok: true, revision: first.ok ? first.revision : -1, appended: 0, note: 'already-registered' });
  const start = { containerId: 'c1', appId: 'a1', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2', requestId: 'req-2' };
  const results = await Promise.all(Array.from({ length: 5 }, () => gw.intake('startContainer', start)));
  t.equal(results.filter((r) => r.ok && r.appended === 1).length, 1, 'exactly one of five concurrent retries appended');
  t.ok(
    results.every((r) => r.ok && r.revision === 3),
    'all answer the same revision',
  );
  t.equal(await log.lastSeq(), 3);
  t.match(await gw.intake('startContainer', { ...start, ip: '10.255.1.3' }), { ok: false, code: 'container-conflict' });
});

t.test('a stop before its start, and a stop of an unknown container, do not corrupt state', async (t) => {
  const { gw, log } = await setup(t);
  await gw.registerCells('cell-1');
  await gw.intake('registerApp', { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1' });
  t.match(await gw.intake('stopContainer', { containerId: 'c1' }), { ok: true, appended: 1, note: 'stopped-before-start' });
  t.match(await gw.intake('startContainer', { containerId: 'c1', appId: 'a1', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' }), {
    ok: true,
    appended: 0,
    note: 'already-stopped',
  });
  t.match(await gw.intake('stopContainer', { containerId: 'c1' }), { ok: true, appended: 0, note: 'already-stopped' });
  const m = gw.writer.follower.state;
  t.equal(m.containers.c1?.status, 'stopped');
  t.same(m.containersByCell, {}, 'no running container on any cell');
  t.equal(await log.lastSeq(), 3);
  // the normal order
  t.match(await gw.intake('startContainer', { containerId: 'c2', appId: 'a1', cellId: 'cell-1', instanceIndex: 1, ip: '10.255.1.3' }), {
    ok: true,
    appended: 1,
  });
  t.same(gw.writer.follower.state.containersByCell, { 'cell-1': { c2: true } });
  t.match(await gw.intake('stopContainer', { containerId: 'c2' }), { ok: true, appended: 1 });
  t.match((await eventsFrom(log, 5))[0], { type: 'ContainerStopped', data: { containerId: 'c2', appId: 'a1', cellId: 'cell-1', wasRunning: true } });
});

t.test('deleting an app deletes its policies, as events, before the app', async (t) => {
  const { gw, log } = await setup(t);
  for (const appId of ['a', 'b', 'c']) await gw.intake('registerApp', { appId, name: appId, spaceId: 's1', orgId: 'o1' });
  await gw.http('POST', '/networking/v1/external/policies', {
    body: { policies: [cfPolicy('a', 'b'), cfPolicy('b', 'a', 'udp', 53), cfPolicy('c', 'a'), cfPolicy('c', 'b')] },
  });
  const before = await log.lastSeq();
  const del = await gw.intake('deleteApp', { appId: 'a', requestId: 'del-a' });
  t.match(del, { ok: true, appended: 1 });
  const events = await eventsFrom(log, before + 1);
  t.match(events, [
    { type: 'PoliciesDeleted', correlationId: 'del-a', data: { sourceAppId: 'a', reason: 'app-deleted', policies: [{ destAppId: 'b' }] } },
    { type: 'PoliciesDeleted', data: { sourceAppId: 'b', reason: 'app-deleted', policies: [{ destAppId: 'a', protocol: 'udp' }] } },
    { type: 'PoliciesDeleted', data: { sourceAppId: 'c', reason: 'app-deleted', policies: [{ destAppId: 'a' }] } },
    { type: 'AppDeleted', data: { appId: 'a' } },
  ]);
  t.equal(events.length, 4);
  t.ok(del.ok && del.revision === before + 4, 'the reply carries the revision of the deletion');
  const list = await gw.http('GET', '/networking/v1/external/policies');
  t.same(list.body.policies, [cfPolicy('c', 'b')]);
});

t.test('a batch of commands: one reply with a result per command, in order; each decided as if sent alone', async (t) => {
  const { gw, log } = await setup(t);
  await gw.registerCells('cell-1');
  await gw.intake('registerApp', { appId: 'a1', name: 'web', spaceId: 's1', orgId: 'o1' });
  const before = await log.lastSeq();
  const start = (id: string, ip: string, index: number) => ({
    command: 'container.start',
    body: { containerId: id, appId: 'a1', cellId: 'cell-1', instanceIndex: index, ip },
  });
  const batch = async (body: unknown) => (await gw.bus.nc.request(intakeBatchSubject('kubelet'), JSON.stringify(body), { timeout: 5000 })).json();
  const r = (await batch({
    commands: [
      start('c1', '10.255.1.2', 0),
      start('c2', '10.255.1.2', 1), // the same IP as c1, decided concurrently: both appended, the fold lets one win
      start('c3', '10.255.1.300', 2), // invalid: refused alone
      { command: 'container.stop', body: { containerId: 'c9' } },
      start('c4', '10.255.1.4', 3),
      { command: 'container.stop', body: { containerId: 'c4' } }, // same aggregate as the one before: after it
    ],
  })) as { ok: boolean; results: { ok: boolean; code?: string; appended?: number; revision?: number; issues?: unknown }[] };
  t.equal(r.ok, true);
  t.equal(r.results.length, 6, 'one result per command');
  t.equal(r.results.filter((x, i) => i < 2 && x.ok).length, 1, 'one of two starts with one IP took effect');
  t.match(
    r.results.filter((x, i) => i < 2 && !x.ok),
    [{ ok: false, code: 'ip-in-use' }],
  );
  t.match(r.results[2], { ok: false, code: 'invalid-input', issues: [{ path: 'ip' }] });
  t.match(r.results[3], { ok: true, appended: 1 }, 'a stop before its start is recorded (see the test above)');
  t.match(r.results[4], { ok: true, appended: 1 });
  t.match(r.results[5], { ok: true, appended: 1 });
  t.ok(r.results[5]!.revision! > r.results[4]!.revision!, 'commands on one aggregate take effect in the batch order');
  const events = await eventsFrom(log, before + 1);
  // the losing start of one IP is appended and ignored by the fold (docs/architecture.md, "Cross-aggregate rules")
  t.equal(events.length, 5, 'five commands appended, the invalid one nothing');
  for (const e of events) t.equal(e.actor, 'platform:kubelet', 'the actor is the caller token of the subject');

  // A batch of the wrong shape is refused whole and appends nothing.
  const last = await log.lastSeq();
  const raw = await gw.bus.nc.request(intakeBatchSubject('kubelet'), '{"commands": [', { timeout: 5000 });
  t.match(raw.json(), { ok: false, code: 'invalid-json' });
  const ok5 = start('c5', '10.255.1.5', 5);
  for (const bad of [
    null,
    [ok5],
    {},
    { commands: [] },
    { commands: ok5 },
    { commands: [ok5], extra: 1 },
    { commands: [ok5, { command: 'container.explode', body: {} }] },
    { commands: [ok5, { command: 'container.stop' }] },
    { commands: [ok5, { command: 'container.stop', body: { containerId: 'c5' }, actor: 'admin' }] },
    { commands: [ok5, { command: '__proto__', body: {} }] },
    { commands: [ok5, 'container.stop'] },
    { commands: Array.from({ length: MAX_INTAKE_BATCH + 1 }, () => ok5) },
  ]) {
    t.match(await batch(bad), { ok: false, code: 'invalid-batch', retryable: false }, `refused: ${JSON.stringify(bad).slice(0, 80)}`);
  }
  t.equal(await log.lastSeq(), last, 'nothing was appended');
});

t.test('leases over intake: cells join with an underlay address and are leased a range; starts without an IP get one', async (t) => {
  const { gw, log } = await setup(t);
  const a = await gw.intake('registerCell', { cellId: 'host-a', underlay: '192.0.2.1' });
  t.match(a, { ok: true, appended: 1, subnet: '10.255.0.0/24', underlay: '192.0.2.1' });
  const b = await gw.intake('registerCell', { cellId: 'host-b', underlay: '192.0.2.2' });
  t.match(b, { ok: true, appended: 1, subnet: '10.255.1.0/24', underlay: '192.0.2.2' });
  // Joining again (an agent restarted) keeps the lease.
  t.match(await gw.intake('registerCell', { cellId: 'host-a', underlay: '192.0.2.1' }), {
    ok: true,
    appended: 0,
    note: 'already-registered',
    subnet: '10.255.0.0/24',
  });
  await gw.intake('registerApp', { appId: 'app-1', name: 'one', spaceId: 's1', orgId: 'o1' });
  const s1 = await gw.intake('startContainer', { containerId: 'c1', appId: 'app-1', cellId: 'host-b', instanceIndex: 0 });
  t.match(s1, { ok: true, appended: 1, ip: '10.255.1.2', note: 'address-allocated' });
  const s2 = await gw.intake('startContainer', { containerId: 'c2', appId: 'app-1', cellId: 'host-b', instanceIndex: 1 });
  t.match(s2, { ok: true, ip: '10.255.1.3' });
  t.match(await gw.intake('startContainer', { containerId: 'c1', appId: 'app-1', cellId: 'host-b', instanceIndex: 0 }), {
    ok: true,
    appended: 0,
    ip: '10.255.1.2',
    note: 'already-running',
  });
  const events = await eventsFrom(log, 1);
  t.match(events[0], { type: 'CellRegistered', v: 2, data: { cellId: 'host-a', subnet: '10.255.0.0/24', underlay: '192.0.2.1', leased: true } });
  t.match(
    events.find((e) => e.type === 'ContainerStarted'),
    { data: { containerId: 'c1', ip: '10.255.1.2' } },
    'the allocated address is recorded in the event',
  );
  // Decommission is refused while containers run; then the lease is released and the next cell gets it.
  t.match(await gw.intake('decommissionCell', { cellId: 'host-b' }), { ok: false, code: 'cell-busy' });
  await gw.intake('stopContainer', { containerId: 'c1' });
  await gw.intake('stopContainer', { containerId: 'c2' });
  t.match(await gw.intake('decommissionCell', { cellId: 'host-b' }), { ok: true, appended: 1 });
  t.match(await gw.intake('registerCell', { cellId: 'host-c', underlay: '192.0.2.2' }), { ok: true, subnet: '10.255.1.0/24', underlay: '192.0.2.2' });
});

t.test('leases over intake: bad input and conflicts are typed errors and append nothing', async (t) => {
  const { gw, log } = await setup(t);
  await gw.intake('registerCell', { cellId: 'host-a', underlay: '192.0.2.1' });
  await gw.intake('registerApp', { appId: 'app-1', name: 'one', spaceId: 's1', orgId: 'o1' });
  await gw.intake('registerCell', { cellId: 'tiny', subnet: '10.255.200.0/30' });
  await gw.intake('startContainer', { containerId: 't1', appId: 'app-1', cellId: 'tiny', instanceIndex: 0 });
  const before = await log.lastSeq();
  const cases: [keyof typeof intakeCommand, Record<string, unknown>, Record<string, unknown>][] = [
    ['registerCell', { cellId: 'host-b', underlay: '192.0.2.1' }, { code: 'underlay-in-use', retryable: false }],
    ['registerCell', { cellId: 'host-b', underlay: '10.255.9.1' }, { code: 'underlay-inside-overlay' }],
    ['registerCell', { cellId: 'host-b', underlay: 'host-b.example' }, { code: 'invalid-input', issues: [{ path: 'underlay' }] }],
    ['registerCell', { cellId: 'host-b', prefix: 33 }, { code: 'invalid-input', issues: [{ path: 'prefix' }] }],
    ['registerCell', { cellId: 'host-b', prefix: 8 }, { code: 'overlay-exhausted' }],
    ['registerCell', { cellId: 'host-a', underlay: '192.0.2.9' }, { code: 'cell-conflict' }],
    ['startContainer', { containerId: 't2', appId: 'app-1', cellId: 'tiny', instanceIndex: 1 }, { code: 'cell-addresses-exhausted' }],
    ['startContainer', { containerId: 'c1', appId: 'app-1', cellId: 'host-a', instanceIndex: 0, ip: '10.255.0.1' }, { code: 'ip-reserved' }],
    ['startContainer', { containerId: 'c1', appId: 'app-1', cellId: 'host-a', instanceIndex: 0, ip: '10.255.1.5' }, { code: 'ip-outside-cell' }],
    ['startContainer', { containerId: 'c1', appId: 'app-1', cellId: 'nowhere', instanceIndex: 0 }, { code: 'cell-not-found' }],
  ];
  for (const [cmd, body, expected] of cases) t.match(await gw.intake(cmd, body), { ok: false, ...expected }, `${cmd} ${JSON.stringify(body)}`);
  t.equal(await log.lastSeq(), before, 'nothing appended');
});
