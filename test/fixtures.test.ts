// Recorded event logs (test/fixtures/*.jsonl, written by scripts/record-fixture.ts against a real server) must
// always still parse and fold to the same state: an old log never stops replaying.
import t from 'tap';
import { loadFixture as load } from './harness/events.ts';
import { allPolicies, foldEvents, initialModel } from '../projections/model.ts';
import { stateHash } from '../projections/canonical.ts';
import { PlannerCore } from '../services/topology-planner/core.ts';

t.test('events-v1.jsonl folds to its known state', async (t) => {
  const recs = load('events-v1.jsonl');
  t.equal(recs.length, 19);
  const m = foldEvents(initialModel(), recs);
  t.equal(m.seq, 19);
  t.same(
    allPolicies(m).map((p) => `${p.sourceAppId}>${p.destAppId}/${p.protocol}:${p.startPort}-${p.endPort}`),
    ['app-api>app-db/tcp:5432-5432', 'app-web>app-api/tcp:8080-8080'],
  );
  t.same(m.containersByCell, { 'cell-1': { 'web-0': true, 'api-1': true }, 'cell-2': { 'api-0': true }, 'cell-3': { 'db-0': true, 'cache-0': true } });
  t.same(m.appIdByName, { web: 'app-web', backend: 'app-api', db: 'app-db' });
  t.equal(m.containers['cache-9']?.status, 'stopped');
  // The model as it was before cells, IP holders, the quarantine and security groups were folded: unchanged, hash for hash.
  const { cells, containersByIp, quarantine, appsBySpace, securityGroups, securityGroupIdByName, securityGroupsBySpace, globalSecurityGroups, ...before } = m;
  t.same(
    { securityGroups, securityGroupIdByName, securityGroupsBySpace, globalSecurityGroups },
    { securityGroups: {}, securityGroupIdByName: {}, securityGroupsBySpace: {}, globalSecurityGroups: { running: {}, staging: {} } },
    'a v1 log has no security groups',
  );
  t.same(appsBySpace, { 'space-1': { 'app-web': true, 'app-api': true }, 'space-2': { 'app-db': true } }, 'live apps by space');
  t.notOk(
    Object.values(m.containers).some((c) => 'lifecycle' in c),
    'v1 starts upcast to running: the model records no lifecycle for them',
  );
  t.equal(stateHash(before), 'adafd3da1b18599b94dcd67673408f041b009cf95f702807d72b2fd94130d68a', 'the model hash is pinned');
  t.same(cells, {}, 'a v1 log registers no cells (its starts predate cell registration and still fold)');
  t.same(quarantine, { invalid: 0, foldFailed: 0, entries: [] });
  t.same(Object.keys(containersByIp).length, Object.values(m.containers).filter((c) => c.status === 'running').length, 'one holder per running container');
});

t.test('events-v1.jsonl gives known per-cell hashes through the planner', async (t) => {
  const recs = load('events-v1.jsonl');
  const core = new PlannerCore({ domain: 'apps.internal', snapshotEvery: 64, owns: () => true });
  core.ingest(recs);
  t.same(core.cells(), {
    'cell-1': { revision: 19, hash: '7eb0b3ef09439cc2917bab54c68b1bcc' },
    'cell-2': { revision: 16, hash: 'a5f6a3465a7bfd4b961e956793aa9ac8' },
    'cell-3': { revision: 19, hash: '2436dae7b8739850f3672c438081438e' },
  });
  // What the hashes stand for, readably: db on cell-3 may be reached by both api instances on 5432 only.
  t.same(core.cellState('cell-3')?.ingress, {
    'app-db': { 'app-api|tcp|5432|5432': { sourceAppId: 'app-api', protocol: 'tcp', startPort: 5432, endPort: 5432 } },
  });
  t.same(core.cellState('cell-3')?.sources, { 'app-api': { '10.255.2.3': true, '10.255.1.3': true } });
  t.same(Object.keys(core.cellState('cell-1')?.names ?? {}).sort(), [
    '0.web.apps.internal',
    '1.backend.apps.internal',
    'backend.apps.internal',
    'web.apps.internal',
  ]);
});

t.test('events-v1.jsonl replayed from a real stream gives the same per-cell hashes', async (t) => {
  const { startNats } = await import('./harness/nats.ts');
  const { replay } = await import('../cli/operators.ts');
  const nats = await startNats(t);
  await nats.connect('fixture'); // the admin creates the streams
  const writer = await nats.connectAs('writer'); // the event log's one appender
  const bus = await nats.connectAs('operator'); // replay is an operator's tool
  for (const rec of load('events-v1.jsonl')) {
    const ack = await writer.js.publish(rec.subject, JSON.stringify(rec.event), { msgID: rec.event.id });
    t.equal(ack.seq, rec.seq, `stored at its recorded revision ${rec.seq}`);
  }
  const report = await replay(bus, undefined, 'apps.internal');
  t.same(Object.fromEntries(report.cells.map((c) => [c.cellId, c.replayed])), {
    'cell-1': '7eb0b3ef09439cc2917bab54c68b1bcc',
    'cell-2': 'a5f6a3465a7bfd4b961e956793aa9ac8',
    'cell-3': '2436dae7b8739850f3672c438081438e',
  });
});

t.test('cells-v1.jsonl: v1 cell registrations upcast (no underlay, not leased) and fold as before', async (t) => {
  const recs = load('cells-v1.jsonl');
  const first = recs[0]!.event;
  t.same(
    { type: first.type, v: first.v, data: first.data },
    {
      type: 'CellRegistered',
      v: 2,
      data: { cellId: 'cell-1', subnet: '10.255.1.0/24', underlay: null, leased: false },
    },
  );
  const m = foldEvents(initialModel(), recs);
  t.same(
    Object.values(m.cells).map((c) => [c.id, c.subnet, c.underlay, c.leased, c.status]),
    [
      ['cell-1', '10.255.1.0/24', null, false, 'active'],
      ['cell-2', '10.255.2.0/24', null, false, 'decommissioned'],
    ],
  );
  t.equal(m.containersByIp['10.255.1.2'], 'web-0');
  const core = new PlannerCore({ domain: 'apps.internal', snapshotEvery: 64, owns: () => true });
  core.ingest(recs);
  t.same(core.cellState('cell-1')?.cell, { 'cell-1': { subnet: '10.255.1.0/24' } });
  t.same(core.cellState('cell-1')?.topology, {}, 'cells without an underlay address are in no topology');
});
