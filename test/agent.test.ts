// Cell agents with the memory dataplane against a real nats-server, the planner and the gateway: status,
// "is revision N enforced everywhere?", the ready gate, discovery records, drift repair, restart.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);
import { Kvm } from '@nats-io/kv';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import type { DiscoveryRecord } from '../projections/discovery-record.ts';
import { startStack } from './harness/stack.ts';
import { enforcementOf } from '../services/topology-planner/enforcement.ts';
import { DISCOVERY_BUCKET, readySubject } from '../runtime/subjects.ts';

const P = '/networking/v1/external/policies';

t.test('agents with the memory dataplane', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells('cell-1', 'cell-2');
  const { planner, agents, planes, startAgent, stopAgent } = await startStack(t, nats, ['cell-1', 'cell-2'], { agent: { driftIntervalMs: 100, heartbeatMs: 200 } });

  for (const [appId, name] of [['web', 'web'], ['api', 'api']]) await gw.intake('registerApp', { appId, name, spaceId: 's', orgId: 'o' });
  await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
  await gw.intake('startContainer', { containerId: 'api-0', appId: 'api', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.2' });

  // The ready gate answers as soon as the container is enforced on its cell; a platform component asks it.
  const platform = await nats.connectAs('platform_test');
  const readyReply = platform.nc.request(readySubject('cell-2'), JSON.stringify({ containerId: 'api-1', timeoutMs: 10_000 }), { timeout: 15_000 });
  const started = await gw.intake('startContainer', { containerId: 'api-1', appId: 'api', cellId: 'cell-2', instanceIndex: 1, ip: '10.255.2.3' });
  t.match((await readyReply).json(), { ready: true, cellId: 'cell-2' });
  t.ok(started.ok && (await readyReply).json<{ revision: number }>().revision >= started.revision, 'ready once the start is applied');
  const notThere = await platform.nc.request(readySubject('cell-2'), JSON.stringify({ containerId: 'nope', timeoutMs: 200 }), { timeout: 5000 });
  t.match(notThere.json(), { ready: false, code: 'timeout' });
  const bad = await platform.nc.request(readySubject('cell-2'), JSON.stringify({ containerId: 'a.b' }), { timeout: 5000 });
  t.match(bad.json(), { ready: false, code: 'invalid-input' });

  // A policy: enforced everywhere, as the HTTP endpoint and the agents' status say.
  const add = await gw.http('POST', P, { body: { policies: [cfPolicy('web', 'api', 'tcp', 8080)] } });
  const answer = await gw.http('GET', `/networking/v1/external/enforcement?revision=${add.body.revision}&wait_ms=10000`);
  t.equal(answer.status, 200);
  t.match(answer.body, { revision: add.body.revision, enforced: true, plannersBehind: [] });
  t.same(answer.body.cells.map((c: { cellId: string; ok: boolean }) => [c.cellId, c.ok]), [['cell-1', true], ['cell-2', true]]);
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 8080), true);
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.3', 'tcp', 8080), true);
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 8081), false);
  t.match(agents['cell-2']!.status(), { revision: add.body.revision, rules: { local: 2, allows: 2 }, error: null, dataplane: 'memory' });
  t.equal((await gw.http('GET', '/networking/v1/external/enforcement?revision=abc')).status, 400);

  // Not enforced while an agent is away: a change for its cell waits for it.
  await stopAgent('cell-2');
  const del = await gw.http('POST', `${P}/delete`, { body: { policies: [cfPolicy('web', 'api', 'tcp', 8080)] } });
  await planner.waitPublished(del.body.revision);
  const pending = await enforcementOf(gw.bus, del.body.revision);
  t.equal(pending.enforced, false, 'cell-2 has not applied the delete');
  t.match(pending.cells.find((c) => c.cellId === 'cell-2'), { ok: false, required: del.body.revision });
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 8080), true, 'the rules stayed in place while the agent was away');
  await startAgent('cell-2');
  await agents['cell-2']!.waitApplied(del.body.revision);
  const caughtUp = await enforcementOf(gw.bus, del.body.revision);
  t.equal(caughtUp.enforced, true, `the restarted agent caught up: ${JSON.stringify(caughtUp)}`);
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 8080), false);

  // Drift: the memory dataplane can be tampered with; the agent repairs it.
  await gw.http('POST', P, { body: { policies: [cfPolicy('web', 'api', 'tcp', 9000)] } });
  await eventually(() => (planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 9000) ? true : undefined), 10_000, 'policy applied');
  planes['cell-2']!.tamper();
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 9000), false, 'tampered');
  await eventually(() => (agents['cell-2']!.status()?.driftRepairs === 1 ? true : undefined), 5000, 'drift repaired');
  t.equal(planes['cell-2']!.allows('10.255.1.2', '10.255.2.2', 'tcp', 9000), true, 'repaired');
  t.match(agents['cell-2']!.status()?.lastRepair, { drift: 'rules-flushed' });

  // The CLI: `netfold wait` and `netfold cells`, as a user runs them.
  const env = { ...process.env, NATS_URL: nats.server.url, NATS_CREDS: await nats.credsFile('operator') }; // `netfold wait`: the operator
  const cli = (...args: string[]) => run(process.execPath, ['bin/netfold.mjs', ...args], { env, timeout: 60_000 }).catch((e: { code: number; stdout: string }) => ({ stdout: e.stdout, code: e.code }));
  const latest = await gw.http('POST', P, { body: { policies: [cfPolicy('web', 'api', 'tcp', 9001)] } });
  const waited = await cli('wait', '--revision', String(latest.body.revision), '--timeout', '10s', '--json');
  t.match(JSON.parse(waited.stdout), { revision: latest.body.revision, enforced: true });
  const human = await cli('wait', '--revision', String(latest.body.revision));
  t.match(human.stdout, /enforced on every cell/);
  const cells = JSON.parse((await cli('cells', '--json')).stdout) as { cellId: string; dataplane: string }[];
  t.same(cells.map((c) => [c.cellId, c.dataplane]), [['cell-1', 'memory'], ['cell-2', 'memory']]);

  // Discovery records: each agent publishes its containers' names; a stop removes them.
  const kv = await new Kvm(gw.bus.js).open(DISCOVERY_BUCKET);
  const record = async (cell: string) => (await kv.get(cell))?.json<DiscoveryRecord>();
  await eventually(async () => ((await record('cell-2'))?.names['api.apps.internal']?.length === 2 ? true : undefined), 5000, 'two api instances');
  t.same((await record('cell-2'))?.names, { 'api.apps.internal': ['10.255.2.2', '10.255.2.3'], '0.api.apps.internal': ['10.255.2.2'], '1.api.apps.internal': ['10.255.2.3'] });
  const stopped = await gw.intake('stopContainer', { containerId: 'api-0' });
  await agents['cell-2']!.waitApplied(stopped.ok ? stopped.revision : 0);
  t.same((await record('cell-2'))?.names, { 'api.apps.internal': ['10.255.2.3'], '1.api.apps.internal': ['10.255.2.3'] });
  const before = (await record('cell-1'))!.at;
  await eventually(async () => ((await record('cell-1'))!.at !== before ? true : undefined), 5000, 'a heartbeat re-puts the record');
  t.pass('records are re-put on every heartbeat');
});
