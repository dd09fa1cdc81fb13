// Egress (application security groups) end to end, as root: a cell and its containers as network namespaces, a
// stand-in "outside" namespace routed behind the cell (203.0.113.0/24), the real gateway, planner and agent with the
// nftables drivers; every rule proven with real TCP connections and real pings.
import t, { type Test } from 'tap';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway } from './harness/gateway.ts';
import { buildNet, isRoot, removeNetns, type Net } from './harness/netns.ts';
import { startPlanner, defaultPlannerConfig } from '../services/topology-planner/service.ts';
import { startCellAgent, defaultCellAgentConfig } from '../services/cell-agent/agent.ts';
import { NftDataplane, run } from '../services/cell-agent/dataplane.ts';
import { EGRESS_TABLE, EgressEnforcer, NftEgressDriver } from '../services/cell-agent/egress.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';

const SG = '/v3/security_groups';
const OUT = '203.0.113.5';
const OUT2 = '203.0.113.6';

/** A namespace standing for the world outside the overlay, behind cell `cell`: 203.0.113.5 and .6, serving `ports`. */
async function addOutside(t: Test, net: Net, cell: string, ports: number[]): Promise<string> {
  const ns = `${net.prefix}-out`;
  const [a, b] = [`${net.prefix}oa`, `${net.prefix}ob`];
  t.teardown(() => removeNetns(ns));
  await run('ip', ['netns', 'add', ns]);
  await run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
  await run('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
  await run('ip', ['link', 'set', a, 'netns', net.cellNs(cell)]);
  await run('ip', ['link', 'set', b, 'netns', ns]);
  await run('ip', ['-n', net.cellNs(cell), 'addr', 'add', '203.0.113.1/24', 'dev', a]);
  await run('ip', ['-n', net.cellNs(cell), 'link', 'set', a, 'up']);
  for (const addr of [OUT, OUT2]) await run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', b]);
  await run('ip', ['-n', ns, 'link', 'set', b, 'up']);
  await run('ip', ['-n', ns, 'route', 'add', '10.255.0.0/16', 'via', '203.0.113.1']);
  const server = net.tool(ns, 'serve', ...ports.map(String));
  await new Promise<void>((resolve, reject) => {
    server.stdout!.once('data', (d: Buffer) => (d.toString().startsWith('ready') ? resolve() : reject(new Error(d.toString()))));
  });
  return ns;
}

/** One ping from a container's namespace: true when answered within a second. */
async function ping(net: Net, from: string, addr: string): Promise<boolean> {
  return run('ip', ['netns', 'exec', net.containers[from]!.ns, 'ping', '-c', '1', '-W', '1', addr]).then(
    () => true,
    () => false,
  );
}

t.test('security groups enforced by nftables between namespaces', { skip: isRoot() ? false : 'needs root (network namespaces and nftables)' }, async (t) => {
  const net = await buildNet(
    t,
    { A: 1 },
    {
      web: ['A', '10.255.1.2'],
      stager: ['A', '10.255.1.3'],
      other: ['A', '10.255.1.4'],
    },
  );
  await addOutside(t, net, 'A', [443, 5432, 8443, 9443]);

  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells(['cell-A', '10.255.1.0/24']);
  const planner = await startPlanner({ bus: await nats.connectAs('planner'), log: nats.log, config: { ...defaultPlannerConfig, heartbeatMs: 100 } });
  t.teardown(() => planner.stop());
  const egress = new EgressEnforcer({ overlayCidr: '10.255.0.0/16', egressDefault: 'deny', driver: new NftEgressDriver(net.cellNs('A')) });
  const agent = await startCellAgent({
    bus: await nats.connectAs('agent_cell-A'),
    log: nats.log,
    config: { ...defaultCellAgentConfig, cellId: 'cell-A', driftIntervalMs: 200 },
    dataplane: new NftDataplane({ overlayCidr: '10.255.0.0/16', netns: net.cellNs('A') }),
    egress,
  });
  t.teardown(() => agent.stop());

  t.match(await gw.intake('registerApp', { appId: 'app-web', name: 'web', spaceId: 's1', orgId: 'o1' }), { ok: true });
  t.match(await gw.intake('registerApp', { appId: 'app-other', name: 'other', spaceId: 's2', orgId: 'o1' }), { ok: true });
  const start = async (id: string, appId: string, lifecycle: 'running' | 'staging') => {
    const c = net.containers[id]!;
    const r = await gw.intake('startContainer', { containerId: id, appId, cellId: 'cell-A', instanceIndex: id === 'stager' ? 1 : 0, ip: c.ip, lifecycle });
    t.match(r, { ok: true });
    return r.ok ? r.revision : 0;
  };
  await start('web', 'app-web', 'running');
  await start('stager', 'app-web', 'staging');
  const last = await start('other', 'app-other', 'running');
  await agent.waitApplied(last);
  /** Applies a gateway write and waits until every cell enforces it. */
  const write = async (method: string, path: string, body?: unknown) => {
    const r = await gw.http(method, path, body === undefined ? {} : { body });
    t.ok(r.status < 300, `${method} ${path} -> ${r.status}`);
    const enforced = await waitEnforced(gw.bus, Number(r.headers['x-netfold-revision']), 10_000);
    t.equal(enforced.enforced, true, 'enforced on every cell');
    return r;
  };

  t.equal(await net.probeAddr('web', OUT, 443), 'refused', 'no group applies: denied by default (--egress-default deny)');
  t.equal(await ping(net, 'web', OUT), false, 'ping denied by default too');

  const created = await write('POST', SG, {
    name: 'public-api',
    rules: [
      { protocol: 'tcp', destination: OUT, ports: '443,8000-9000', description: 'the API' },
      { protocol: 'icmp', destination: '203.0.113.0/30,203.0.113.4-203.0.113.5', type: 8, code: -1 },
    ],
    relationships: { running_spaces: { data: [{ guid: 's1' }] } },
  });
  const guid = created.body.guid as string;
  t.equal(await net.probeAddr('web', OUT, 443), 'open', 'allowed destination and port');
  t.equal(await net.probeAddr('web', OUT, 8443), 'open', 'a port inside the allowed range');
  t.equal(await net.probeAddr('web', OUT, 5432), 'refused', 'another port: refused');
  t.equal(await net.probeAddr('web', OUT2, 443), 'refused', 'another destination: refused');
  t.equal(await net.probeAddr('other', OUT, 443), 'refused', 'a container of an unbound space: refused');
  t.equal(await net.probeAddr('stager', OUT, 443), 'refused', 'a staging container: the group is bound for running only');
  t.equal(await ping(net, 'web', OUT), true, 'icmp echo-request (type 8) allowed to .5');
  t.equal(await ping(net, 'web', OUT2), false, 'icmp to .6: not in the rule');

  // A change applies incrementally, without restarting anything (the same agent, one whole load ever).
  const fullBefore = egress.loads.full;
  await write('PATCH', `${SG}/${guid}`, {
    rules: [
      { protocol: 'tcp', destination: `${OUT},${OUT2}`, ports: '443,5432', log: true },
      { protocol: 'icmp', destination: OUT, type: 13, code: 0 },
    ],
  });
  t.equal(await net.probeAddr('web', OUT, 5432), 'open', 'the updated rule allows 5432');
  t.equal(await net.probeAddr('web', OUT2, 443), 'open', 'and the second destination');
  t.equal(await net.probeAddr('web', OUT, 8443), 'refused', 'the old range is gone');
  t.equal(await ping(net, 'web', OUT), false, 'icmp by type: only timestamp (13) is allowed now, so echo-request is refused');
  t.equal(egress.loads.full, fullBefore, 'no whole load of the table for the change');
  t.ok(egress.loads.incremental >= 2, 'applied as differences');

  // Binding the staging space lets the staging container out.
  await write('POST', `${SG}/${guid}/relationships/staging_spaces`, { data: [{ guid: 's1' }] });
  t.equal(await net.probeAddr('stager', OUT, 443), 'open', 'bound for staging: allowed');
  t.match(
    agent.status()?.egress,
    { bound: 2, groups: 1, rules: 3, refused: 0 },
    'the status counts the nft rules: .5 and .6 merged into one range x 2 ports, + 1 icmp',
  );

  // `log: true` puts an nft log statement naming the group in the rule; the kernel writes a line per new connection.
  const listing = await run('ip', ['netns', 'exec', net.cellNs('A'), 'nft', 'list', 'table', 'inet', EGRESS_TABLE]);
  t.match(listing, /log prefix "netfold-asg public-api " accept/, 'the logging rule is installed with a prefix naming the group');
  const logAll = (await run('sysctl', ['-n', 'net.netfilter.nf_log_all_netns']).catch(() => '')).trim();
  const kernelLog = await run('dmesg', []).then(
    () => true,
    () => false,
  );
  if (logAll === '' || !kernelLog) {
    t.comment(
      `the kernel log cannot be read here (nf_log_all_netns ${logAll || 'absent'}, dmesg ${kernelLog ? 'readable' : 'unreadable'}): the rule is proven installed with its prefix above`,
    );
  } else {
    // nf_log writes only for the initial namespace unless this is 1: switched on for the test, restored after
    t.teardown(() => run('sysctl', ['-q', '-w', `net.netfilter.nf_log_all_netns=${logAll}`]).then(() => undefined));
    await run('sysctl', ['-q', '-w', 'net.netfilter.nf_log_all_netns=1']);
    t.equal(await net.probeAddr('web', OUT2, 5432), 'open');
    const line = await eventually(
      async () => (await run('dmesg', [])).split('\n').find((l) => l.includes('netfold-asg public-api') && l.includes(`DST=${OUT2}`) && l.includes('DPT=5432')),
      5000,
      'a kernel log line for the logged connection',
    );
    t.match(line, /SRC=10\.255\.1\.2 DST=203\.0\.113\.6 .*PROTO=TCP .*DPT=5432/, 'the kernel log names the group, source, destination and port');
  }

  // Someone flushes a chain of the egress table (a flushed chain reached by goto falls through to the base chain's
  // accept: wider): the agent's drift check notices and loads the table whole again.
  await agent.checkDrift(); // the first check after the last load reads the table as loaded
  const repairs = agent.status()?.driftRepairs ?? 0;
  await run('ip', ['netns', 'exec', net.cellNs('A'), 'nft', 'flush', 'chain', 'inet', EGRESS_TABLE, 's_s1_s']);
  await eventually(() => ((agent.status()?.driftRepairs ?? 0) > repairs ? true : undefined), 10_000, 'the egress table repaired');
  t.match(agent.status()?.lastRepair, { drift: 'egress-table-changed' }, 'the status says the egress table was repaired');
  t.equal(await net.probeAddr('stager', OUT, 8443), 'refused', 'enforced again after the repair');
  t.equal(await net.probeAddr('stager', OUT, 443), 'open', 'and what is allowed still is');
  await run('ip', ['netns', 'exec', net.cellNs('A'), 'nft', 'delete', 'table', 'inet', EGRESS_TABLE]);
  await eventually(() => ((agent.status()?.driftRepairs ?? 0) > repairs + 1 ? true : undefined), 10_000, 'the deleted egress table repaired');
  t.match(agent.status()?.lastRepair, { drift: 'egress-table-missing' });
  t.equal(await net.probeAddr('other', OUT, 443), 'refused', 'enforced again after the table was deleted');
  const fullBeforeUnbind = egress.loads.full;

  // Unbinding and deleting close it again.
  const unbound = await gw.http('DELETE', `${SG}/${guid}/relationships/running_spaces/s1`);
  t.equal(unbound.status, 204);
  await agent.waitApplied(Number(unbound.headers['x-netfold-revision']));
  t.equal(await net.probeAddr('web', OUT, 443), 'refused', 'unbound: denied again');
  t.equal(await net.probeAddr('stager', OUT, 443), 'open', 'the staging binding stays');
  const deleted = await gw.http('DELETE', `${SG}/${guid}`);
  t.equal(deleted.status, 202);
  await agent.waitApplied(Number(deleted.headers['x-netfold-revision']));
  t.equal(await net.probeAddr('stager', OUT, 443), 'refused', 'deleted: denied again');
  t.equal(egress.loads.full, fullBeforeUnbind, 'no whole load for the unbind and the delete');
  t.equal(egress.loads.full, 3, 'whole loads: the first, and one per repair');
  t.match(agent.status(), { error: null });
});
