// Records a real event log with application security groups for test/fixtures: the scenario through the real
// gateway (/v3/security_groups) and intake against a throwaway nats-server, written as JSON lines to stdout.
//   node --import tsx scripts/record-egress-fixture.ts > test/fixtures/egress-v1.jsonl
import { intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { startRecorder } from './fixture-recorder.ts';

const rec = await startRecorder();
const { bus, writer } = rec;
const admin = await rec.token({ user: 'alice', scopes: ['network.admin'], spaces: [] });

const intake = async (command: (typeof intakeCommand)[keyof typeof intakeCommand], body: object) => {
  const r = (await bus.nc.request(intakeSubject('cloud-controller', command), JSON.stringify(body), { timeout: 5000 })).json<{ ok: boolean; error?: string }>();
  if (!r.ok) throw new Error(`${command}: ${r.error}`);
};
const api = async (method: string, path: string, body?: unknown): Promise<{ guid?: string }> => {
  const res = await fetch(`${writer.url}/v3/security_groups${path}`, {
    method,
    headers: { authorization: `Bearer ${admin}`, ...(body !== undefined && { 'content-type': 'application/json' }) },
    ...(body !== undefined && { body: JSON.stringify(body) }),
  });
  if (res.status >= 300) throw new Error(`${method} ${path}: ${res.status} ${await res.text()}`);
  const text = await res.text();
  return text ? JSON.parse(text) : {};
};

for (const n of [1, 2]) await intake(intakeCommand.registerCell, { cellId: `cell-${n}`, subnet: `10.255.${n}.0/24` });
await intake(intakeCommand.registerApp, { appId: 'app-web', name: 'web', spaceId: 'space-1', orgId: 'org-1' });
await intake(intakeCommand.registerApp, { appId: 'app-db', name: 'db', spaceId: 'space-2', orgId: 'org-1' });
await intake(intakeCommand.startContainer, { containerId: 'web-0', appId: 'app-web', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
await intake(intakeCommand.startContainer, {
  containerId: 'web-s',
  appId: 'app-web',
  cellId: 'cell-2',
  instanceIndex: 1,
  ip: '10.255.2.2',
  lifecycle: 'staging',
});
await intake(intakeCommand.startContainer, { containerId: 'db-0', appId: 'app-db', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.3' });
const api1 = await api('POST', '', {
  name: 'public-api',
  rules: [
    { protocol: 'tcp', destination: '203.0.113.0/24,198.51.100.7', ports: '443,8000-8100', description: 'partner API', log: true },
    { protocol: 'icmp', destination: '203.0.113.5', type: 8, code: -1 },
  ],
  relationships: { running_spaces: { data: [{ guid: 'space-1' }] } },
});
const dns = await api('POST', '', {
  name: 'dns',
  rules: [{ protocol: 'udp', destination: '0.0.0.0/0', ports: '53' }],
  globally_enabled: { running: true, staging: true },
});
await api('POST', `/${api1.guid}/relationships/staging_spaces`, { data: [{ guid: 'space-1' }] });
await api('PATCH', `/${api1.guid}`, { rules: [{ protocol: 'tcp', destination: '203.0.113.0/24', ports: '443' }] });
await api('POST', `/${dns.guid}/relationships/running_spaces`, { data: [{ guid: 'space-2' }] });
await api('DELETE', `/${api1.guid}/relationships/running_spaces/space-1`);
await api('PATCH', `/${dns.guid}`, { name: 'dns-servers', globally_enabled: { running: false } });
const gone = await api('POST', '', { name: 'temporary', rules: [{ protocol: 'all', destination: '192.0.2.0/24' }] });
await api('DELETE', `/${gone.guid}`);
await intake(intakeCommand.stopContainer, { containerId: 'web-s' });

await rec.finish();
