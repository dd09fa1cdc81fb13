import t from 'tap';
import type { AppCommand, ContainerCommand, PolicyCommand } from '../events/commands.ts';
import type { PolicyRule } from '../events/catalogue.ts';
import { type Model, freeTagCount } from '../projections/model.ts';
import { type Access, decideApp, decideContainer, decidePolicies } from '../services/policy-writer/decide.ts';
import { given } from './harness/decider-spec.ts';
import { ev } from './harness/events.ts';

const app = (cmd: AppCommand) => (m: Model) =>
  decideApp(cmd, { app: m.apps[cmd.data.appId], nameOwner: 'name' in cmd.data ? m.appIdByName[cmd.data.name.toLowerCase()] : undefined });
const container = (cmd: ContainerCommand) => (m: Model) =>
  decideContainer(cmd, { container: m.containers[cmd.data.containerId], app: cmd.type === 'StartContainer' ? m.apps[cmd.data.appId] : undefined });
const policies = (cmd: PolicyCommand, access: Access, quota = 150) => (m: Model) =>
  decidePolicies(cmd, {
    access,
    apps: Object.fromEntries([cmd.data.sourceAppId, ...cmd.data.policies.map((p) => p.destAppId)].map((id) => [id, m.apps[id]])),
    existing: m.policies[cmd.data.sourceAppId] ?? {},
    quota,
    tagged: m.tags.byApp,
    freeTags: freeTagCount(m),
  });

const register = (appId: string, name = appId, spaceId = 's1'): AppCommand => ({ type: 'RegisterApp', data: { appId, name, spaceId, orgId: 'o1' } });
const start = (containerId: string, appId: string): ContainerCommand => ({
  type: 'StartContainer',
  data: { containerId, appId, cellId: 'cell-1', ip: '10.255.1.2', instanceIndex: 0 },
});
const stop = (containerId: string): ContainerCommand => ({ type: 'StopContainer', data: { containerId } });
const rule = (destAppId: string, startPort = 8080, endPort = startPort): PolicyRule => ({ destAppId, protocol: 'tcp', startPort, endPort });
const create = (sourceAppId: string, ...rules: PolicyRule[]): PolicyCommand => ({ type: 'CreatePolicies', data: { sourceAppId, policies: rules } });
const remove = (sourceAppId: string, ...rules: PolicyRule[]): PolicyCommand => ({ type: 'DeletePolicies', data: { sourceAppId, policies: rules, reason: 'requested' } });
const admin: Access = { admin: true, spaces: [] };
const dev = (...spaces: string[]): Access => ({ admin: false, spaces });

t.test('apps', async (t) => {
  given(t, []).when(app(register('a'))).then([ev.registered('a')]);
  given(t, [ev.registered('a')]).when(app(register('a'))).thenNothing('already-registered');
  given(t, [ev.registered('a')]).when(app(register('a', 'b'))).then([ev.renamed('a', 'b', 'a')]);
  given(t, [ev.registered('a')]).when(app(register('a', 'a', 's2'))).thenRejects('app-conflict', 409);
  given(t, [ev.registered('a'), ev.deleted('a')]).when(app(register('a'))).thenRejects('app-deleted', 409);
  given(t, [ev.registered('a', 'web')]).when(app(register('b', 'WEB'))).thenRejects('app-name-taken', 409);
  given(t, [ev.registered('a', 'web'), ev.deleted('a')]).when(app(register('b', 'web'))).then([ev.registered('b', 'web')]);
  given(t, []).when(app({ type: 'RenameApp', data: { appId: 'a', name: 'x' } })).thenRejects('app-not-found', 404);
  given(t, [ev.registered('a', 'x')]).when(app({ type: 'RenameApp', data: { appId: 'a', name: 'x' } })).thenNothing('already-named');
  given(t, [ev.registered('a'), ev.registered('b', 'y')]).when(app({ type: 'RenameApp', data: { appId: 'a', name: 'y' } })).thenRejects('app-name-taken');
  given(t, []).when(app({ type: 'DeleteApp', data: { appId: 'a' } })).thenNothing('not-registered');
  given(t, [ev.registered('a')]).when(app({ type: 'DeleteApp', data: { appId: 'a' } })).then([ev.deleted('a')]);
  given(t, [ev.registered('a'), ev.deleted('a')]).when(app({ type: 'DeleteApp', data: { appId: 'a' } })).thenNothing('already-deleted');
});

t.test('containers', async (t) => {
  given(t, [ev.registered('a')]).when(container(start('c1', 'a'))).then([ev.started('c1', 'a')]);
  given(t, []).when(container(start('c1', 'a'))).thenRejects('app-not-found', 404);
  given(t, [ev.registered('a'), ev.deleted('a')]).when(container(start('c1', 'a'))).thenRejects('app-deleted');
  given(t, [ev.registered('a'), ev.started('c1', 'a')]).when(container(start('c1', 'a'))).thenNothing('already-running');
  given(t, [ev.registered('a'), ev.registered('b'), ev.started('c1', 'a')]).when(container(start('c1', 'b'))).thenRejects('container-conflict');
  given(t, [ev.registered('a'), ev.started('c1', 'a')]).when(container(stop('c1'))).then([ev.stopped('c1', 'a', 'cell-1', true)]);
  given(t, [ev.registered('a'), ev.started('c1', 'a'), ev.stopped('c1', 'a', 'cell-1')]).when(container(stop('c1'))).thenNothing('already-stopped');
  // A stop for an unknown container is recorded, so that a start arriving after it is ignored.
  given(t, []).when(container(stop('c9'))).then([ev.stopped('c9', null, null, false)]);
  given(t, [ev.registered('a'), ev.stopped('c9', null, null, false)]).when(container(start('c9', 'a'))).thenNothing('already-stopped');
});

t.test('policies: create', async (t) => {
  const apps = [ev.registered('a', 'a', 's1'), ev.registered('b', 'b', 's1'), ev.registered('x', 'x', 's2')];
  given(t, apps).when(policies(create('a', rule('b')), admin)).then([ev.created('a', 'b')]);
  given(t, apps).when(policies(create('a', rule('b')), dev('s1'))).then([ev.created('a', 'b')]);
  given(t, apps).when(policies(create('a', rule('x')), dev('s1'))).thenRejects('app-not-accessible', 403);
  given(t, apps).when(policies(create('x', rule('a')), dev('s1'))).thenRejects('app-not-accessible', 403);
  given(t, apps).when(policies(create('a', rule('x')), dev('s1', 's2'))).then([ev.created('a', 'x')]);
  given(t, apps).when(policies(create('a', rule('nope')), admin)).thenRejects('app-not-accessible', 403);
  given(t, [...apps, ev.deleted('b')]).when(policies(create('a', rule('b')), admin)).thenRejects('app-not-accessible');
  given(t, [...apps, ev.created('a', 'b')]).when(policies(create('a', rule('b')), dev('s1'))).thenNothing('already-present');
  given(t, apps).when(policies(create('a', rule('b'), rule('b')), admin)).then([ev.created('a', 'b')], 'duplicates in one request collapse');
  given(t, [...apps, ev.created('a', 'b')]).when(policies(create('a', rule('b'), rule('b', 9000)), admin)).then([ev.created('a', 'b', 9000)], 'only new ones are recorded');
});

t.test('policies: quota counts per source app for non-admins only', async (t) => {
  const apps = [ev.registered('a'), ev.registered('b')];
  const two = [ev.created('a', 'b', 1), ev.created('a', 'b', 2)];
  given(t, [...apps, ...two]).when(policies(create('a', rule('b', 3)), dev('s1'), 3)).then([ev.created('a', 'b', 3)]);
  given(t, [...apps, ...two]).when(policies(create('a', rule('b', 3), rule('b', 4)), dev('s1'), 3)).thenRejects('quota-exceeded', 403);
  given(t, [...apps, ...two]).when(policies(create('a', rule('b', 3), rule('b', 4)), admin, 3)).then([
    { type: 'PoliciesCreated', v: 1, data: { sourceAppId: 'a', policies: [rule('b', 3), rule('b', 4)] } },
  ]);
  given(t, [...apps, ...two]).when(policies(create('b', rule('a', 3), rule('a', 4)), dev('s1'), 3)).then([
    { type: 'PoliciesCreated', v: 1, data: { sourceAppId: 'b', policies: [rule('a', 3), rule('a', 4)] } },
  ], 'another source has its own quota');
});

t.test('policies: delete', async (t) => {
  const apps = [ev.registered('a', 'a', 's1'), ev.registered('b', 'b', 's1'), ev.registered('x', 'x', 's2')];
  given(t, [...apps, ev.created('a', 'b')]).when(policies(remove('a', rule('b')), dev('s1'))).then([ev.removed('a', 'b')]);
  given(t, apps).when(policies(remove('a', rule('b')), dev('s1'))).thenNothing('not-present');
  given(t, [...apps, ev.created('a', 'x')]).when(policies(remove('a', rule('x')), dev('s1'))).thenRejects('app-not-accessible');
  given(t, apps).when(policies(remove('a', rule('gone')), admin)).thenNothing('not-present');
});
