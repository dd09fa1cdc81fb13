// Operators' tools against a live system (real nats-server, gateway, planner, memory-dataplane agents): audit
// filters, state as of past revisions, explain, dry run, replay compared with what planner and agents hold.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { Kvm } from '@nats-io/kv';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { startStack } from './harness/stack.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';
import { EventLog } from '../runtime/event-log.ts';
import { CELL_STATUS_BUCKET } from '../runtime/subjects.ts';
import { audit, explainAt, modelAt, replay, stateView } from '../cli/operators.ts';

const run = promisify(execFile);
const P = '/networking/v1/external/policies';

t.test('audit, state, explain, dry run, replay', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells('cell-1', 'cell-2');
  const stack = await startStack(t, nats, ['cell-1', 'cell-2']);
  const bus = await nats.connectAs('operator'); // the operators' tools sign in as the operator
  for (const app of ['web', 'api', 'db']) await gw.intake('registerApp', { appId: app, name: app, spaceId: 's', orgId: 'o' }, 'cc');
  await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
  await gw.intake('startContainer', { containerId: 'api-0', appId: 'api', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.2' });
  await gw.intake('startContainer', { containerId: 'db-0', appId: 'db', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.3' });
  const dev = await gw.token({ user: 'dana', scopes: ['network.write'], spaces: ['s'] });
  const p1 = await gw.http('POST', P, { token: dev, body: { policies: [cfPolicy('web', 'api', 'tcp', 8080, 8090)] }, headers: { 'x-request-id': 'change-42' } });
  const p2 = await gw.http('POST', P, { body: { policies: [cfPolicy('api', 'db', 'tcp', 5432)] } });
  const del = await gw.http('POST', `${P}/delete`, { body: { policies: [cfPolicy('api', 'db', 'tcp', 5432)] } });
  t.equal((await waitEnforced(bus, del.body.revision, 10_000)).enforced, true);

  // audit
  const all = await audit(bus, {});
  t.equal(all.length, del.body.revision, 'every change');
  t.match(all.find((a) => a.revision === p1.body.revision), { actor: 'user:dana', type: 'PoliciesCreated', correlationId: 'change-42', effect: 'allowed: web -> api tcp/8080-8090' });
  t.same((await audit(bus, { app: 'db' })).map((a) => a.type), ['AppRegistered', 'ContainerStarted', 'PoliciesCreated', 'PoliciesDeleted']);
  t.equal((await audit(bus, { actor: 'cc' })).length, 3, 'by actor (platform:cc: the three registrations)');
  t.equal((await audit(bus, { actor: 'platform:test' })).length, 3, 'by full actor (the three container starts)');
  t.equal((await audit(bus, { type: 'PoliciesDeleted' })).length, 1);
  const since = Date.parse(all.find((a) => a.revision === p2.body.revision)!.at);
  t.same((await audit(bus, { since })).map((a) => a.revision), [p2.body.revision, del.body.revision], 'by time range');
  t.same(await audit(bus, { since, until: since }), [all.find((a) => a.revision === p2.body.revision)]);

  // state as of several revisions
  const beforeDelete = stateView(await modelAt(bus, { revision: del.body.revision - 1 }), 'cell-2');
  t.same(beforeDelete.policies.map((p) => `${p.sourceAppId}>${p.destAppId}`), ['api>db', 'web>api']);
  t.ok(beforeDelete.cell!.state.ingress.db, 'cell-2 allowed api -> db then');
  const now = stateView(await modelAt(bus, undefined), 'cell-2');
  t.same(now.policies.map((p) => `${p.sourceAppId}>${p.destAppId}`), ['web>api']);
  t.notOk(now.cell!.state.ingress.db);
  const early = stateView(await modelAt(bus, { revision: 5 })); // two cells, three apps
  t.same([early.apps.length, early.containers.length, early.policies.length], [3, 0, 0]);
  const byTime = stateView(await modelAt(bus, { time: since - 1 }));
  t.equal(byTime.revision, p1.body.revision, 'a time selects the last event at or before it');

  // explain
  const m = await modelAt(bus, undefined);
  const yes = await explainAt(bus, m, 'web', 'api', 8085, 'tcp');
  t.match(yes, { allowed: true, cells: ['cell-2'], policies: [{ sourceAppId: 'web', destAppId: 'api', createdBy: 'user:dana', createdSeq: p1.body.revision }] });
  t.match(yes.enforcement, [{ cellId: 'cell-2', applied: del.body.revision }]);
  const outOfRange = await explainAt(bus, m, 'web', 'api', 9000, 'tcp');
  t.match(outOfRange, { allowed: false, reason: /none covers tcp\/9000/, nearMisses: [{ startPort: 8080, endPort: 8090 }] });
  t.match(await explainAt(bus, m, 'api', 'db', 5432, 'tcp'), { allowed: false, reason: /denied by default/ });
  t.match(await explainAt(bus, m, 'web', 'api', 8085, 'udp'), { allowed: false });

  // dry run appends nothing and shows the flows per cell
  const last = await new EventLog(bus).lastSeq();
  const dry = await gw.http('POST', `${P}?dry_run=true`, { body: { policies: [cfPolicy('api', 'db', 'tcp', 5432)] } });
  t.equal(dry.status, 200);
  t.match(dry.body, { dry_run: true, revision: last, events: [{ type: 'PoliciesCreated' }], cells: { 'cell-2': { added: ['10.255.2.2 -> 10.255.2.3 tcp/5432'], removed: [] } } });
  const dryDel = await gw.http('POST', `${P}/delete?dry_run=true`, { body: { policies: [cfPolicy('web', 'api', 'tcp', 8080, 8090)] } });
  t.match(dryDel.body.cells, { 'cell-2': { added: [], removed: ['10.255.1.2 -> 10.255.2.2 tcp/8080-8090'] } });
  t.equal((await gw.http('POST', `${P}?dry_run=true`, { body: { policies: [cfPolicy('api', 'nope')] } })).status, 403, 'a dry run is authorized and validated like the real thing');
  t.equal(await new EventLog(bus).lastSeq(), last, 'nothing was appended');

  // replay: live matches; a tampered projection is detected
  const report = await replay(bus, undefined, 'apps.internal');
  t.equal(report.ok, true, JSON.stringify(report.cells));
  t.same(report.cells.map((c) => c.cellId), ['cell-1', 'cell-2']);
  const past = await replay(bus, { revision: del.body.revision - 1 }, 'apps.internal');
  t.not(past.cells.find((c) => c.cellId === 'cell-2')!.replayed, report.cells.find((c) => c.cellId === 'cell-2')!.replayed, 'replay to an earlier revision differs');
  for (const cell of ['cell-1', 'cell-2']) await stack.stopAgent(cell);
  const status = await new Kvm(gw.bus.js).open(CELL_STATUS_BUCKET); // tampering: the admin's bus (an attacker who may)
  const s2 = (await status.get('cell-2'))!.json<Record<string, unknown>>();
  await status.put('cell-2', JSON.stringify({ ...s2, hash: 'f'.repeat(32) }));
  const tampered = await replay(bus, undefined, 'apps.internal');
  t.equal(tampered.ok, false);
  t.match(tampered.cells.find((c) => c.cellId === 'cell-2'), { ok: false, applied: 'f'.repeat(32) });

  // the CLI prints it and exits non-zero on a difference
  const env = { ...process.env, NATS_URL: nats.server.url, NATS_CREDS: await nats.credsFile('operator') };
  const cli = (...args: string[]) => run(process.execPath, ['bin/netfold.mjs', ...args], { env, timeout: 60_000 }).then((r) => ({ ...r, code: 0 }), (e: { code: number; stdout: string; stderr: string }) => e);
  const r = await cli('replay');
  t.equal(r.code, 1);
  t.match(r.stdout, /cell-2 .* DIFFERS/);
  t.match((await cli('explain', 'web', 'api', '8085')).stdout, /web -> api tcp\/8085: ALLOWED/);
  t.match((await cli('audit', '--app', 'db')).stdout, /PoliciesDeleted\s+revoked: api -> db tcp\/5432/);
  t.match((await cli('state', '--at', String(p1.body.revision), '--json')).stdout, /"revision":/);
});
