// Records a real event log for test/fixtures: runs a scenario through the real gateway and intake against a
// throwaway nats-server, then writes the stream as JSON lines ({ seq, subject, event }) to stdout.
//   node --import tsx scripts/record-fixture.ts > test/fixtures/events-v1.jsonl
import { intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { startRecorder } from './fixture-recorder.ts';

const rec = await startRecorder();
const { bus, writer } = rec;
const admin = await rec.token({ user: 'alice', scopes: ['network.admin'], spaces: [] });
const dev = await rec.token({ user: 'bob', scopes: ['network.write'], spaces: ['space-1'] });

const intake = async (subject: string, body: object) => {
  const r = (await bus.nc.request(subject, JSON.stringify(body), { timeout: 5000 })).json<{ ok: boolean; error?: string }>();
  if (!r.ok) throw new Error(`${subject}: ${r.error}`);
};
const policies = async (token: string, path: string, list: [string, string, 'tcp' | 'udp', number, number][]) => {
  const body = { policies: list.map(([s, d, protocol, start, end]) => ({ source: { id: s }, destination: { id: d, protocol, ports: { start, end } } })) };
  const res = await fetch(`${writer.url}/networking/v1/external/policies${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${await res.text()}`);
};

for (const n of [1, 2, 3]) await intake(intakeSubject('cloud-controller', intakeCommand.registerCell), { cellId: `cell-${n}`, subnet: `10.255.${n}.0/24` });
for (const [appId, name, space] of [
  ['app-web', 'web', 'space-1'],
  ['app-api', 'api', 'space-1'],
  ['app-db', 'db', 'space-2'],
  ['app-cache', 'cache', 'space-2'],
]) {
  await intake(intakeSubject('cloud-controller', intakeCommand.registerApp), { appId, name, spaceId: space, orgId: 'org-1' });
}
await intake(intakeSubject('cloud-controller', intakeCommand.startContainer), {
  containerId: 'web-0',
  appId: 'app-web',
  cellId: 'cell-1',
  instanceIndex: 0,
  ip: '10.255.1.2',
});
await intake(intakeSubject('cloud-controller', intakeCommand.startContainer), {
  containerId: 'web-1',
  appId: 'app-web',
  cellId: 'cell-2',
  instanceIndex: 1,
  ip: '10.255.2.2',
});
await intake(intakeSubject('cloud-controller', intakeCommand.startContainer), {
  containerId: 'api-0',
  appId: 'app-api',
  cellId: 'cell-2',
  instanceIndex: 0,
  ip: '10.255.2.3',
});
await intake(intakeSubject('cloud-controller', intakeCommand.startContainer), {
  containerId: 'db-0',
  appId: 'app-db',
  cellId: 'cell-3',
  instanceIndex: 0,
  ip: '10.255.3.2',
});
await intake(intakeSubject('cloud-controller', intakeCommand.stopContainer), { containerId: 'cache-9' });
await policies(dev, '', [['app-web', 'app-api', 'tcp', 8080, 8080]]);
await policies(admin, '', [
  ['app-api', 'app-db', 'tcp', 5432, 5432],
  ['app-api', 'app-cache', 'tcp', 6379, 6380],
  ['app-web', 'app-db', 'udp', 53, 53],
]);
await intake(intakeSubject('cloud-controller', intakeCommand.renameApp), { appId: 'app-api', name: 'backend' });
await intake(intakeSubject('cloud-controller', intakeCommand.startContainer), {
  containerId: 'cache-0',
  appId: 'app-cache',
  cellId: 'cell-3',
  instanceIndex: 0,
  ip: '10.255.3.3',
});
await policies(admin, '/delete', [['app-web', 'app-db', 'udp', 53, 53]]);
await intake(intakeSubject('cloud-controller', intakeCommand.stopContainer), { containerId: 'web-1' });
await intake(intakeSubject('cloud-controller', intakeCommand.deleteApp), { appId: 'app-cache' });
await intake(intakeSubject('cloud-controller', intakeCommand.startContainer), {
  containerId: 'api-1',
  appId: 'app-api',
  cellId: 'cell-1',
  instanceIndex: 1,
  ip: '10.255.1.3',
});

await rec.finish();
