// netfold-cni's decisions, without root: bad environment and configuration are the spec's errors and change
// nothing (no connection is made, the kernel is not touched); against a real nats-server, writer, planner and agent
// (memory dataplane), ADD allocates from the cell's lease, DEL is idempotent, failures undo the start. The kernel
// side with real namespaces: test/topology-e2e.test.ts.
import t from 'tap';
import { runCni, type CniDeps } from '../cni/plugin.ts';
import { connectCniBus } from '../cni/bus.ts';
import { ARG_CONTAINER, CNI_CODES } from '../cni/spec.ts';
import type { LinkOps, Plumbing } from '../cni/link.ts';
import { startNats } from './harness/nats.ts';
import { startGateway } from './harness/gateway.ts';
import { startStack } from './harness/stack.ts';
import { EventLog } from '../runtime/event-log.ts';

const ENV = {
  CNI_COMMAND: 'ADD',
  CNI_CONTAINERID: 'ctr-1',
  CNI_NETNS: '/var/run/netns/ctr-1',
  CNI_IFNAME: 'eth0',
  CNI_ARGS: 'NETFOLD_APP_ID=app-1;NETFOLD_INSTANCE_INDEX=0',
  CNI_PATH: '/opt/cni/bin',
};
const CONF = { cniVersion: '1.0.0', name: 'netfold', type: 'netfold-cni', cellId: 'host-a', natsUrl: 'nats://127.0.0.1:1', waitReady: false };

/** A kernel that records what it is asked; `fail` makes add fail. */
function recordingLink(fail = false): LinkOps & { made: Map<string, Plumbing>; calls: string[] } {
  const made = new Map<string, Plumbing>();
  const calls: string[] = [];
  return {
    made,
    calls,
    async add(p) {
      calls.push(`add ${p.hostIf} ${p.ip} via ${p.gateway}`);
      if (fail) throw new Error('RTNETLINK answers: File exists');
      made.set(p.hostIf, p);
      return { hostMac: '02:00:00:00:00:01', mac: '02:00:00:00:00:02' };
    },
    async del(p) {
      calls.push(`del ${p.hostIf}`);
      return made.delete(p.hostIf);
    },
    async check(p) {
      const m = made.get(p.hostIf);
      return m && m.ip === p.ip ? undefined : `${p.hostIf} is missing`;
    },
  };
}

const noBus: CniDeps['connect'] = async () => {
  throw new Error('must not connect');
};

t.test('bad environment or configuration: the spec error object, exit 1, nothing done', async (t) => {
  const link = recordingLink();
  let connected = 0;
  const deps: CniDeps = { link, connect: async (c) => (connected++, noBus(c)) };
  const cases: [Record<string, string | undefined>, string, number, RegExp][] = [
    [{ ...ENV, CNI_COMMAND: 'FROB' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /CNI_COMMAND must be one of/],
    [{ ...ENV, CNI_COMMAND: undefined }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /CNI_COMMAND/],
    [{ ...ENV, CNI_CONTAINERID: '' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /CNI_CONTAINERID is required/],
    [{ ...ENV, CNI_IFNAME: 'a-very-long-interface' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /CNI_IFNAME/],
    [{ ...ENV, CNI_NETNS: '' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /CNI_NETNS is required for ADD/],
    [{ ...ENV, CNI_NETNS: 'relative/ns' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /absolute path/],
    [{ ...ENV, CNI_ARGS: 'garbage' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /not KEY=VALUE/],
    [
      { ...ENV, CNI_ARGS: 'K8S_POD_NAME=x;NETFOLD_APP_ID=app-1;NETFOLD_INSTANCE_INDEX=0' },
      JSON.stringify(CONF),
      CNI_CODES.invalidEnvironment,
      /unknown key\(s\) K8S_POD_NAME/,
    ],
    [{ ...ENV, CNI_ARGS: 'NETFOLD_APP_ID=app-1' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, /ADD needs CNI_ARGS/],
    [
      { ...ENV, CNI_ARGS: 'NETFOLD_APP_ID=a.b;NETFOLD_INSTANCE_INDEX=0' },
      JSON.stringify(CONF),
      CNI_CODES.invalidEnvironment,
      /NETFOLD_APP_ID must be an app id/,
    ],
    [{ ...ENV, CNI_CONTAINERID: 'pod.1' }, JSON.stringify(CONF), CNI_CODES.invalidEnvironment, new RegExp(`set ${ARG_CONTAINER}`)],
    [ENV, '{not json', CNI_CODES.decodeFailure, /not JSON/],
    [ENV, '[]', CNI_CODES.invalidConfig, /must be a JSON object/],
    [ENV, JSON.stringify({ ...CONF, cniVersion: '0.4.0' }), CNI_CODES.incompatibleVersion, /0\.4\.0 is not supported/],
    [ENV, JSON.stringify({ ...CONF, cniVersion: undefined }), CNI_CODES.invalidConfig, /cniVersion is required/],
    [ENV, JSON.stringify({ ...CONF, bogus: 1 }), CNI_CODES.unsupportedField, /unsupported field\(s\).*bogus/],
    [ENV, JSON.stringify({ ...CONF, ipam: { type: 'host-local' } }), CNI_CODES.unsupportedField, /ipam is not used/],
    [ENV, JSON.stringify({ ...CONF, cellId: 'a b' }), CNI_CODES.invalidConfig, /cellId is required/],
    [ENV, JSON.stringify({ ...CONF, natsUrl: '' }), CNI_CODES.invalidConfig, /natsUrl is required/],
    [ENV, JSON.stringify({ ...CONF, natsCreds: 'relative.json' }), CNI_CODES.invalidConfig, /natsCreds must be an absolute path/],
    [ENV, JSON.stringify({ ...CONF, readyTimeoutMs: 0 }), CNI_CODES.invalidConfig, /readyTimeoutMs/],
    [ENV, JSON.stringify({ ...CONF, waitReady: 'yes' }), CNI_CODES.invalidConfig, /waitReady/],
    [ENV, JSON.stringify({ ...CONF, prevResult: { ips: [{ address: 'nope' }] } }), CNI_CODES.invalidConfig, /prevResult: every ips\[\]\.address/],
    [{ ...ENV, CNI_COMMAND: 'CHECK' }, JSON.stringify(CONF), CNI_CODES.invalidConfig, /CHECK needs prevResult/],
  ];
  for (const [env, stdin, code, msg] of cases) {
    const out = await runCni(env, stdin, deps);
    t.equal(out.exitCode, 1, `${JSON.stringify(env.CNI_COMMAND)} ${stdin.slice(0, 60)}: exit 1`);
    const body = JSON.parse(out.stdout);
    t.match(body, { cniVersion: '1.0.0', code, msg }, `error ${code}: ${body.msg}`);
    t.type(body.details, 'string');
  }
  t.equal(connected, 0, 'no connection made');
  t.same(link.calls, [], 'the kernel untouched');
  t.same(JSON.parse((await runCni({ CNI_COMMAND: 'VERSION' }, '{"cniVersion":"1.0.0"}', deps)).stdout), { cniVersion: '1.0.0', supportedVersions: ['1.0.0'] });
});

t.test('against netfold: ADD takes the next address of the lease, DEL frees it, failures undo the start', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  t.match(await gw.intake('registerCell', { cellId: 'host-a', underlay: '192.0.2.1' }), { ok: true, subnet: '10.255.0.0/24' });
  await gw.intake('registerApp', { appId: 'app-1', name: 'one', spaceId: 's1', orgId: 'o1' });
  const stack = await startStack(t, nats, ['host-a']);
  const creds = await nats.credsFile('platform_cni');
  const conf = { ...CONF, natsUrl: nats.server.url, natsCreds: creds };
  const link = recordingLink();
  const deps: CniDeps = { link, connect: (c) => connectCniBus(c, nats.log) };
  const add = async (id: string, index: number, extra: Record<string, unknown> = {}, d = deps) =>
    runCni(
      { ...ENV, CNI_CONTAINERID: id, CNI_NETNS: `/var/run/netns/${id}`, CNI_ARGS: `NETFOLD_APP_ID=app-1;NETFOLD_INSTANCE_INDEX=${index}` },
      JSON.stringify({ ...conf, ...extra }),
      d,
    );

  const first = await add('ctr-1', 0, { waitReady: true });
  t.equal(first.exitCode, 0, first.stdout);
  const result = JSON.parse(first.stdout);
  t.match(result, {
    cniVersion: '1.0.0',
    interfaces: [
      { name: /^nf[0-9a-f]{12}$/, mac: '02:00:00:00:00:01' },
      { name: 'eth0', mac: '02:00:00:00:00:02', sandbox: '/var/run/netns/ctr-1' },
    ],
    ips: [{ address: '10.255.0.2/32', gateway: '10.255.0.1', interface: 1 }],
    routes: [{ dst: '0.0.0.0/0', gw: '10.255.0.1' }],
  });
  t.ok(
    Object.values(stack.agents['host-a']!.feed.view.state.containers).some((c) => c.ip === '10.255.0.2'),
    'enforced on the cell before ADD returned (waitReady)',
  );
  // Chained: a prevResult's interfaces, ips and routes come first, ours after.
  const prev = { cniVersion: '1.0.0', interfaces: [{ name: 'lo0' }], ips: [{ address: '192.0.2.50/32', interface: 0 }], routes: [] };
  const chained = JSON.parse((await add('ctr-2', 1, { prevResult: prev })).stdout);
  t.match(chained, { interfaces: [{ name: 'lo0' }, {}, { name: 'eth0' }], ips: [{ address: '192.0.2.50/32' }, { address: '10.255.0.3/32', interface: 2 }] });
  // CHECK with the result.
  const checkEnv = { ...ENV, CNI_COMMAND: 'CHECK', CNI_CONTAINERID: 'ctr-1', CNI_NETNS: '/var/run/netns/ctr-1' };
  t.equal((await runCni(checkEnv, JSON.stringify({ ...conf, prevResult: result }), deps)).exitCode, 0, 'CHECK passes');
  // DEL frees the address; a second DEL, and a DEL of something never added, succeed.
  const delEnv = { ...checkEnv, CNI_COMMAND: 'DEL', CNI_NETNS: '' };
  t.same(await runCni(delEnv, JSON.stringify(conf), deps), { stdout: '', exitCode: 0 });
  t.same(await runCni(delEnv, JSON.stringify(conf), deps), { stdout: '', exitCode: 0 }, 'DEL again: still fine');
  t.same(await runCni({ ...delEnv, CNI_CONTAINERID: 'never-seen' }, JSON.stringify(conf), deps), { stdout: '', exitCode: 0 }, 'DEL of something unknown');
  const failedCheck = await runCni(checkEnv, JSON.stringify({ ...conf, prevResult: result }), deps);
  t.match(JSON.parse(failedCheck.stdout), { code: CNI_CODES.checkFailed, msg: /is missing/ }, 'CHECK after DEL fails');
  t.match(JSON.parse((await add('ctr-3', 2)).stdout), { ips: [{ address: '10.255.0.2/32' }] }, 'the freed address is the next one handed out');
  t.match(JSON.parse((await add('ctr-1', 0)).stdout), { code: CNI_CODES.startRefused, msg: /stopped before/ }, 'a stopped container id is never started again');

  // Plumbing fails: the start is undone (stopped), so its address is free again.
  const log = new EventLog(gw.bus);
  const broken = await add('ctr-4', 3, {}, { link: recordingLink(true), connect: deps.connect });
  t.match(JSON.parse(broken.stdout), { code: CNI_CODES.ioFailure, details: /File exists/ });
  t.equal(broken.exitCode, 1);
  t.match(JSON.parse((await add('ctr-5', 4)).stdout), { ips: [{ address: '10.255.0.4/32' }] }, "the failed ADD's address was freed");
  // Refused by netfold: unknown app (not retryable) and an unreachable bus (try again later).
  const unknownApp = await runCni({ ...ENV, CNI_CONTAINERID: 'ctr-6', CNI_ARGS: 'NETFOLD_APP_ID=nope;NETFOLD_INSTANCE_INDEX=0' }, JSON.stringify(conf), deps);
  t.match(JSON.parse(unknownApp.stdout), { code: CNI_CODES.startRefused, details: 'app-not-found' });
  const before = await log.lastSeq();
  const down = await add('ctr-7', 5, { natsUrl: 'nats://127.0.0.1:1' }, { link, connect: (c) => connectCniBus(c, nats.log) });
  t.match(JSON.parse(down.stdout), { code: CNI_CODES.tryAgainLater, msg: /not reachable/ });
  t.equal(await log.lastSeq(), before, 'nothing appended');
  t.notOk(link.made.has('ctr-7'), 'nothing plumbed');
  // A cell whose agent does not answer the ready gate: ADD fails (102) and undoes the start and the plumbing.
  t.match(await gw.intake('registerCell', { cellId: 'host-b', underlay: '192.0.2.2' }), { ok: true });
  const unready = await add('ctr-8', 6, { cellId: 'host-b', waitReady: true, readyTimeoutMs: 300 });
  t.match(JSON.parse(unready.stdout), { code: CNI_CODES.notEnforced, msg: /did not enforce the start of ctr-8/ });
  t.equal(gw.writer.writer.model.containers['ctr-8']?.status, 'stopped', 'the start is undone');
  t.same(
    [...link.made.values()].filter((p) => p.ip.startsWith('10.255.1.')),
    [],
    'no interface left behind',
  );
});
