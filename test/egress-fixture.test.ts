// A recorded log with application security groups (test/fixtures/egress-v1.jsonl, written by
// scripts/record-egress-fixture.ts through the real gateway and intake) must always still parse and fold to the same
// groups and the same per-cell states, through the model and through a replay from a real stream.
import t from 'tap';
import { loadFixture as load } from './harness/events.ts';
import { allSecurityGroups, foldEvents, initialModel } from '../projections/model.ts';
import { PlannerCore } from '../services/topology-planner/core.ts';

/** Pinned when the fixture was recorded: the planner's and a replay's states must hash the same for ever. */
const HASHES = { 'cell-1': '275c73c2eb49350a1156b1b742fc3ec7', 'cell-2': '2a2aaef19fe7201cb596352c14c254a9' };

t.test('egress-v1.jsonl folds to its known groups and cell states', async (t) => {
  const recs = load('egress-v1.jsonl');
  t.equal(recs.length, 17);
  const m = foldEvents(initialModel(), recs);
  t.same(
    allSecurityGroups(m).map((g) => ({
      name: g.name,
      rules: g.rules.length,
      global: g.globallyEnabled,
      running: Object.keys(g.spaces.running),
      staging: Object.keys(g.spaces.staging),
    })),
    [
      { name: 'dns-servers', rules: 1, global: { running: false, staging: true }, running: ['space-2'], staging: [] },
      { name: 'public-api', rules: 1, global: { running: false, staging: false }, running: [], staging: ['space-1'] },
    ],
  );
  t.equal(m.containers['web-s']?.lifecycle, 'staging', 'the staging container recorded as such');
  const core = new PlannerCore({ domain: 'apps.internal', snapshotEvery: 64, owns: () => true });
  core.ingest(recs);
  t.same(Object.fromEntries(Object.entries(core.cells()).map(([c, v]) => [c, v.hash])), HASHES);
  t.same(
    core.cellState('cell-2')?.egress,
    { 'space-2|running': { ips: { '10.255.2.3': true }, groups: [allSecurityGroups(m)[0]!.id] } },
    'db-0: the dns group, bound to space-2',
  );
  t.same(core.cellState('cell-1')?.egress, {}, 'web-0: public-api was unbound from running, dns is global for staging only');
});

t.test('egress-v1.jsonl replayed from a real stream gives the same per-cell hashes', async (t) => {
  const { startNats } = await import('./harness/nats.ts');
  const { replay } = await import('../cli/operators.ts');
  const nats = await startNats(t);
  await nats.connect('fixture');
  const writer = await nats.connectAs('writer');
  const bus = await nats.connectAs('operator');
  for (const rec of load('egress-v1.jsonl')) {
    const ack = await writer.js.publish(rec.subject, JSON.stringify(rec.event), { msgID: rec.event.id });
    t.equal(ack.seq, rec.seq, `stored at its recorded revision ${rec.seq}`);
  }
  const report = await replay(bus, undefined, 'apps.internal');
  t.same(Object.fromEntries(report.cells.map((c) => [c.cellId, c.replayed])), HASHES);
});
