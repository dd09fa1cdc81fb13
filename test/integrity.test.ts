// Integrity: ids that are names of Object.prototype's properties behave like any other id, everywhere; a fold
// that fails quarantines the event the same way in every fold; IPs have one holder; cells are known.
import t from 'tap';
import type { DomainEvent } from '../events/catalogue.ts';
import { parseEvent } from '../events/catalogue.ts';
import { canonicalJson, stateHash } from '../projections/canonical.ts';
import { cellHashOf, deriveCellState } from '../projections/cell.ts';
import {
  type FoldStep,
  type Model,
  MAX_QUARANTINE_ENTRIES,
  foldEvents,
  foldEventsInPlace,
  initialModel,
  liveModelFold,
  skipEntry,
} from '../projections/model.ts';
import { expandRules } from '../projections/flows.ts';
import { PlannerCore } from '../services/topology-planner/core.ts';
import { ev, record } from './harness/events.ts';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { startStack } from './harness/stack.ts';
import { enforcementOf, waitEnforced } from '../services/topology-planner/enforcement.ts';
import { EventLog, LogFollower } from '../runtime/event-log.ts';
import { pino } from 'pino';
import { quarantined, replay } from '../cli/operators.ts';
import { startDiscovery, defaultDiscoveryConfig } from '../services/discovery/service.ts';

/** Ids that are properties of Object.prototype (or of Object) and still pass the id pattern. */
const PROTO_IDS = [
  'constructor',
  'hasOwnProperty',
  'toString',
  'valueOf',
  'keys',
  'isPrototypeOf',
  'propertyIsEnumerable',
  'toLocaleString',
  'assign',
  'create',
];

/** App names (DNS labels, looked up lower-cased) that are properties of Object or its prototype. */
const PROTO_NAMES = ['constructor', 'keys', 'values', 'entries', 'assign', 'create', 'is', 'seal', 'freeze', 'length'];

/** A deterministic random scenario over ids `ids` and app names `names` (apps, containers, cells, policies, stops, deletes). */
function scenario(ids: readonly string[], names: readonly string[], seed: number): DomainEvent[] {
  let s = seed;
  const rnd = (n: number) => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s % n;
  };
  const id = (k: number) => ids[k % ids.length]!;
  const cells = [id(0), id(1)];
  const out: DomainEvent[] = [ev.cell(cells[0], '10.255.1.0/24'), ev.cell(cells[1], '10.255.2.0/24')];
  const name = (k: number) => names[k % names.length]!;
  for (let k = 0; k < 5; k++) out.push(ev.registered(id(k + 2), name(k)));
  let host = 2;
  for (let step = 0; step < 60; step++) {
    const app = id(2 + rnd(5));
    switch (rnd(6)) {
      case 0:
      case 1: {
        const c = rnd(2);
        out.push(ev.started(id(rnd(ids.length)), app, cells[c], `10.255.${c + 1}.${host++}`, rnd(3)));
        break;
      }
      case 2:
        out.push(ev.stopped(id(rnd(ids.length)), app, cells[rnd(2)]));
        break;
      case 3:
        out.push(ev.created(app, id(2 + rnd(5)), 8000 + rnd(3)));
        break;
      case 4:
        out.push(rnd(4) === 0 ? ev.deleted(app) : ev.removed(app, id(2 + rnd(5)), 8000 + rnd(3)));
        break;
      default:
        out.push(ev.renamed(app, name(5 + rnd(names.length)), name(0)));
    }
  }
  return out;
}

/** Markers that occur nowhere else in a model's JSON, one per prototype name. */
const MARKERS = PROTO_IDS.map((_, i) => `qz${String.fromCharCode(97 + i)}qz`);
const NAME_MARKERS = PROTO_NAMES.map((_, i) => `qy${String.fromCharCode(97 + i)}qy`);
const FROM = [...MARKERS, ...NAME_MARKERS];
const TO = [...PROTO_IDS, ...PROTO_NAMES];

function renamed(value: unknown, from: readonly string[], to: readonly string[]): unknown {
  const swap = (text: string) => from.reduce((acc, f, i) => acc.split(f).join(to[i]!), text);
  if (typeof value === 'string') return swap(value);
  if (Array.isArray(value)) return value.map((v) => renamed(v, from, to));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = Object.create(null);
    for (const [k, v] of Object.entries(value)) out[swap(k)] = renamed(v, from, to);
    return out;
  }
  return value;
}

t.test('prototype-name ids fold exactly like ordinary ids (model, every cell, the agent rules)', async (t) => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    const ordinary = record(scenario(MARKERS, NAME_MARKERS, seed));
    const proto = record(scenario(PROTO_IDS, PROTO_NAMES, seed));
    // Events read back from the log go through parseEvent: every one of them is valid.
    for (const r of proto) t.equal(parseEvent(JSON.parse(JSON.stringify(r.event))).ok, true);
    let a!: Model;
    let b!: Model;
    t.doesNotThrow(() => (a = foldEvents(initialModel(), ordinary)));
    t.doesNotThrow(() => (b = foldEventsInPlace(initialModel(), proto)));
    t.same(b.quarantine, { invalid: 0, foldFailed: 0, entries: [] }, 'nothing quarantined');
    t.equal(canonicalJson(b), canonicalJson(renamed(a, FROM, TO)), `seed ${seed}: the same model`);
    t.equal(({} as Record<string, unknown>).keys, undefined, 'Object.prototype is untouched');
    for (const [i, cell] of PROTO_IDS.slice(0, 2).entries()) {
      const sa = deriveCellState(a, MARKERS[i]!);
      const sb = deriveCellState(b, cell);
      t.equal(canonicalJson(sb), canonicalJson(renamed(sa, FROM, TO)), `seed ${seed}: cell ${cell}`);
      t.same(expandRules(sb).allows.length, expandRules(sa).allows.length);
    }
    // The planner's incremental path agrees with the whole derivation on these ids too.
    const core = new PlannerCore({ domain: 'apps.internal', snapshotEvery: 8, owns: () => true });
    core.ingest(proto);
    for (const cell of PROTO_IDS.slice(0, 2))
      t.equal(core.cells()[cell]?.hash ?? cellHashOf(deriveCellState(core.model, cell)), cellHashOf(deriveCellState(b, cell)));
  }
});

t.test('the findings, one by one, at the fold', async (t) => {
  // app rename of a never-registered app `constructor` threw inside the fold and stopped every follower.
  const m = foldEventsInPlace(initialModel(), record([ev.renamed('constructor', 'x', 'y'), ev.deleted('toString')]));
  t.same(m.quarantine.entries, []);
  t.equal(m.apps.constructor, undefined);
  // A container `keys` of app `constructor` set Object.keys = true for the whole process.
  foldEventsInPlace(m, record([ev.registered('constructor', 'ctor'), ev.started('keys', 'constructor', 'cell-1', '10.255.1.5')], 3));
  t.equal(typeof Object.keys, 'function');
  t.same(Object.keys(m.containersByApp.constructor!), ['keys']);
  t.equal(m.containersByIp['10.255.1.5'], 'keys');
});

t.test('a fold that throws quarantines the event, identically in the pure and the in-place fold', async (t) => {
  const events = record([ev.registered('a'), ev.registered('b'), ev.created('a', 'b'), ev.registered('c')]);
  let calls = 0;
  const failing: FoldStep = (m, e, seq) => {
    calls++;
    if (e.type === 'PoliciesCreated') throw new Error('boom');
    foldEventsInPlace(m as Model, [{ seq, subject: 'x', event: e }]);
  };
  const a = foldEventsInPlace(initialModel(), events, failing);
  const b = foldEventsInPlace(initialModel(), events.slice(0, 2), failing);
  foldEventsInPlace(b, events.slice(2), failing);
  t.ok(calls > 0);
  t.match(a.quarantine, { foldFailed: 1, invalid: 0, entries: [{ seq: 3, reason: 'fold-failed', type: 'PoliciesCreated', error: 'Error: boom' }] });
  t.equal(stateHash(a), stateHash(b), 'replay in other batches quarantines the same way');
  t.equal(a.seq, 4, 'the fold went on past the failed event');
  t.ok(a.apps.c, 'and folded what came after');
});

t.test('the quarantine is bounded: entries past 1,000 are counted, not kept', async (t) => {
  const m = initialModel();
  for (let seq = 1; seq <= 1005; seq++) skipEntry(m, seq, 'nf.evt.app.x', 'not JSON');
  t.equal(m.quarantine.invalid, 1005);
  t.equal(m.quarantine.entries.length, MAX_QUARANTINE_ENTRIES);
  t.equal(m.seq, 1005);
});

t.test('one IP, one holder; a decommissioned cell takes no containers (the fold settles writers racing)', async (t) => {
  const m = foldEvents(
    initialModel(),
    record([
      ev.cell('cell-1'),
      ev.registered('web'),
      ev.registered('db'),
      ev.started('db-0', 'db', 'cell-1', '10.255.1.9'),
      ev.started('web-0', 'web', 'cell-1', '10.255.1.9'), // a second writer raced past its decider: ignored
      ev.started('web-1', 'web', 'cell-1', '10.255.7.9'), // outside the cell's range: ignored
    ]),
  );
  t.equal(m.containers['web-0'], undefined);
  t.equal(m.containers['web-1'], undefined);
  t.equal(m.containersByIp['10.255.1.9'], 'db-0');
  const racing = foldEvents(m, record([ev.decommissioned('cell-1')], 7));
  t.equal(racing.cells['cell-1']?.status, 'active', 'a decommission racing a start loses: the cell still runs db-0');
});

t.test("through NATS: the outside tester's inputs are refused or harmless, and everything keeps running", async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells('cell-1', 'cell-2');
  const stack = await startStack(t, nats, ['cell-1', 'cell-2'], { agent: { heartbeatMs: 100 } });
  const log = new EventLog(gw.bus);

  // 1. prototype-name ids: refused when they name nothing, accepted as ordinary ids otherwise.
  t.match(await gw.intake('renameApp', { appId: 'constructor', name: 'x' }), { ok: false, code: 'app-not-found' });
  t.match(await gw.intake('startContainer', { containerId: 'c1', appId: 'hasOwnProperty', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' }), {
    ok: false,
    code: 'app-not-found',
  });
  const dry = await gw.http('POST', '/networking/v1/external/policies?dry_run=true', { body: { policies: [cfPolicy('toString', 'valueOf')] } });
  t.equal(dry.status, 403, 'a dry run naming unknown apps toString/valueOf is refused like any unknown app');
  const discovery = await startDiscovery({
    bus: await nats.connectAs('discovery'),
    log: nats.log,
    config: { ...defaultDiscoveryConfig, dnsPort: 0, httpPort: 0 },
  });
  t.teardown(() => discovery.stop());
  for (const [appId, name] of [
    ['constructor', 'constructor'],
    ['toString', 'keys'],
  ])
    t.match(await gw.intake('registerApp', { appId, name, spaceId: 's', orgId: 'o' }), { ok: true });
  t.match(await gw.intake('startContainer', { containerId: 'keys', appId: 'constructor', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' }), {
    ok: true,
    appended: 1,
  });
  t.match(await gw.intake('startContainer', { containerId: 'valueOf', appId: 'toString', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.2' }), {
    ok: true,
    appended: 1,
  });
  const add = await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('constructor', 'toString')] } });
  t.equal(add.status, 200);
  await stack.agents['cell-2']!.waitApplied(add.body.revision);
  t.equal(stack.planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 8080), true, 'constructor -> toString is enforced like any policy');
  t.equal(typeof Object.keys, 'function');
  // A dry run folds into a copy of the model: the copy keeps prototype-free records (toString has no policy yet).
  const dryOk = await gw.http('POST', '/networking/v1/external/policies?dry_run=true', {
    body: { policies: [cfPolicy('toString', 'constructor', 'tcp', 7000)] },
  });
  t.equal(dryOk.status, 200);
  t.same(dryOk.body.cells, { 'cell-1': { added: ['10.255.2.2 -> 10.255.1.2 tcp/7000'], removed: [] } });
  t.equal((Object.prototype.toString as unknown as Record<string, unknown>)['constructor|tcp|7000|7000'], undefined, 'nothing written onto a prototype');
  // The agent guards its registered range, not only the addresses it knows (CellRegistered reaches its rules).
  t.equal(stack.planes['cell-2']!.allows('10.255.1.2', '10.255.2.99', 'tcp', 8080), false, "an unknown address in cell-2's range is denied");
  t.same(stack.agents['cell-2']!.feed.view.state.cell['cell-2'], { subnet: '10.255.2.0/24' });
  // Discovery answers prototype names like any other; replay rebuilds the same cells.
  const lookup = async (name: string) => (await (await fetch(`${discovery.httpUrl}/v1/registration/${name}`)).json()) as { hosts: { ip_address: string }[] };
  await eventually(
    async () => ((await lookup('constructor.apps.internal')).hosts.length === 1 && (await lookup('keys.apps.internal')).hosts.length === 1) || undefined,
    10_000,
    'both names in discovery',
  );
  t.same(
    (await lookup('constructor.apps.internal')).hosts.map((h) => h.ip_address),
    ['10.255.1.2'],
  );
  t.same(
    (await lookup('keys.apps.internal')).hosts.map((h) => h.ip_address),
    ['10.255.2.2'],
  );
  t.same((await lookup('tostring.apps.internal')).hosts ?? [], [], 'an app id is not a name');
  const replayed = await replay(gw.bus, undefined, 'apps.internal');
  t.equal(replayed.ok, true, `replay agrees with planner and agents: ${JSON.stringify(replayed.cells)}`);

  // 2. Identity by IP cannot be borrowed; addresses outside the overlay or the cell are refused; nothing appended.
  const before = await log.lastSeq();
  t.match(await gw.intake('registerApp', { appId: 'web', name: 'web', spaceId: 's', orgId: 'o' }), { ok: true });
  const afterApp = await log.lastSeq();
  t.match(await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.2' }), {
    ok: false,
    code: 'ip-in-use',
  });
  for (const ip of ['192.168.77.5', '0.0.0.0', '255.255.255.255', '127.0.0.1', '8.8.8.8']) {
    t.match(await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-2', instanceIndex: 0, ip }), {
      ok: false,
      code: 'ip-outside-overlay',
    });
  }
  t.match(await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.1.77' }), {
    ok: false,
    code: 'ip-outside-cell',
  });
  t.equal(await log.lastSeq(), afterApp, 'no refused start appended anything');
  t.ok(afterApp > before);
  t.equal(stack.planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 8080), true, 'the holder keeps its identity');

  // 3. Unknown cells: refused; a registered cell nobody serves is silent and does not hold answers back.
  t.match(await gw.intake('startContainer', { containerId: 'c9', appId: 'web', cellId: 'cell9', instanceIndex: 0, ip: '10.255.9.2' }), {
    ok: false,
    code: 'cell-not-found',
  });
  await gw.registerCells(['cell9', '10.255.9.0/24']);
  t.match(await gw.intake('startContainer', { containerId: 'c9', appId: 'web', cellId: 'cell9', instanceIndex: 0, ip: '10.255.9.2' }), {
    ok: true,
    appended: 1,
  });
  const later = await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('web', 'toString', 'tcp', 9000)] } });
  await stack.planner.waitPublished(later.body.revision);
  await stack.agents['cell-2']!.waitApplied(later.body.revision);
  const answer = await waitEnforced(gw.bus, later.body.revision, 10_000);
  t.equal(answer.enforced, true, `enforced on every live cell: ${JSON.stringify(answer)}`);
  t.same(answer.silent, ['cell9'], 'and says which cell is silent');
  // ... but a live cell that lags still holds the answer back (its agent was heard moments ago).
  await stack.stopAgent('cell-2');
  const revoke = await gw.http('POST', '/networking/v1/external/policies/delete', { body: { policies: [cfPolicy('web', 'toString', 'tcp', 9000)] } });
  await stack.planner.waitPublished(revoke.body.revision);
  const lagging = await enforcementOf(gw.bus, revoke.body.revision);
  t.equal(lagging.enforced, false, 'cell-2 lags and is not silent yet');
  t.match(
    lagging.cells.find((c) => c.cellId === 'cell-2'),
    { ok: false, silent: false },
  );
  // Once its silence passes the threshold it is listed as silent instead (the clock is moved, not waited for).
  const muchLater = await enforcementOf(gw.bus, revoke.body.revision, { now: () => Date.now() + 60_000 });
  t.match(
    muchLater.cells.find((c) => c.cellId === 'cell-2'),
    { silent: true },
  );

  // A decommissioned cell takes no starts; a busy cell cannot be decommissioned.
  t.match(await gw.intake('decommissionCell', { cellId: 'cell9' }), { ok: false, code: 'cell-busy' });
  t.match(await gw.intake('stopContainer', { containerId: 'c9' }), { ok: true });
  t.match(await gw.intake('decommissionCell', { cellId: 'cell9' }), { ok: true, appended: 1 });
  t.match(await gw.intake('startContainer', { containerId: 'c10', appId: 'web', cellId: 'cell9', instanceIndex: 1, ip: '10.255.9.3' }), {
    ok: false,
    code: 'cell-decommissioned',
  });

  // A writer restarted on this log comes up with the same model (nothing in it stops a fold).
  const model = gw.writer.follower.state;
  await gw.stop();
  const again = await startGateway(t, nats);
  t.equal(stateHash(again.writer.follower.state), stateHash(model));
});

t.test('invalid entries in the log are skipped the same way by every fold and listed', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.intake('registerApp', { appId: 'a', name: 'a', spaceId: 's', orgId: 'o' });
  // A message that is not an event of this build (written by something other than the writer).
  await gw.bus.js.publish('nf.evt.app.b', '{"type":"AppRegistered","v":1}');
  await gw.bus.js.publish('nf.evt.app.c', 'not json');
  // The event that halted every follower for good before: AppRenamed of never-registered app `constructor`, as an
  // older writer appended it (its decider took Object.prototype.constructor for the app).
  const crafted = {
    id: '01JB0000000000000000000001',
    type: 'AppRenamed',
    v: 1,
    at: new Date().toISOString(),
    actor: 'platform:old',
    correlationId: 'c',
    data: { appId: 'constructor', name: 'x', previousName: 'Object' },
  };
  await gw.bus.js.publish('nf.evt.app.constructor', JSON.stringify(crafted));
  const r = await gw.intake('registerApp', { appId: 'd', name: 'd', spaceId: 's', orgId: 'o' });
  t.match(r, { ok: true, revision: 5 }, 'the writer kept folding past them');
  const q = gw.writer.follower.state.quarantine.entries;
  t.match(q, [
    { seq: 2, subject: 'nf.evt.app.b', reason: 'invalid' },
    { seq: 3, subject: 'nf.evt.app.c', reason: 'invalid', error: 'not JSON' },
  ]);
  t.equal(q.length, 2, 'the crafted event of an older writer folds as a no-op: not quarantined');
  const listed = await quarantined(gw.bus);
  t.same(listed.entries, q, "the operators' fold skips and lists them exactly as the writer does");
  t.equal(listed.revision, 5);
  const metrics = await (await fetch(`${gw.writer.url}/metrics`)).text();
  t.match(metrics, /netfold_events_quarantined\{[^}]*reason="invalid"[^}]*\} 2/);
  // A restart on this log comes up: a new writer and a planner fold all of it.
  await gw.stop();
  const again = await startGateway(t, nats);
  t.equal(again.writer.follower.seq, 5);
  t.same(again.writer.follower.state.quarantine.entries, q);
  const stack = await startStack(t, nats, []);
  t.equal(stack.planner.core.seq, 5, 'the planner caught up past them');
});

t.test("a log full of garbage does not flood the readers' logs: the first 100 one line each, then one line per 10,000", async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('garbage');
  const N = 20_050;
  const sends: Promise<unknown>[] = [];
  for (let i = 0; i < N; i++) {
    sends.push(bus.js.publish(`nf.evt.app.g${i % 50}`, i % 2 ? 'not json' : '{"type":"AppRegistered","v":1}'));
    if (sends.length === 512) await Promise.all(sends.splice(0));
  }
  await Promise.all(sends);
  await bus.js.publish(
    'nf.evt.app.ok',
    JSON.stringify({
      id: '01JB0000000000000000000009',
      type: 'AppRegistered',
      v: 1,
      at: new Date().toISOString(),
      actor: 'platform:t',
      correlationId: 'c',
      data: { appId: 'ok', name: 'ok', spaceId: 's', orgId: 'o' },
    }),
  );
  const lines: { msg: string; skipped?: number }[] = [];
  const log = pino({ level: 'warn' }, { write: (line: string) => void lines.push(JSON.parse(line)) });
  const follower = new LogFollower(bus, liveModelFold, log);
  t.teardown(() => follower.stop());
  await follower.start();
  t.equal(follower.seq, N + 1, 'read to the end');
  t.equal(follower.state.quarantine.invalid, N, 'every entry skipped and counted');
  t.ok(follower.state.apps.ok, 'the valid event after them folded');
  const count = (msg: string) => lines.filter((l) => l.msg === msg).length;
  t.equal(count('event-invalid') + count('event-not-json'), 100, 'the first 100 logged one by one');
  t.same(
    lines.filter((l) => l.msg === 'event-invalid-repeated').map((l) => l.skipped),
    [10_000, 20_000],
    'then one line per 10,000',
  );
});

t.test('a follower resuming at the end of the log (from a checkpoint, nothing new since) is started at once', async (t) => {
  const nats = await startNats(t);
  const bus = await nats.connect('resume');
  for (const id of ['a', 'b', 'c']) {
    const e = { id: `01JB00000000000000000000R${id}`, type: 'AppRegistered', v: 1, at: new Date().toISOString(), actor: 'platform:t', correlationId: 'c' };
    await bus.js.publish(`nf.evt.app.${id}`, JSON.stringify({ ...e, data: { appId: id, name: id, spaceId: 's', orgId: 'o' } }));
  }
  const first = new LogFollower(bus, liveModelFold, nats.log);
  await first.start();
  await first.stop();
  t.equal(first.seq, 3);
  // `netfold up` started a second time hung here for 600 s: the follower's progress began at 0, not at its state's.
  const resumed = new LogFollower(bus, liveModelFold, nats.log, { initialState: first.state });
  t.teardown(() => resumed.stop());
  const started = await Promise.race([resumed.start().then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 20_000).unref())]);
  t.ok(started, 'start() resolved without a new event');
  t.equal(resumed.seq, 3);
  await resumed.waitFor(3, 1000);
  t.pass('and waitFor(its revision) resolves at once');
});
