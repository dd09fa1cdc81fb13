import t from 'tap';
import type { AppCommand, CellCommand, ContainerCommand, PolicyCommand } from '../events/commands.ts';
import type { PolicyRule } from '../events/catalogue.ts';
import { type Model, freeTagCount } from '../projections/model.ts';
import {
  type Access,
  cellDecisionState,
  containerDecisionState,
  decideApp,
  decideCell,
  decideContainer,
  decidePolicies,
} from '../services/policy-writer/decide.ts';
import { given } from './harness/decider-spec.ts';
import { dictOf } from '../projections/dict.ts';
import { ev } from './harness/events.ts';

const app = (cmd: AppCommand) => (m: Model) =>
  decideApp(cmd, { app: m.apps[cmd.data.appId], nameOwner: 'name' in cmd.data ? m.appIdByName[cmd.data.name.toLowerCase()] : undefined });
const OVERLAY = '10.255.0.0/16';
const container = (cmd: ContainerCommand) => (m: Model) => decideContainer(cmd, containerDecisionState(m, cmd, OVERLAY));
const cell =
  (cmd: CellCommand, leasePrefix = 24) =>
  (m: Model) =>
    decideCell(cmd, cellDecisionState(m, cmd, { overlayCidr: OVERLAY, leasePrefix }));
const policies =
  (cmd: PolicyCommand, access: Access, quota = 150) =>
  (m: Model) =>
    decidePolicies(cmd, {
      access,
      apps: dictOf([cmd.data.sourceAppId, ...cmd.data.policies.map((p) => p.destAppId)].map((id) => [id, m.apps[id]] as const)),
      existing: m.policies[cmd.data.sourceAppId] ?? {},
      quota,
      tagged: m.tags.byApp,
      freeTags: freeTagCount(m),
    });

const register = (appId: string, name = appId, spaceId = 's1'): AppCommand => ({ type: 'RegisterApp', data: { appId, name, spaceId, orgId: 'o1' } });
const start = (containerId: string, appId: string, ip = '10.255.1.2', cellId = 'cell-1'): ContainerCommand => ({
  type: 'StartContainer',
  data: { containerId, appId, cellId, ip, instanceIndex: 0 },
});
const stop = (containerId: string): ContainerCommand => ({ type: 'StopContainer', data: { containerId } });
const rule = (destAppId: string, startPort = 8080, endPort = startPort): PolicyRule => ({ destAppId, protocol: 'tcp', startPort, endPort });
const create = (sourceAppId: string, ...rules: PolicyRule[]): PolicyCommand => ({ type: 'CreatePolicies', data: { sourceAppId, policies: rules } });
const remove = (sourceAppId: string, ...rules: PolicyRule[]): PolicyCommand => ({
  type: 'DeletePolicies',
  data: { sourceAppId, policies: rules, reason: 'requested' },
});
const admin: Access = { admin: true, spaces: [] };
const dev = (...spaces: string[]): Access => ({ admin: false, spaces });

t.test('apps', async (t) => {
  given(t, [])
    .when(app(register('a')))
    .then([ev.registered('a')]);
  given(t, [ev.registered('a')])
    .when(app(register('a')))
    .thenNothing('already-registered');
  given(t, [ev.registered('a')])
    .when(app(register('a', 'b')))
    .then([ev.renamed('a', 'b', 'a')]);
  given(t, [ev.registered('a')])
    .when(app(register('a', 'a', 's2')))
    .thenRejects('app-conflict', 409);
  given(t, [ev.registered('a'), ev.deleted('a')])
    .when(app(register('a')))
    .thenRejects('app-deleted', 409);
  given(t, [ev.registered('a', 'web')])
    .when(app(register('b', 'WEB')))
    .thenRejects('app-name-taken', 409);
  given(t, [ev.registered('a', 'web'), ev.deleted('a')])
    .when(app(register('b', 'web')))
    .then([ev.registered('b', 'web')]);
  given(t, [])
    .when(app({ type: 'RenameApp', data: { appId: 'a', name: 'x' } }))
    .thenRejects('app-not-found', 404);
  given(t, [ev.registered('a', 'x')])
    .when(app({ type: 'RenameApp', data: { appId: 'a', name: 'x' } }))
    .thenNothing('already-named');
  given(t, [ev.registered('a'), ev.registered('b', 'y')])
    .when(app({ type: 'RenameApp', data: { appId: 'a', name: 'y' } }))
    .thenRejects('app-name-taken');
  given(t, [])
    .when(app({ type: 'DeleteApp', data: { appId: 'a' } }))
    .thenNothing('not-registered');
  given(t, [ev.registered('a')])
    .when(app({ type: 'DeleteApp', data: { appId: 'a' } }))
    .then([ev.deleted('a')]);
  given(t, [ev.registered('a'), ev.deleted('a')])
    .when(app({ type: 'DeleteApp', data: { appId: 'a' } }))
    .thenNothing('already-deleted');
});

t.test('containers', async (t) => {
  const base = [ev.cell('cell-1'), ev.registered('a')];
  given(t, base)
    .when(container(start('c1', 'a')))
    .then([ev.started('c1', 'a')]);
  given(t, [ev.cell('cell-1')])
    .when(container(start('c1', 'a')))
    .thenRejects('app-not-found', 404);
  given(t, [...base, ev.deleted('a')])
    .when(container(start('c1', 'a')))
    .thenRejects('app-deleted');
  given(t, [...base, ev.started('c1', 'a')])
    .when(container(start('c1', 'a')))
    .thenNothing('already-running');
  given(t, [...base, ev.registered('b'), ev.started('c1', 'a')])
    .when(container(start('c1', 'b')))
    .thenRejects('container-conflict');
  given(t, [...base, ev.started('c1', 'a')])
    .when(container(stop('c1')))
    .then([ev.stopped('c1', 'a', 'cell-1', true)]);
  given(t, [...base, ev.started('c1', 'a'), ev.stopped('c1', 'a', 'cell-1')])
    .when(container(stop('c1')))
    .thenNothing('already-stopped');
  // A stop for an unknown container is recorded, so that a start arriving after it is ignored.
  given(t, [])
    .when(container(stop('c9')))
    .then([ev.stopped('c9', null, null, false)]);
  given(t, [...base, ev.stopped('c9', null, null, false)])
    .when(container(start('c9', 'a')))
    .thenNothing('already-stopped');
});

t.test('containers: cells must be known', async (t) => {
  given(t, [ev.registered('a')])
    .when(container(start('c1', 'a')))
    .thenRejects('cell-not-found', 404);
  given(t, [ev.registered('a'), ev.cell('cell-2')])
    .when(container(start('c1', 'a')))
    .thenRejects('cell-not-found', 404);
  given(t, [ev.registered('a'), ev.cell('cell-1'), ev.decommissioned('cell-1')])
    .when(container(start('c1', 'a')))
    .thenRejects('cell-decommissioned', 409);
  given(t, [ev.registered('a'), ev.cell('cell-1'), ev.decommissioned('cell-1'), ev.cell('cell-1')])
    .when(container(start('c1', 'a')))
    .then([ev.started('c1', 'a')], 'a cell registered again takes starts again');
});

t.test('containers: who may hold an IP', async (t) => {
  const base = [ev.cell('cell-1'), ev.cell('cell-2'), ev.registered('a'), ev.registered('b')];
  // Outside the overlay, or outside the cell's range: refused, whatever the address.
  for (const ip of ['192.168.77.5', '0.0.0.0', '255.255.255.255', '127.0.0.1', '8.8.8.8']) {
    given(t, base)
      .when(container(start('c1', 'a', ip)))
      .thenRejects('ip-outside-overlay', 400);
  }
  given(t, base)
    .when(container(start('c1', 'a', '10.255.2.7')))
    .thenRejects('ip-outside-cell', 400);
  given(t, base)
    .when(container(start('c1', 'a', '10.255.1.0')))
    .thenRejects('ip-reserved', 400);
  given(t, base)
    .when(container(start('c1', 'a', '10.255.1.255')))
    .thenRejects('ip-reserved', 400);
  // Held by a running container: refused until that one stops.
  given(t, [...base, ev.started('db-0', 'b', 'cell-1', '10.255.1.9')])
    .when(container(start('web-0', 'a', '10.255.1.9')))
    .thenRejects('ip-in-use', 409);
  given(t, [...base, ev.started('db-0', 'b', 'cell-1', '10.255.1.9'), ev.stopped('db-0', 'b', 'cell-1')])
    .when(container(start('web-0', 'a', '10.255.1.9')))
    .then([ev.started('web-0', 'a', 'cell-1', '10.255.1.9')], 'a restart reusing an IP stops the old holder first');
});

t.test('cells', async (t) => {
  const reg = (cellId: string, subnet: string): CellCommand => ({ type: 'RegisterCell', data: { cellId, subnet } });
  const decommission = (cellId: string): CellCommand => ({ type: 'DecommissionCell', data: { cellId } });
  given(t, [])
    .when(cell(reg('cell-1', '10.255.1.0/24')))
    .then([ev.cell('cell-1', '10.255.1.0/24')]);
  given(t, [ev.cell('cell-1')])
    .when(cell(reg('cell-1', '10.255.1.0/24')))
    .thenNothing('already-registered');
  given(t, [ev.cell('cell-1')])
    .when(cell(reg('cell-1', '10.255.9.0/24')))
    .thenRejects('cell-conflict', 409);
  given(t, [])
    .when(cell(reg('cell-1', '10.1.0.0/24')))
    .thenRejects('subnet-outside-overlay', 400);
  given(t, [ev.cell('cell-1')])
    .when(cell(reg('cell-2', '10.255.0.0/20')))
    .thenRejects('subnet-overlap', 409);
  given(t, [ev.cell('cell-1'), ev.decommissioned('cell-1')])
    .when(cell(reg('cell-2', '10.255.1.0/24')))
    .then([ev.cell('cell-2', '10.255.1.0/24')], 'a decommissioned cell frees its range');
  given(t, [])
    .when(cell(decommission('cell-1')))
    .thenNothing('not-registered');
  given(t, [ev.cell('cell-1')])
    .when(cell(decommission('cell-1')))
    .then([ev.decommissioned('cell-1')]);
  given(t, [ev.cell('cell-1'), ev.decommissioned('cell-1')])
    .when(cell(decommission('cell-1')))
    .thenNothing('already-decommissioned');
  given(t, [ev.cell('cell-1'), ev.registered('a'), ev.started('c1', 'a')])
    .when(cell(decommission('cell-1')))
    .thenRejects('cell-busy', 409);
});

t.test('cells: leases from the overlay and underlay addresses', async (t) => {
  const join = (cellId: string, underlay?: string, prefix?: number): CellCommand => ({
    type: 'RegisterCell',
    data: { cellId, ...(underlay ? { underlay } : {}), ...(prefix ? { prefix } : {}) },
  });
  const leased = (cellId: string, subnet: string, underlay: string | null = null) => ev.cell(cellId, subnet, underlay, true);
  given(t, [])
    .when(cell(join('c-a', '192.0.2.1')))
    .then([leased('c-a', '10.255.0.0/24', '192.0.2.1')], 'the first free /24, lowest first');
  given(t, [leased('c-a', '10.255.0.0/24')])
    .when(cell(join('c-b')))
    .then([leased('c-b', '10.255.1.0/24')], 'the next one');
  given(t, [ev.cell('cell-1')])
    .when(cell(join('c-b')))
    .then([leased('c-b', '10.255.0.0/24')], 'a gap below a named range is used');
  given(t, [leased('c-a', '10.255.0.0/24'), ev.cell('cell-1'), leased('c-c', '10.255.2.0/24')])
    .when(cell(join('c-d', undefined, 22)))
    .then([leased('c-d', '10.255.4.0/22')], 'a /22 lease is aligned to its size');
  given(t, [])
    .when(cell(join('c-a'), 26))
    .then([leased('c-a', '10.255.0.0/26')], 'the lease size is the configured one');
  given(t, [leased('c-a', '10.255.0.0/24'), ev.decommissioned('c-a')])
    .when(cell(join('c-b')))
    .then([leased('c-b', '10.255.0.0/24')], 'a decommissioned cell releases its lease');
  // Stable: a cell joining again (an agent restarted) keeps its lease and is told nothing changed.
  given(t, [leased('c-a', '10.255.0.0/24', '192.0.2.1')])
    .when(cell(join('c-a', '192.0.2.1')))
    .thenNothing('already-registered');
  given(t, [leased('c-a', '10.255.0.0/24', '192.0.2.1')])
    .when(cell(join('c-a')))
    .thenNothing('already-registered');
  given(t, [leased('c-a', '10.255.0.0/24', '192.0.2.1')])
    .when(cell(join('c-a', '192.0.2.9')))
    .thenRejects('cell-conflict', 409);
  given(t, [leased('c-a', '10.255.0.0/24')])
    .when(cell(join('c-a', undefined, 26)))
    .thenRejects('cell-conflict', 409);
  // Conflicts and exhaustion.
  given(t, [leased('c-a', '10.255.0.0/24', '192.0.2.1')])
    .when(cell(join('c-b', '192.0.2.1')))
    .thenRejects('underlay-in-use', 409);
  given(t, [leased('c-a', '10.255.0.0/24', '192.0.2.1'), ev.decommissioned('c-a')])
    .when(cell(join('c-b', '192.0.2.1')))
    .then([leased('c-b', '10.255.0.0/24', '192.0.2.1')], 'a decommissioned cell releases its underlay address');
  given(t, [])
    .when(cell(join('c-a', '10.255.9.9')))
    .thenRejects('underlay-inside-overlay', 400);
  given(t, [ev.cell('c-big', '10.255.0.0/17')])
    .when(cell(join('c-a', undefined, 17)))
    .then([leased('c-a', '10.255.128.0/17')]);
  given(t, [ev.cell('c-big', '10.255.0.0/17'), ev.cell('c-big2', '10.255.128.0/17')])
    .when(cell(join('c-a')))
    .thenRejects('overlay-exhausted', 409);
  given(t, [ev.cell('c-big', '10.255.0.0/17'), ev.cell('c-b', '10.255.128.0/24')])
    .when(cell(join('c-a', undefined, 17)))
    .thenRejects('overlay-exhausted', 409);
  // A named range with an underlay address.
  given(t, [])
    .when(cell({ type: 'RegisterCell', data: { cellId: 'cell-1', subnet: '10.255.1.0/24', underlay: '192.0.2.1' } }))
    .then([ev.cell('cell-1', '10.255.1.0/24', '192.0.2.1')]);
});

t.test("containers: addresses from the cell's lease", async (t) => {
  const auto = (containerId: string, appId = 'a', cellId = 'cell-1'): ContainerCommand => ({
    type: 'StartContainer',
    data: { containerId, appId, cellId, instanceIndex: 0 },
  });
  const base = [ev.cell('cell-1'), ev.cell('cell-2'), ev.registered('a')];
  given(t, base)
    .when(container(auto('c1')))
    .then([ev.started('c1', 'a', 'cell-1', '10.255.1.2')], 'the lowest free address (.1 is the gateway)');
  given(t, [...base, ev.started('c1', 'a', 'cell-1', '10.255.1.2'), ev.started('c2', 'a', 'cell-1', '10.255.1.4')])
    .when(container(auto('c3')))
    .then([ev.started('c3', 'a', 'cell-1', '10.255.1.3')], 'the lowest address no running container holds');
  given(t, [...base, ev.started('c1', 'a', 'cell-1', '10.255.1.2'), ev.stopped('c1', 'a', 'cell-1')])
    .when(container(auto('c2')))
    .then([ev.started('c2', 'a', 'cell-1', '10.255.1.2')], 'a stopped container frees its address');
  given(t, base)
    .when(container(auto('c1', 'a', 'cell-2')))
    .then([ev.started('c1', 'a', 'cell-2', '10.255.2.2')], 'from the cell named');
  given(t, [...base, ev.started('c1', 'a', 'cell-1', '10.255.1.2')])
    .when(container(auto('c1')))
    .thenNothing('already-running');
  given(t, [...base, ev.started('c1', 'a', 'cell-1', '10.255.1.2')])
    .when(container(auto('c1', 'a', 'cell-2')))
    .thenRejects('container-conflict', 409);
  given(t, [ev.registered('a')])
    .when(container(auto('c1')))
    .thenRejects('cell-not-found', 404);
  given(t, [...base, ev.decommissioned('cell-2')])
    .when(container(auto('c1', 'a', 'cell-2')))
    .thenRejects('cell-decommissioned', 409);
  const tiny = [ev.cell('c-t', '10.255.9.0/30'), ev.registered('a')];
  given(t, tiny)
    .when(container(auto('c1', 'a', 'c-t')))
    .then([ev.started('c1', 'a', 'c-t', '10.255.9.2')], 'a /30 holds one container');
  given(t, [...tiny, ev.started('c1', 'a', 'c-t', '10.255.9.2')])
    .when(container(auto('c2', 'a', 'c-t')))
    .thenRejects('cell-addresses-exhausted', 409);
  // With an IP it must lie in the lease, and not be the gateway.
  given(t, base)
    .when(container(start('c1', 'a', '10.255.1.1')))
    .thenRejects('ip-reserved', 400);
  given(t, base)
    .when(container(start('c1', 'a', '10.255.2.9')))
    .thenRejects('ip-outside-cell', 400);
});

t.test('policies: create', async (t) => {
  const apps = [ev.registered('a', 'a', 's1'), ev.registered('b', 'b', 's1'), ev.registered('x', 'x', 's2')];
  given(t, apps)
    .when(policies(create('a', rule('b')), admin))
    .then([ev.created('a', 'b')]);
  given(t, apps)
    .when(policies(create('a', rule('b')), dev('s1')))
    .then([ev.created('a', 'b')]);
  given(t, apps)
    .when(policies(create('a', rule('x')), dev('s1')))
    .thenRejects('app-not-accessible', 403);
  given(t, apps)
    .when(policies(create('x', rule('a')), dev('s1')))
    .thenRejects('app-not-accessible', 403);
  given(t, apps)
    .when(policies(create('a', rule('x')), dev('s1', 's2')))
    .then([ev.created('a', 'x')]);
  given(t, apps)
    .when(policies(create('a', rule('nope')), admin))
    .thenRejects('app-not-accessible', 403);
  given(t, [...apps, ev.deleted('b')])
    .when(policies(create('a', rule('b')), admin))
    .thenRejects('app-not-accessible');
  given(t, [...apps, ev.created('a', 'b')])
    .when(policies(create('a', rule('b')), dev('s1')))
    .thenNothing('already-present');
  given(t, apps)
    .when(policies(create('a', rule('b'), rule('b')), admin))
    .then([ev.created('a', 'b')], 'duplicates in one request collapse');
  given(t, [...apps, ev.created('a', 'b')])
    .when(policies(create('a', rule('b'), rule('b', 9000)), admin))
    .then([ev.created('a', 'b', 9000)], 'only new ones are recorded');
});

t.test('policies: quota counts per source app for non-admins only', async (t) => {
  const apps = [ev.registered('a'), ev.registered('b')];
  const two = [ev.created('a', 'b', 1), ev.created('a', 'b', 2)];
  given(t, [...apps, ...two])
    .when(policies(create('a', rule('b', 3)), dev('s1'), 3))
    .then([ev.created('a', 'b', 3)]);
  given(t, [...apps, ...two])
    .when(policies(create('a', rule('b', 3), rule('b', 4)), dev('s1'), 3))
    .thenRejects('quota-exceeded', 403);
  given(t, [...apps, ...two])
    .when(policies(create('a', rule('b', 3), rule('b', 4)), admin, 3))
    .then([{ type: 'PoliciesCreated', v: 1, data: { sourceAppId: 'a', policies: [rule('b', 3), rule('b', 4)] } }]);
  given(t, [...apps, ...two])
    .when(policies(create('b', rule('a', 3), rule('a', 4)), dev('s1'), 3))
    .then([{ type: 'PoliciesCreated', v: 1, data: { sourceAppId: 'b', policies: [rule('a', 3), rule('a', 4)] } }], 'another source has its own quota');
});

t.test('policies: delete', async (t) => {
  const apps = [ev.registered('a', 'a', 's1'), ev.registered('b', 'b', 's1'), ev.registered('x', 'x', 's2')];
  given(t, [...apps, ev.created('a', 'b')])
    .when(policies(remove('a', rule('b')), dev('s1')))
    .then([ev.removed('a', 'b')]);
  given(t, apps)
    .when(policies(remove('a', rule('b')), dev('s1')))
    .thenNothing('not-present');
  given(t, [...apps, ev.created('a', 'x')])
    .when(policies(remove('a', rule('x')), dev('s1')))
    .thenRejects('app-not-accessible');
  given(t, apps)
    .when(policies(remove('a', rule('gone')), admin))
    .thenNothing('not-present');
});
