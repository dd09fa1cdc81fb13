// npm run bench:cni — modular topology, as root: three cells as host namespaces behind a router (the vxlan driver),
// writer, planner and agents (nftables dataplane) on a real nats-server, exactly as test/topology-e2e.test.ts builds
// them. Measures, in one run:
//   1. netfold-cni ADD (waitReady: the start enforced before it returns) of a container of an allowed app on cell b,
//      and ADD → the container reachable over TCP from an allowed peer on cell a (through the overlay and policy);
//   2. Debian's reference `bridge` + `host-local` plugins doing ADD on the same machine (a bridge in a host
//      namespace, a peer container on it), ADD and ADD → reachable from that peer;
//   3. a cell joining (its registration sent) → every other cell has the route to its lease, and leaving → gone.
// Each figure is p50 / p99 over BENCH_CNI_RUNS containers (20) and BENCH_JOINS joins (5); the load average is
// printed with the figures (the machine may be shared).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { startNats, eventually } from '../test/harness/nats.ts';
import { startGateway, cfPolicy } from '../test/harness/gateway.ts';
import { MGMT_ADDRESS, NETFOLD_CNI, buildUnderlay } from '../test/harness/topology.ts';
import { startPlanner, defaultPlannerConfig } from '../services/topology-planner/service.ts';
import { startCellAgent, defaultCellAgentConfig, type CellAgent } from '../services/cell-agent/agent.ts';
import { NftDataplane } from '../services/cell-agent/dataplane.ts';
import { ROUTE_PROTO } from '../services/cell-agent/network-drivers.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';
import { envNumber, machine, percentile, progress } from './lib.ts';

if (process.getuid?.() !== 0) {
  console.error('bench:cni needs root (network namespaces, VXLAN, nftables)');
  process.exit(1);
}
const RUNS = envNumber('BENCH_CNI_RUNS', 20);
const JOINS = envNumber('BENCH_JOINS', 5);

// The test harness's parts, with their teardowns collected here instead of by tap.
const teardowns: (() => unknown)[] = [];
const t = { teardown: (fn: () => unknown) => void teardowns.push(fn) } as unknown as Test;
const children: ChildProcess[] = [];
const load: number[][] = [loadavg()];
const stats = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { p50: Math.round(percentile(s, 50)), p99: Math.round(percentile(s, 99)), n: s.length };
};

try {
  progress('building three cells behind a router');
  const net = await buildUnderlay(t, 'vxlan', ['cell-a', 'cell-b', 'cell-c']);
  const nats = await startNats(t, { host: MGMT_ADDRESS });
  const gw = await startGateway(t, nats);
  const planner = await startPlanner({ bus: await nats.connectAs('planner'), log: nats.log, config: { ...defaultPlannerConfig, heartbeatMs: 100 } });
  t.teardown(() => planner.stop());
  const agents: CellAgent[] = [];
  t.teardown(async () => {
    for (const a of agents) await a.stop();
  });
  for (const [cellId, host] of net.hosts) {
    await gw.intake('registerCell', { cellId, underlay: host.underlay });
    agents.push(
      await startCellAgent({
        bus: await nats.connectAs(`agent_${cellId}`),
        log: nats.log,
        config: { ...defaultCellAgentConfig, cellId, network: { ...defaultCellAgentConfig.network, driver: 'vxlan', underlay: host.underlay, netns: host.ns } },
        dataplane: new NftDataplane({ overlayCidr: '10.255.0.0/16', netns: host.ns }),
      }),
    );
  }
  for (const [appId, name] of [
    ['app-front', 'front'],
    ['app-back', 'back'],
  ])
    await gw.intake('registerApp', { appId, name, spaceId: 's1', orgId: 'o1' });
  const policy = await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('app-front', 'app-back', 'tcp', 8080, 8080)] } });
  await waitEnforced(gw.bus, policy.body.revision, 15_000);
  const conf = {
    cniVersion: '1.0.0',
    name: 'netfold',
    type: 'netfold-cni',
    natsUrl: nats.server.url,
    natsCreds: await nats.credsFile('platform_bench'),
    waitReady: true,
  };
  const cniEnv = (id: string, netns: string, app: string, index: number) => ({
    CNI_COMMAND: 'ADD',
    CNI_CONTAINERID: id,
    CNI_NETNS: netns,
    CNI_IFNAME: 'eth0',
    CNI_ARGS: `NETFOLD_APP_ID=${app};NETFOLD_INSTANCE_INDEX=${index}`,
    CNI_PATH: '/usr/lib/cni',
  });
  const peer = await net.newContainerNs('peer');
  const front = await net.plugin('cell-a', NETFOLD_CNI, cniEnv('peer', peer, 'app-front', 0), { ...conf, cellId: 'cell-a' });
  if (front.code !== 0) throw new Error(`ADD of the peer failed: ${front.stdout}`);

  /** A waiter in the peer's namespace, started before the ADD so that its start-up is not measured. */
  const waiter = async (peerNs: string) => {
    const child = spawn('ip', ['netns', 'exec', peerNs.split('/').pop()!, process.execPath, 'test/harness/tcp-tool.mjs', 'wait-open', '8080'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    children.push(child);
    const lines = createInterface({ input: child.stdout! });
    const next = () => new Promise<string>((resolve) => lines.once('line', resolve));
    if ((await next()) !== 'waiting') throw new Error('waiter did not start');
    return { go: (ip: string) => (child.stdin!.write(`${ip}\n`), next().then(Number)) };
  };

  progress(`netfold-cni: ${RUNS} ADDs on cell b, each reached from cell a`);
  const nfAdd: number[] = [];
  const nfReach: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const ns = await net.newContainerNs(`nf${i}`);
    await net.serve(ns, 'tcp', 8080); // the workload listens before its network exists, as a container's process may
    const w = await waiter(peer);
    const t0 = Date.now();
    const added = await net.plugin('cell-b', NETFOLD_CNI, cniEnv(`nf${i}`, ns, 'app-back', i), { ...conf, cellId: 'cell-b' });
    const t1 = Date.now();
    if (added.code !== 0) throw new Error(`ADD nf${i} failed: ${added.stdout}`);
    const reached = await w.go(String(added.body!.ips[0].address).split('/')[0]!);
    nfAdd.push(t1 - t0);
    nfReach.push(reached - t0);
  }
  load.push(loadavg());

  progress(`reference bridge + host-local: ${RUNS} ADDs on one bridge, each reached from a peer on it`);
  const ipamDir = mkdtempSync(join(tmpdir(), 'netfold-bench-ipam-'));
  t.teardown(() => rmSync(ipamDir, { recursive: true, force: true }));
  const refConf = {
    cniVersion: '1.0.0',
    name: 'refnet',
    type: 'bridge',
    bridge: 'cni0',
    isGateway: true,
    ipMasq: false,
    ipam: { type: 'host-local', subnet: '10.99.0.0/24', dataDir: ipamDir, routes: [{ dst: '0.0.0.0/0' }] },
  };
  const refEnv = (id: string, netns: string) => ({ CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: netns, CNI_IFNAME: 'eth0', CNI_PATH: '/usr/lib/cni' });
  const refPeer = await net.newContainerNs('refpeer');
  const refPeerAdd = await net.plugin('cell-c', ['/usr/lib/cni/bridge'], refEnv('refpeer', refPeer), refConf);
  if (refPeerAdd.code !== 0) throw new Error(`reference ADD failed: ${refPeerAdd.stdout}`);
  const refAdd: number[] = [];
  const refReach: number[] = [];
  for (let i = 0; i < RUNS; i++) {
    const ns = await net.newContainerNs(`ref${i}`);
    await net.serve(ns, 'tcp', 8080);
    const w = await waiter(refPeer);
    const t0 = Date.now();
    const added = await net.plugin('cell-c', ['/usr/lib/cni/bridge'], refEnv(`ref${i}`, ns), refConf);
    const t1 = Date.now();
    if (added.code !== 0) throw new Error(`reference ADD ref${i} failed: ${added.stdout}`);
    const reached = await w.go(String(added.body!.ips[0].address).split('/')[0]!);
    refAdd.push(t1 - t0);
    refReach.push(reached - t0);
  }
  // What a plugin costs before it does anything: VERSION (process start, loader).
  const versionOf = async (argv: string[]) => {
    const xs: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t0 = Date.now();
      await net.plugin('cell-c', argv, { CNI_COMMAND: 'VERSION' }, { cniVersion: '1.0.0' });
      xs.push(Date.now() - t0);
    }
    return stats(xs);
  };
  const nfVersion = await versionOf(NETFOLD_CNI);
  const refVersion = await versionOf(['/usr/lib/cni/bridge']);
  load.push(loadavg());

  progress(`cell join → every cell has the route, ${JOINS} times (and leave → gone)`);
  const joinMs: number[] = [];
  const leaveMs: number[] = [];
  const routesTo = async (cellId: string, subnet: string) =>
    (await net.ipJson(cellId, 'route', 'show', 'proto', String(ROUTE_PROTO))).some((r) => r.dst === subnet);
  const others = ['cell-a', 'cell-b', 'cell-c'];
  for (let k = 0; k < JOINS; k++) {
    const cellId = `cell-j${k}`;
    const host = await net.addHost(cellId);
    const t0 = Date.now();
    const reg = await gw.intake('registerCell', { cellId, underlay: host.underlay });
    if (!reg.ok) throw new Error(`join ${cellId}: ${reg.code}`);
    const subnet = reg.subnet!;
    await eventually(
      async () => ((await Promise.all(others.map((c) => routesTo(c, subnet)))).every(Boolean) ? true : undefined),
      20_000,
      `routes to ${cellId}`,
    );
    joinMs.push(Date.now() - t0);
    const t1 = Date.now();
    await gw.intake('decommissionCell', { cellId });
    await eventually(
      async () => ((await Promise.all(others.map((c) => routesTo(c, subnet)))).some(Boolean) ? undefined : true),
      20_000,
      `routes to ${cellId} gone`,
    );
    leaveMs.push(Date.now() - t1);
    await net.removeHost(cellId);
  }
  load.push(loadavg());

  const result = {
    machine: machine(),
    runs: RUNS,
    joins: JOINS,
    loadavg: load.map((l) => l.map((x) => x.toFixed(2)).join(' ')),
    netfoldCni: { add: stats(nfAdd), addToReachable: stats(nfReach), version: nfVersion },
    reference: { add: stats(refAdd), addToReachable: stats(refReach), version: refVersion },
    cellJoinToAllRoutes: stats(joinMs),
    cellLeaveToRoutesGone: stats(leaveMs),
  };
  console.log(JSON.stringify(result, null, 2));
  const row = (name: string, s: { p50: number; p99: number }) => `| ${name} | ${s.p50} | ${s.p99} |`;
  console.log(
    [
      '',
      '| ms | p50 | p99 |',
      '|---|---|---|',
      row('netfold-cni ADD (waitReady)', result.netfoldCni.add),
      row('netfold-cni ADD → reachable from an allowed peer on another cell', result.netfoldCni.addToReachable),
      row('netfold-cni VERSION (process start)', nfVersion),
      row('bridge + host-local ADD', result.reference.add),
      row('bridge + host-local ADD → reachable from a peer on the bridge', result.reference.addToReachable),
      row('bridge VERSION (process start)', refVersion),
      row('cell join → route on every other cell', result.cellJoinToAllRoutes),
      row('cell leave → route gone on every other cell', result.cellLeaveToRoutesGone),
      `load average (1/5/15 min) at start, after netfold-cni, after reference, at end: ${result.loadavg.join(' · ')}`,
    ].join('\n'),
  );
} finally {
  for (const c of children) c.kill('SIGKILL');
  for (const fn of teardowns.reverse()) await Promise.resolve(fn()).catch((err: unknown) => console.error('teardown failed', err));
}
process.exit(0);
