// The network drivers' pure parts, without root: the topology read from a cell's state (bad entries left out),
// what each driver wants in the kernel, the difference it applies (only what changed), and the read-back parsers
// on recorded `ip -j` / `bridge -j` output. The kernel itself: test/topology-e2e.test.ts (root).
import t from 'tap';
import {
  type NetworkObjects,
  type Topology,
  createNetworkDriver,
  desiredObjects,
  parseFdb,
  parseLink,
  parseNeighs,
  parseRoutes,
  planNetwork,
  topologyOf,
  vtepAddressOf,
  vtepMacOf,
} from '../services/cell-agent/network-drivers.ts';
import { CellNetwork } from '../services/cell-agent/network.ts';
import type { NetworkStatus } from '../services/cell-agent/status.ts';
import type { CellView } from '../services/cell-agent/feed.ts';
import { emptyCellState } from '../projections/cell.ts';
import { dictOf } from '../projections/dict.ts';
import { silentLogger } from '../runtime/logger.ts';

const OVERLAY = '10.255.0.0/16';
const entries = {
  'cell-a': { subnet: '10.255.0.0/24', underlay: '192.0.2.1' },
  'cell-b': { subnet: '10.255.1.0/24', underlay: '192.0.2.2' },
  'cell-c': { subnet: '10.255.2.0/24', underlay: '192.0.2.3' },
};
const topo = (of: Record<string, { subnet: string; underlay: string }>, self = 'cell-a'): Topology => topologyOf(of, self, OVERLAY).topology;
const nothing: NetworkObjects = { link: null, routes: [], neighs: [], fdb: [] };

t.test('the topology of a cell: itself and its peers; invalid entries left out and named', async (t) => {
  const { topology, invalid } = topologyOf(entries, 'cell-a', OVERLAY);
  t.same(topology.self, { cellId: 'cell-a', subnet: '10.255.0.0/24', underlay: '192.0.2.1' });
  t.same([...topology.peers.keys()], ['cell-b', 'cell-c']);
  t.same(invalid, []);
  const bad = topologyOf(
    {
      ...entries,
      'x-outside': { subnet: '10.1.0.0/24', underlay: '192.0.2.9' },
      'x-hostbits': { subnet: '10.255.9.7/24', underlay: '192.0.2.9' },
      'x-underlay': { subnet: '10.255.9.0/24', underlay: 'host.example' },
      'x-same-host': { subnet: '10.255.9.0/24', underlay: '192.0.2.2' },
      'x-shape': 'nope' as never,
    },
    'cell-a',
    OVERLAY,
  );
  t.same(bad.invalid.sort(), ['x-hostbits', 'x-outside', 'x-same-host', 'x-shape', 'x-underlay']);
  t.same([...bad.topology.peers.keys()], ['cell-b', 'cell-c'], 'only the valid peers are routed');
  t.equal(topologyOf({ 'cell-b': entries['cell-b'] }, 'cell-a', OVERLAY).topology.self, undefined, 'a cell without its own entry has no self');
});

t.test('what each driver wants', async (t) => {
  t.same(desiredObjects('none', topo(entries)), nothing);
  t.same(desiredObjects('routed', topo(entries)).routes, [
    { dst: '10.255.1.0/24', via: '192.0.2.2', dev: null, onlink: false },
    { dst: '10.255.2.0/24', via: '192.0.2.3', dev: null, onlink: false },
  ]);
  t.equal(vtepMacOf('10.255.1.0/24'), '02:4e:0a:ff:01:00');
  t.equal(vtepAddressOf('10.255.1.0/24'), '10.255.1.0');
  const v = desiredObjects('vxlan', topo(entries), { device: 'nfvx0', vni: 7, port: 8472, mtu: 1400 });
  t.same(v.link, { name: 'nfvx0', vni: 7, port: 8472, mtu: 1400, local: '192.0.2.1', mac: '02:4e:0a:ff:00:00', address: '10.255.0.0' });
  t.same(v.routes[0], { dst: '10.255.1.0/24', via: '10.255.1.0', dev: 'nfvx0', onlink: true });
  t.same(v.neighs[1], { ip: '10.255.2.0', mac: '02:4e:0a:ff:02:00', dev: 'nfvx0' });
  t.same(v.fdb[1], { mac: '02:4e:0a:ff:02:00', dst: '192.0.2.3', dev: 'nfvx0' });
  t.same(desiredObjects('vxlan', topo({ 'cell-b': entries['cell-b'] })), nothing, 'vxlan without its own underlay address: nothing');
});

t.test('the difference: only what changed, incrementally', async (t) => {
  const two = desiredObjects('vxlan', topo({ 'cell-a': entries['cell-a'], 'cell-b': entries['cell-b'] }));
  const three = desiredObjects('vxlan', topo(entries));
  const first = planNetwork(two, nothing);
  t.equal(first.recreateLink, true);
  t.match(first.ip, [
    /^link add nfvx0 type vxlan id 4211 local 192\.0\.2\.1 dstport 4789 nolearning$/,
    /^link set nfvx0 address 02:4e:0a:ff:00:00 mtu 1450 up$/,
    /^address add 10\.255\.0\.0\/32/,
  ]);
  t.equal(planNetwork(two, two).changes, 0, 'the kernel holds it: nothing to do');
  const join = planNetwork(three, two);
  t.same(
    { ip: join.ip, bridge: join.bridge, changes: join.changes },
    {
      ip: [
        'neigh replace 10.255.2.0 lladdr 02:4e:0a:ff:02:00 dev nfvx0 nud permanent',
        'route replace 10.255.2.0/24 via 10.255.2.0 dev nfvx0 onlink proto 211',
      ],
      bridge: ['fdb append 02:4e:0a:ff:02:00 dev nfvx0 dst 192.0.2.3 self permanent'],
      changes: 3,
    },
    'a cell joining: its neighbour, forwarding entry and route, nothing else',
  );
  const leave = planNetwork(two, three);
  t.same(leave.ip, ['route del 10.255.2.0/24 proto 211', 'neigh del 10.255.2.0 dev nfvx0']);
  t.same(leave.bridge, ['fdb del 02:4e:0a:ff:02:00 dev nfvx0 dst 192.0.2.3 self']);
  const drifted = { ...three, routes: three.routes.slice(1) };
  t.same(planNetwork(three, drifted).ip, ['route replace 10.255.1.0/24 via 10.255.1.0 dev nfvx0 onlink proto 211'], 'a deleted route comes back');
  const moved = planNetwork(desiredObjects('vxlan', topo({ ...entries, 'cell-c': { subnet: '10.255.2.0/24', underlay: '192.0.2.33' } })), three);
  t.same(moved.bridge, ['fdb del 02:4e:0a:ff:02:00 dev nfvx0 dst 192.0.2.3 self', 'fdb append 02:4e:0a:ff:02:00 dev nfvx0 dst 192.0.2.33 self permanent']);
  const vni = planNetwork(desiredObjects('vxlan', topo(entries), { device: 'nfvx0', vni: 9, port: 4789, mtu: 1450 }), three);
  t.equal(vni.ip[0], 'link del nfvx0', 'another VNI: the device is made again');
  t.equal(vni.ip.filter((l) => l.startsWith('route replace')).length, 2, 'with all its routes');
  t.same(planNetwork(nothing, three).ip.slice(0, 1), ['link del nfvx0'], 'driver switched off: everything of ours goes');
  const routed = desiredObjects('routed', topo(entries));
  t.same(planNetwork(routed, { ...nothing, routes: [...routed.routes, { dst: '10.255.7.0/24', via: '192.0.2.7', dev: null, onlink: false }] }).ip, [
    'route del 10.255.7.0/24 proto 211',
  ]);
});

t.test('reading the kernel back (recorded iproute2 6.1 output)', async (t) => {
  const link =
    '[{"ifindex":2,"ifname":"nfvx0","flags":["BROADCAST","MULTICAST","UP","LOWER_UP"],"mtu":1450,"address":"02:4e:0a:ff:01:00",' +
    '"linkinfo":{"info_kind":"vxlan","info_data":{"id":4211,"local":"192.0.2.1","port":4789,"learning":false}},' +
    '"addr_info":[{"family":"inet","local":"10.255.1.0","prefixlen":32},{"family":"inet6","local":"fe80::4e:aff:feff:100","prefixlen":64}]}]';
  t.same(parseLink(link), { name: 'nfvx0', vni: 4211, port: 4789, mtu: 1450, local: '192.0.2.1', mac: '02:4e:0a:ff:01:00', address: '10.255.1.0' });
  t.equal(parseLink(link.replace('"UP",', ''))?.address, '', 'a device that is down is not as it should be');
  t.equal(parseLink(link.replace('"vxlan"', '"dummy"')), null);
  t.equal(parseLink('[]'), null);
  t.same(
    parseRoutes(
      '[{"dst":"10.255.2.0/24","gateway":"10.255.2.0","dev":"nfvx0","flags":["onlink"]},{"dst":"10.255.3.0/24","gateway":"192.0.2.3","dev":"eth0","flags":[]}]',
    ),
    [
      { dst: '10.255.2.0/24', via: '10.255.2.0', dev: 'nfvx0', onlink: true },
      { dst: '10.255.3.0/24', via: '192.0.2.3', dev: null, onlink: false },
    ],
  );
  t.same(
    parseNeighs(
      '[{"dst":"10.255.2.0","lladdr":"02:4E:0a:ff:02:00","state":["PERMANENT"]},{"dst":"10.255.9.9","lladdr":"02:00:00:00:00:01","state":["STALE"]}]',
      'nfvx0',
    ),
    [{ ip: '10.255.2.0', mac: '02:4e:0a:ff:02:00', dev: 'nfvx0' }],
  );
  t.same(
    parseFdb('[{"mac":"02:4e:0a:ff:02:00","dst":"192.0.2.2","flags":["self"],"state":"permanent"},{"mac":"33:33:00:00:00:01","flags":["self"]}]', 'nfvx0'),
    [{ mac: '02:4e:0a:ff:02:00', dst: '192.0.2.2', dev: 'nfvx0' }],
  );
  t.throws(() => parseRoutes('not json'), 'output that is not JSON is an error, never an empty kernel');
});

t.test('the none driver programs nothing', async (t) => {
  t.equal(await createNetworkDriver('none').reconcile(topo(entries)), 0);
});

t.test('the agent part: programs only verified states, refuses a foreign underlay address, counts drift repairs', async (t) => {
  const calls: Topology[] = [];
  let kernelChanges = 0;
  const driver = {
    kind: 'vxlan' as const,
    async reconcile(topology: Topology) {
      calls.push(topology);
      return kernelChanges;
    },
  };
  const reports: NetworkStatus[] = [];
  let view: CellView = {
    cellId: 'cell-a',
    revision: 0,
    hash: '',
    state: { ...emptyCellState(), topology: dictOf(Object.entries(entries)) },
    namesSeq: 0,
    verified: false,
  };
  const make = (underlay: string | undefined) =>
    new CellNetwork({
      cellId: 'cell-a',
      overlayCidr: OVERLAY,
      driver,
      underlay,
      driftIntervalMs: 60_000,
      view: () => view,
      log: silentLogger(),
      report: (s) => reports.push(s),
    });
  const net = make('192.0.2.1');
  t.equal(await net.reconcile(), 0);
  t.same(calls, [], 'the initial, unverified view is never programmed (a restart keeps the routes it finds)');
  view = { ...view, revision: 5, verified: true };
  kernelChanges = 3;
  t.equal(await net.reconcile(), 3, 'a verified state is programmed');
  t.same([...calls[0]!.peers.keys()], ['cell-b', 'cell-c']);
  t.match(net.status, { driver: 'vxlan', peers: 2, repairs: 0, error: null });
  kernelChanges = 1;
  await net.reconcile();
  t.equal(net.status.repairs, 1, 'the same topology changing the kernel again: drift repaired');
  kernelChanges = 0;
  const foreign = make('192.0.2.99');
  const before = calls.length;
  t.equal(await foreign.reconcile(), 0);
  t.equal(calls.length, before, 'a registration naming another underlay address: nothing programmed');
  t.match(foreign.status.error, /registered with underlay address 192\.0\.2\.1, this host is configured with 192\.0\.2\.99/);
  view = { ...view, state: { ...view.state, topology: dictOf([...Object.entries(entries), ['x-bad', { subnet: '10.1.0.0/24', underlay: '192.0.2.9' }]]) } };
  await net.reconcile();
  t.match(net.status, { peers: 2, error: /left out \(invalid\): x-bad/ }, 'an invalid entry is left out and reported');
  t.ok(reports.length >= 3, 'every change of status reported');
  const failing = new CellNetwork({
    cellId: 'cell-a',
    overlayCidr: OVERLAY,
    driver: { kind: 'routed', reconcile: async () => Promise.reject(new Error('RTNETLINK answers: Operation not permitted')) },
    underlay: undefined,
    driftIntervalMs: 60_000,
    view: () => view,
    log: silentLogger(),
    report: () => undefined,
  });
  t.equal(await failing.reconcile(), 0, 'a failing driver does not throw');
  t.match(failing.status.error, /Operation not permitted/);
});
