// End to end, as root: two cells and their containers as network namespaces, the real gateway, planner and two
// cell agents with the nftables driver against a real nats-server; policy proven with real TCP connections.
import t from 'tap';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { buildNet, isRoot } from './harness/netns.ts';
import { startPlanner, defaultPlannerConfig } from '../services/topology-planner/service.ts';
import { startCellAgent, defaultCellAgentConfig, type CellAgent } from '../services/cell-agent/agent.ts';
import { NftDataplane, run } from '../services/cell-agent/dataplane.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';

const P = '/networking/v1/external/policies';

t.test('real nftables enforcement between namespaces', { skip: isRoot() ? false : 'needs root (network namespaces and nftables); CI runs as root' }, async (t) => {
  const net = await buildNet(t, { A: 1, B: 2 }, {
    front: ['A', '10.255.1.2'],
    back1: ['A', '10.255.1.3'],
    back2: ['B', '10.255.2.2'],
    other: ['B', '10.255.2.3'],
    late: ['B', '10.255.2.4'],
  });
  for (const c of ['back1', 'back2', 'other', 'late']) await net.serve(c, 8080, 8081, 9000);

  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells(['cell-A', '10.255.1.0/24'], ['cell-B', '10.255.2.0/24']);
  const planner = await startPlanner({ bus: await nats.connectAs('planner'), log: nats.log, config: { ...defaultPlannerConfig, heartbeatMs: 100 } });
  t.teardown(() => planner.stop());
  const agents: Record<string, CellAgent> = {};
  const planes: NftDataplane[] = [];
  const startAgent = async (cell: string) => {
    const dataplane = new NftDataplane({ overlayCidr: '10.255.0.0/16', netns: net.cellNs(cell) });
    planes.push(dataplane);
    const agent = await startCellAgent({
      bus: await nats.connectAs(`agent_cell-${cell}`),
      log: nats.log,
      config: { ...defaultCellAgentConfig, cellId: `cell-${cell}`, driftIntervalMs: 200 },
      dataplane,
    });
    agents[cell] = agent;
    return agent;
  };
  t.teardown(async () => {
    for (const a of Object.values(agents)) await a.stop();
  });
  await startAgent('A');
  await startAgent('B');

  for (const [appId, name] of [['app-front', 'front'], ['app-back', 'back'], ['app-other', 'other']]) {
    t.match(await gw.intake('registerApp', { appId, name, spaceId: 's1', orgId: 'o1' }), { ok: true });
  }
  const start = async (id: string, appId: string, index: number) => {
    const c = net.containers[id]!;
    const r = await gw.intake('startContainer', { containerId: id, appId, cellId: `cell-${c.cell}`, instanceIndex: index, ip: c.ip });
    t.match(r, { ok: true });
    return r.ok ? r.revision : 0;
  };
  await start('front', 'app-front', 0);
  await start('back1', 'app-back', 0);
  await start('back2', 'app-back', 1);
  const last = await start('other', 'app-other', 0);
  await agents.A!.waitApplied(0);
  await planner.waitPublished(last);
  await agents.B!.waitApplied(last);

  t.equal(await net.probe('front', 'back1', 8080), 'refused', 'same cell: denied by default');
  t.equal(await net.probe('front', 'back2', 8080), 'refused', 'other cell: denied by default');

  const added = await gw.http('POST', P, { body: { policies: [cfPolicy('app-front', 'app-back', 'tcp', 8080, 8081)] } });
  t.equal(added.status, 200);
  const enforced = await waitEnforced(gw.bus, added.body.revision, 10_000); // what `netfold wait` does
  t.equal(enforced.enforced, true, 'wait returns: enforced on every cell');
  t.equal(await net.probe('front', 'back1', 8080), 'open', 'allowed on the same cell once applied');
  t.equal(await net.probe('front', 'back2', 8081), 'open', 'allowed across cells once applied');
  t.equal(await net.probe('front', 'back2', 9000), 'refused', 'a port outside the range is still denied');
  t.equal(await net.probe('front', 'other', 8080), 'refused', 'another destination app is still denied');
  t.equal(await net.probe('other', 'back2', 8080), 'refused', 'another source app is still denied');
  t.equal(await net.probe('back1', 'front', 8080).then((r) => r === 'open'), false, 'policies are one-way');
  t.match(agents.B!.status(), { revision: added.body.revision, rules: { local: 2, allows: 1 }, error: null }, 'front -> back2 is the one allowed flow into cell B');

  // An established connection survives a reload of the table.
  const conn = await net.hold('front', 'back2', 8080);
  t.equal(await conn.send('before'), 'echo:before');
  const more = await gw.http('POST', P, { body: { policies: [cfPolicy('app-other', 'app-back', 'udp', 53)] } });
  await agents.B!.waitApplied(more.body.revision);
  t.equal(await conn.send('after-reload'), 'echo:after-reload', 'established connection kept across the reload');

  // A container started later on another cell is reachable once its start has converged.
  const lateRev = await start('late', 'app-back', 2);
  await agents.B!.waitApplied(lateRev);
  t.equal(await net.probe('front', 'late', 8080), 'open', 'the new instance is reachable');

  // Deleting the policy denies new connections.
  const del = await gw.http('POST', `${P}/delete`, { body: { policies: [cfPolicy('app-front', 'app-back', 'tcp', 8080, 8081)] } });
  await agents.A!.waitApplied(del.body.revision);
  await agents.B!.waitApplied(del.body.revision);
  t.equal(await net.probe('front', 'back1', 8080), 'refused', 'denied again after the delete (same cell)');
  t.equal(await net.probe('front', 'back2', 8080), 'refused', 'denied again after the delete (other cell)');
  conn.close();

  // Someone flushes the table, then deletes it: each time the agent notices (every 200 ms here) and restores it.
  const repairs = () => agents.A!.status()?.driftRepairs ?? 0;
  await run('ip', ['netns', 'exec', net.cellNs('A'), 'nft', 'flush', 'table', 'inet', 'netfold']);
  await eventually(() => (repairs() >= 1 ? true : undefined), 10_000, 'the flushed table repaired');
  t.equal(await net.probe('front', 'back1', 8080), 'refused', 'enforced again after repairing a flush');
  await run('ip', ['netns', 'exec', net.cellNs('A'), 'nft', 'delete', 'table', 'inet', 'netfold']);
  await eventually(() => (repairs() >= 2 ? true : undefined), 10_000, 'the deleted table repaired');
  t.equal(await net.probe('front', 'back1', 8080), 'refused', 'enforced again after repairing a delete');
  t.match(agents.A!.status()?.lastRepair, { drift: 'table-missing' }, 'the status says what was repaired');
  t.equal(await agents.A!.checkDrift(), false, 'nothing left to repair');

  // A stopped agent leaves its rules in place; a new one adopts the table without a gap.
  await agents.A!.stop();
  delete agents.A;
  t.equal(await net.probe('front', 'back1', 8080), 'refused', 'still enforced while the agent is away');
  const again = await gw.http('POST', P, { body: { policies: [cfPolicy('app-front', 'app-back', 'tcp', 8080, 8080)] } });
  const agentA = await startAgent('A');
  await agentA.waitApplied(again.body.revision);
  t.equal(await net.probe('front', 'back1', 8080), 'open', 'the restarted agent applies what changed meanwhile');
  t.equal(await net.probe('front', 'back1', 8081), 'refused');
  t.ok(planes.some((p) => p.loads.incremental > 0) && planes.every((p) => p.loads.full >= 1), 'both whole loads and incremental changes were exercised');
});
