// End to end, as root: modular network topology. Three cells, each a host namespace with its own underlay address
// (vxlan: behind a router, one /30 per host, no shared L2; routed: on one bridge), cells leased their ranges by the
// writer, agents with the nftables dataplane and a network driver, containers created only by invoking netfold-cni
// as a container runtime does. Real TCP and UDP across cells through the overlay with policy on top; DEL frees the
// address and removes the interface; CHECK fails on a deleted veth; a cell joining or leaving changes every other
// cell's routes; drift (a deleted route, forwarding entry) is repaired; netfold-cni chained with Debian's portmap.
import t, { type Test } from 'tap';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { isRoot } from './harness/netns.ts';
import { MGMT_ADDRESS, NETFOLD_CNI, buildUnderlay, type Underlay } from './harness/topology.ts';
import { startPlanner, defaultPlannerConfig } from '../services/topology-planner/service.ts';
import { startCellAgent, defaultCellAgentConfig, type CellAgent } from '../services/cell-agent/agent.ts';
import { NftDataplane, run } from '../services/cell-agent/dataplane.ts';
import { ROUTE_PROTO, vtepMacOf } from '../services/cell-agent/network-drivers.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';

const P = '/networking/v1/external/policies';
const skip = isRoot() ? false : 'needs root (network namespaces, veth, VXLAN, nftables); CI runs as root';

async function setUp(t: Test, kind: 'vxlan' | 'routed', cells: string[]) {
  const net: Underlay = await buildUnderlay(t, kind, cells);
  const nats = await startNats(t, { host: MGMT_ADDRESS });
  const gw = await startGateway(t, nats);
  const planner = await startPlanner({ bus: await nats.connectAs('planner'), log: nats.log, config: { ...defaultPlannerConfig, heartbeatMs: 100 } });
  t.teardown(() => planner.stop());
  const agents = new Map<string, CellAgent>();
  t.teardown(async () => {
    for (const a of agents.values()) await a.stop();
  });
  const join = async (cellId: string) => {
    const host = net.hosts.get(cellId) ?? (await net.addHost(cellId));
    const reg = await gw.intake('registerCell', { cellId, underlay: host.underlay });
    t.match(reg, { ok: true }, `${cellId} joins at ${host.underlay}`);
    const agent = await startCellAgent({
      bus: await nats.connectAs(`agent_${cellId}`),
      log: nats.log,
      config: {
        ...defaultCellAgentConfig,
        cellId,
        driftIntervalMs: 200,
        network: { ...defaultCellAgentConfig.network, driver: kind, underlay: host.underlay, netns: host.ns },
      },
      dataplane: new NftDataplane({ overlayCidr: '10.255.0.0/16', netns: host.ns }),
    });
    agents.set(cellId, agent);
    return reg.ok ? reg.subnet! : '';
  };
  const leases = new Map<string, string>();
  for (const c of cells) leases.set(c, await join(c));
  for (const [appId, name] of [
    ['app-front', 'front'],
    ['app-back', 'back'],
    ['app-other', 'other'],
  ]) {
    await gw.intake('registerApp', { appId, name, spaceId: 's1', orgId: 'o1' });
  }
  const creds = await nats.credsFile('platform_cni');
  const conf = { cniVersion: '1.0.0', name: 'netfold', type: 'netfold-cni', cellId: '', natsUrl: nats.server.url, natsCreds: creds, waitReady: true };
  /** The runtime's side of a container: its namespace, and ADD through netfold-cni. */
  const container = async (name: string, cellId: string, appId: string, index: number) => {
    const netns = await net.newContainerNs(name);
    const env = {
      CNI_COMMAND: 'ADD',
      CNI_CONTAINERID: name,
      CNI_NETNS: netns,
      CNI_IFNAME: 'eth0',
      CNI_ARGS: `NETFOLD_APP_ID=${appId};NETFOLD_INSTANCE_INDEX=${index}`,
      CNI_PATH: '/usr/lib/cni',
    };
    const added = await net.plugin(cellId, NETFOLD_CNI, env, { ...conf, cellId });
    t.equal(added.code, 0, `ADD ${name} on ${cellId}: ${added.stdout.trim()}`);
    return { name, cellId, netns, env, result: added.body!, ip: String(added.body?.ips?.[0]?.address ?? '').split('/')[0]! };
  };
  /** Our routes on a host, as "range via gateway". */
  const routesOn = async (cellId: string) =>
    (await net.ipJson(cellId, 'route', 'show', 'proto', String(ROUTE_PROTO))).map((r) => `${r.dst as string} via ${r.gateway as string}`).sort();
  const routesEverywhere = (expected: (cellId: string) => string[], what: string) =>
    eventually(
      async () => {
        for (const c of agents.keys()) if (JSON.stringify(await routesOn(c)) !== JSON.stringify(expected(c).sort())) return undefined;
        return true;
      },
      15_000,
      what,
    );
  return { net, nats, gw, agents, leases, join, conf, container, routesOn, routesEverywhere };
}

/** What a driver routes to a remote range: vxlan via its VTEP address (the range's network address), routed via its underlay address. */
const viaOf = (kind: 'vxlan' | 'routed', subnet: string, underlay: string) => (kind === 'vxlan' ? subnet.split('/')[0]! : underlay);

t.test('vxlan: three cells behind a router (no shared L2), containers by netfold-cni, TCP and UDP with policy', { skip }, async (t) => {
  const s = await setUp(t, 'vxlan', ['cell-a', 'cell-b', 'cell-c']);
  const { net, gw, agents, leases } = s;
  t.same([...leases.values()], ['10.255.0.0/24', '10.255.1.0/24', '10.255.2.0/24'], 'each cell leased the next /24');
  const expected = (cell: string) =>
    [...leases.entries()].filter(([c]) => c !== cell).map(([c, subnet]) => `${subnet} via ${viaOf('vxlan', subnet, net.hosts.get(c)!.underlay)}`);
  await s.routesEverywhere(expected, 'every cell routes to the two others');

  const front = await s.container('front0', 'cell-a', 'app-front', 0);
  const back0 = await s.container('back0', 'cell-b', 'app-back', 0);
  const back1 = await s.container('back1', 'cell-c', 'app-back', 1);
  const other = await s.container('other0', 'cell-c', 'app-other', 0);
  t.same([front.ip, back0.ip, back1.ip, other.ip], ['10.255.0.2', '10.255.1.2', '10.255.2.2', '10.255.2.3'], "addresses from each cell's lease");
  for (const c of [back0, back1, other]) {
    await net.serve(c.netns, 'tcp', 8080);
    await net.serve(c.netns, 'udp', 5353);
  }
  t.equal(await net.probe(front.netns, back0.ip, 8080), 'refused', 'across cells: denied by default');
  t.equal(await net.probe(front.netns, back0.ip, 5353, 'udp'), 'refused', 'UDP across cells: denied by default');

  const added = await gw.http('POST', P, {
    body: { policies: [cfPolicy('app-front', 'app-back', 'tcp', 8080, 8080), cfPolicy('app-front', 'app-back', 'udp', 5353, 5353)] },
  });
  t.equal(added.status, 200);
  t.equal((await waitEnforced(gw.bus, added.body.revision, 15_000)).enforced, true);
  t.equal(await net.probe(front.netns, back0.ip, 8080), 'open', 'TCP a -> b through the overlay: allowed');
  t.equal(await net.probe(front.netns, back1.ip, 8080), 'open', 'TCP a -> c: allowed');
  t.equal(await net.probe(front.netns, back0.ip, 5353, 'udp'), 'open', 'UDP a -> b: allowed');
  t.equal(await net.probe(front.netns, other.ip, 8080), 'refused', 'another destination app: denied');
  t.equal(await net.probe(other.netns, back1.ip, 8080), 'refused', 'same cell, no policy: denied');
  t.equal(await net.probe(other.netns, back0.ip, 5353, 'udp'), 'refused', 'UDP from another source app: denied');

  // CHECK: fine as ADD left it; fails once the veth is gone.
  const check = (c: typeof back1) =>
    net.plugin(c.cellId, NETFOLD_CNI, { ...c.env, CNI_COMMAND: 'CHECK' }, { ...s.conf, cellId: c.cellId, prevResult: c.result });
  t.equal((await check(back1)).code, 0, 'CHECK passes');
  await net.ipIn('cell-c', 'link', 'del', String(back1.result.interfaces[0].name));
  const failed = await check(back1);
  t.equal(failed.code, 1);
  t.match(failed.body, { cniVersion: '1.0.0', code: 101, msg: /host end .* missing/ }, 'CHECK fails on a deleted veth');

  // DEL: the interface goes, the stop is reported, the address is free again; a second DEL succeeds.
  const del = (c: typeof back0) => net.plugin(c.cellId, NETFOLD_CNI, { ...c.env, CNI_COMMAND: 'DEL' }, { ...s.conf, cellId: c.cellId, prevResult: c.result });
  t.same(await del(back0), { stdout: '', code: 0, body: undefined });
  t.same(await net.ipJson('cell-b', 'link', 'show', 'dev', String(back0.result.interfaces[0].name)).catch(() => []), [], 'the host end is gone');
  const inside = await netnsLinks(back0.netns);
  t.notOk(inside.includes('eth0'), 'the container end is gone');
  t.equal((await del(back0)).code, 0, 'DEL again succeeds');
  t.equal(gw.writer.writer.model.containers['back0']?.status, 'stopped', 'the stop is recorded');
  const again = await s.container('back2', 'cell-b', 'app-back', 2);
  t.equal(again.ip, back0.ip, 'the freed address is handed out again');

  // Drift: a deleted route and a deleted forwarding entry come back.
  const bLease = leases.get('cell-b')!;
  await net.ipIn('cell-a', 'route', 'del', bLease, 'proto', String(ROUTE_PROTO));
  await run('bridge', ['-n', net.hosts.get('cell-a')!.ns, 'fdb', 'del', vtepMacOf(bLease), 'dev', 'nfvx0', 'dst', net.hosts.get('cell-b')!.underlay, 'self']);
  await s.routesEverywhere(expected, 'the deleted route is back');
  await eventually(
    async () => ((await fdbOn(net, 'cell-a')).includes(`${vtepMacOf(bLease)} ${net.hosts.get('cell-b')!.underlay}`) ? true : undefined),
    10_000,
    'fdb entry back',
  );
  await eventually(() => ((agents.get('cell-a')!.status()?.network?.repairs ?? 0) >= 1 ? true : undefined), 10_000, 'repair counted');
  await net.serve(again.netns, 'tcp', 8080);
  t.equal(await net.probe(front.netns, again.ip, 8080), 'open', 'traffic flows again after the repair');

  // An agent restarting (its cell joining again) keeps its lease and changes nothing in the kernel: no flush, no reload.
  const ifindex = async () => (await net.ipJson('cell-a', 'link', 'show', 'dev', 'nfvx0'))[0]?.ifindex;
  const deviceBefore = await ifindex();
  const routesBefore = await s.routesOn('cell-a');
  await agents.get('cell-a')!.stop();
  agents.delete('cell-a');
  t.equal(await s.join('cell-a'), leases.get('cell-a'), 'joining again: the same lease');
  t.same(await s.routesOn('cell-a'), routesBefore, 'the routes stay while the restarted agent catches up');
  await eventually(() => (agents.get('cell-a')!.feed.view.verified ? true : undefined), 10_000, 'restarted agent verified');
  t.equal(await agents.get('cell-a')!.checkNetwork(), 0, 'once caught up, nothing to change');
  t.equal(await ifindex(), deviceBefore, 'the VXLAN device was never made again');
  t.equal(await net.probe(front.netns, again.ip, 8080), 'open', 'traffic flowed on');

  // A cell joins: every other cell routes to it; it leaves: the routes go.
  const dLease = await s.join('cell-d');
  t.equal(dLease, '10.255.3.0/24');
  leases.set('cell-d', dLease);
  await s.routesEverywhere(expected, 'every cell routes to the new cell, and it to every cell');
  const d0 = await s.container('d0', 'cell-d', 'app-back', 3);
  await net.serve(d0.netns, 'tcp', 8080);
  t.equal(await net.probe(front.netns, d0.ip, 8080), 'open', 'a -> the new cell d: allowed by the same policy');
  t.equal((await net.plugin('cell-d', NETFOLD_CNI, { ...d0.env, CNI_COMMAND: 'DEL' }, { ...s.conf, cellId: 'cell-d' })).code, 0);
  t.match(await gw.intake('decommissionCell', { cellId: 'cell-d' }), { ok: true });
  await agents.get('cell-d')!.stop();
  agents.delete('cell-d');
  leases.delete('cell-d');
  await s.routesEverywhere(expected, 'the routes to the cell that left are gone');

  // netfold-cni chained with Debian's portmap in a conflist, as a runtime runs one: each plugin's result is the next one's prevResult.
  const conflist = {
    cniVersion: '1.0.0',
    name: 'netfold',
    plugins: [
      { type: 'netfold-cni', cellId: 'cell-c', natsUrl: s.conf.natsUrl, natsCreds: s.conf.natsCreds },
      { type: 'portmap', capabilities: { portMappings: true } },
    ],
  };
  const runtimeConfig = { portMappings: [{ hostPort: 18080, containerPort: 8080, protocol: 'tcp' }] };
  const pm = await net.newContainerNs('pm0');
  const env = {
    CNI_CONTAINERID: 'pm0',
    CNI_NETNS: pm,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: 'NETFOLD_APP_ID=app-back;NETFOLD_INSTANCE_INDEX=9',
    CNI_PATH: '/usr/lib/cni',
  };
  const chainAdd = await runConflist(net, 'cell-c', conflist, runtimeConfig, { ...env, CNI_COMMAND: 'ADD' });
  t.match(
    chainAdd,
    { code: 0, body: { cniVersion: '1.0.0', interfaces: [{}, { name: 'eth0', sandbox: pm }], ips: [{ address: '10.255.2.4/32' }] } },
    'the chain ADD result',
  );
  await net.serve(pm, 'tcp', 8080);
  const hostC = net.hosts.get('cell-c')!;
  const viaPortmap = await probeFromHost(net, 'cell-a', hostC.underlay, 18080);
  t.equal(viaPortmap, 'open', "portmap's host port on cell c reaches the container (from outside the overlay)");
  const chainCheck = await runConflist(net, 'cell-c', conflist, runtimeConfig, { ...env, CNI_COMMAND: 'CHECK' }, chainAdd.body);
  // netfold-cni's CHECK (first in the chain) passes; Debian's portmap 1.1.1 then fails CHECK for an IPv4-only container
  // looking for IPv6 rules it never made (containernetworking/plugins issue 819, fixed after 1.1.1): accepted only so.
  const portmapBug = chainCheck.body?.plugin === 'portmap' && /ipv6/.test(String(chainCheck.body?.msg));
  t.ok(chainCheck.code === 0 || portmapBug, `the chain CHECK: netfold-cni passes (${JSON.stringify(chainCheck.body)})`);
  t.equal(
    (await runConflist(net, 'cell-c', conflist, runtimeConfig, { ...env, CNI_COMMAND: 'DEL' }, chainAdd.body)).code,
    0,
    'the chain DEL, in reverse order',
  );
  t.equal(await probeFromHost(net, 'cell-a', hostC.underlay, 18080), 'refused', 'the host port is gone with the DEL');
});

t.test('routed: three cells on one L2 segment, containers by netfold-cni, TCP with policy, drift repaired', { skip }, async (t) => {
  const s = await setUp(t, 'routed', ['cell-a', 'cell-b', 'cell-c']);
  const { net, gw, leases } = s;
  const expected = (cell: string) =>
    [...leases.entries()].filter(([c]) => c !== cell).map(([c, subnet]) => `${subnet} via ${viaOf('routed', subnet, net.hosts.get(c)!.underlay)}`);
  await s.routesEverywhere(expected, 'every cell routes to the others via their underlay addresses');
  const front = await s.container('front0', 'cell-a', 'app-front', 0);
  const back = await s.container('back0', 'cell-b', 'app-back', 0);
  const other = await s.container('other0', 'cell-c', 'app-other', 0);
  await net.serve(back.netns, 'tcp', 8080);
  await net.serve(back.netns, 'udp', 5353);
  await net.serve(other.netns, 'tcp', 8080);
  t.equal(await net.probe(front.netns, back.ip, 8080), 'refused', 'denied by default');
  t.equal(await net.probe(front.netns, back.ip, 5353, 'udp'), 'refused', 'UDP denied by default');
  const added = await gw.http('POST', P, {
    body: { policies: [cfPolicy('app-front', 'app-back', 'tcp', 8080, 8080), cfPolicy('app-front', 'app-back', 'udp', 5353, 5353)] },
  });
  t.equal((await waitEnforced(gw.bus, added.body.revision, 15_000)).enforced, true);
  t.equal(await net.probe(front.netns, back.ip, 8080), 'open', 'a -> b routed: allowed');
  t.equal(await net.probe(front.netns, back.ip, 5353, 'udp'), 'open', 'UDP a -> b routed: allowed');
  t.equal(await net.probe(front.netns, other.ip, 8080), 'refused', 'a -> c, no policy: denied');
  await net.ipIn('cell-a', 'route', 'del', leases.get('cell-b')!, 'proto', String(ROUTE_PROTO));
  await s.routesEverywhere(expected, 'the deleted route is back');
  t.equal(await net.probe(front.netns, back.ip, 8080), 'open', 'and traffic flows again');
  leases.set('cell-d', await s.join('cell-d'));
  await s.routesEverywhere(expected, 'a cell joining: every cell routes to it, and it to every cell');
});

async function netnsLinks(nsPath: string): Promise<string[]> {
  const text = await run('nsenter', [`--net=${nsPath}`, 'ip', '-j', 'link', 'show']);
  return (JSON.parse(text) as { ifname: string }[]).map((l) => l.ifname);
}

async function fdbOn(net: Underlay, cellId: string): Promise<string[]> {
  const text = await run('bridge', ['-n', net.hosts.get(cellId)!.ns, '-j', 'fdb', 'show', 'dev', 'nfvx0']);
  return (JSON.parse(text) as { mac: string; dst?: string }[]).filter((f) => f.dst).map((f) => `${f.mac} ${f.dst}`);
}

/** A TCP probe from a host's own namespace (outside the overlay). */
async function probeFromHost(net: Underlay, cellId: string, addr: string, port: number): Promise<string> {
  const out = await run('ip', ['netns', 'exec', net.hosts.get(cellId)!.ns, process.execPath, 'test/harness/tcp-tool.mjs', 'probe', addr, String(port), '1500']);
  return out.trim();
}

/**
 * What libcni does with a conflist: each plugin gets the list's name and cniVersion, its own keys, the runtime's
 * `runtimeConfig` for the capabilities it declares, and the previous plugin's result as prevResult; ADD in order,
 * DEL in reverse order (with the ADD result), CHECK in order (with it).
 */
async function runConflist(
  net: Underlay,
  cellId: string,
  list: { cniVersion: string; name: string; plugins: Record<string, any>[] },
  runtimeConfig: Record<string, unknown>,
  env: Record<string, string>,
  addResult?: Record<string, any>,
): Promise<{ code: number; body: Record<string, any> | undefined }> {
  const order = env.CNI_COMMAND === 'DEL' ? [...list.plugins].reverse() : list.plugins;
  let prev = addResult;
  for (const plugin of order) {
    const { capabilities, ...keys } = plugin;
    const conf: Record<string, unknown> = { cniVersion: list.cniVersion, name: list.name, ...keys };
    if (capabilities)
      conf.runtimeConfig = Object.fromEntries(
        Object.keys(capabilities)
          .filter((c) => c in runtimeConfig)
          .map((c) => [c, runtimeConfig[c]]),
      );
    if (prev) conf.prevResult = prev;
    const argv = plugin.type === 'netfold-cni' ? NETFOLD_CNI : [`/usr/lib/cni/${plugin.type}`];
    const r = await net.plugin(cellId, argv, env, conf);
    if (r.code !== 0) return { code: r.code, body: { plugin: plugin.type, ...r.body } };
    if (env.CNI_COMMAND === 'ADD') prev = r.body;
  }
  return { code: 0, body: prev };
}
