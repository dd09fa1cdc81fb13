// Application security groups without NATS: rule validation (Cloud Foundry's rules), the decider (given / when /
// then), the fold and each cell's egress entries (the incremental planner against the whole derivation), which cells
// a change touches, and the agent's nftables rendering (whole table and differences).
import t from 'tap';
import { type DomainEvent, parseEvent } from '../events/catalogue.ts';
import {
  EGRESS_PROTOCOLS,
  MAX_DESTINATIONS_PER_RULE,
  MAX_RULES_PER_GROUP,
  SECURITY_GROUP_NAME_MAX,
  type EgressRule,
  type SecurityGroupCommand,
  destinationRanges,
  mergeRanges,
  parseCreateSecurityGroup,
  parseUpdateSecurityGroup,
  portRanges,
} from '../events/security-groups.ts';
import { decideSecurityGroup } from '../services/policy-writer/decide-security-groups.ts';
import type { Access } from '../services/policy-writer/decide.ts';
import { type Model, securityGroupsFor } from '../projections/model.ts';
import { deriveCellState, dirtyEntries, emptyCellState } from '../projections/cell.ts';
import { canonicalJson } from '../projections/canonical.ts';
import { PlannerCore } from '../services/topology-planner/core.ts';
import {
  EGRESS_DEFAULTS,
  type EgressRenderCache,
  EgressEnforcer,
  MAX_EXPANSION,
  MemoryEgressDriver,
  egressCounts,
  groupChainOf,
  logPrefixOf,
  planEgress,
  renderEgressDiff,
  renderEgressRule,
  renderEgressTable,
  spaceChainOf,
} from '../services/cell-agent/egress.ts';
import { explainEgress, ruleAllows } from '../projections/explain-egress.ts';
import { given } from './harness/decider-spec.ts';
import { ev, record, modelOf } from './harness/events.ts';

const admin: Access = { admin: true, spaces: [] };
const developer: Access = { admin: false, spaces: ['s1'] };
const tcp443: EgressRule = { protocol: 'tcp', destination: '203.0.113.5', ports: '443' };

const sg = {
  created: (
    groupId: string,
    name = groupId,
    rules: EgressRule[] = [tcp443],
    o: { running?: string[]; staging?: string[]; global?: boolean } = {},
  ): DomainEvent => ({
    type: 'SecurityGroupCreated',
    v: 1,
    data: {
      groupId,
      name,
      rules,
      globallyEnabled: { running: o.global ?? false, staging: false },
      runningSpaces: o.running ?? [],
      stagingSpaces: o.staging ?? [],
    },
  }),
  updated: (groupId: string, name: string, rules: EgressRule[], running = false): DomainEvent => ({
    type: 'SecurityGroupUpdated',
    v: 1,
    data: { groupId, name, rules, globallyEnabled: { running, staging: false } },
  }),
  bound: (groupId: string, spaceIds: string[], lifecycle: 'running' | 'staging' = 'running'): DomainEvent => ({
    type: 'SecurityGroupSpacesBound',
    v: 1,
    data: { groupId, lifecycle, spaceIds },
  }),
  unbound: (groupId: string, spaceIds: string[], lifecycle: 'running' | 'staging' = 'running'): DomainEvent => ({
    type: 'SecurityGroupSpacesUnbound',
    v: 1,
    data: { groupId, lifecycle, spaceIds },
  }),
  deleted: (groupId: string, name = groupId): DomainEvent => ({ type: 'SecurityGroupDeleted', v: 1, data: { groupId, name } }),
};

const issuesOf = (r: { ok: boolean; issues?: { path: string; message: string }[] }) => (r.ok ? [] : r.issues!.map((i) => `${i.path}: ${i.message}`));

t.test('rule validation: Cloud Foundry rules, every issue with its path', async (t) => {
  t.same(EGRESS_PROTOCOLS, ['tcp', 'udp', 'icmp', 'all']);
  const ok = parseCreateSecurityGroup({
    name: 'public',
    rules: [
      { protocol: 'tcp', destination: '10.0.0.0/8,192.168.1.1-192.168.1.9,203.0.113.5', ports: '80,443,8000-9000', description: 'd', log: true },
      { protocol: 'udp', destination: '0.0.0.0/0', ports: '53' },
      { protocol: 'icmp', destination: '0.0.0.0/0', type: -1, code: -1 },
      { protocol: 'all', destination: '192.0.2.0/24' },
    ],
    globally_enabled: { running: true },
    relationships: { running_spaces: { data: [{ guid: 's2' }, { guid: 's1' }] } },
  });
  t.ok(ok.ok, 'a valid group');
  if (ok.ok) {
    t.same(ok.value.globallyEnabled, { running: true, staging: false }, 'a missing flag is false');
    t.same(ok.value.runningSpaces, ['s1', 's2'], 'spaces sorted');
  }
  const bad = (rules: unknown[]) => issuesOf(parseCreateSecurityGroup({ name: 'x', rules }));
  t.match(bad([{ protocol: 'sctp', destination: '1.2.3.4' }]), [/rules\[0\]\.protocol: must be one of tcp, udp, icmp, all/]);
  t.match(bad([{ protocol: 'tcp', destination: '1.2.3.4' }]), [/ports are required for protocols of type TCP and UDP/]);
  t.match(bad([{ protocol: 'tcp', destination: '1.2.3.4', ports: '6000-5000' }]), [/ports must be a valid single port/]);
  t.match(bad([{ protocol: 'tcp', destination: '1.2.3.4', ports: '0' }]), [/ports must be a valid single port/]);
  t.match(bad([{ protocol: 'tcp', destination: '1.2.3.4', ports: '65536' }]), [/ports must be a valid single port/]);
  t.match(bad([{ protocol: 'udp', destination: '1.2.3.4', ports: 42 }]), [/ports must be a string/]);
  t.match(bad([{ protocol: 'all', destination: '1.2.3.4', ports: '80' }]), [/ports are not allowed for protocols of type all/]);
  t.match(bad([{ protocol: 'icmp', destination: '1.2.3.4' }]), [/type is required for protocols of type ICMP/, /code is required for protocols of type ICMP/]);
  t.match(bad([{ protocol: 'icmp', destination: '1.2.3.4', type: 256, code: -2 }]), [/type must be an integer between -1 and 255/, /code must be an integer/]);
  t.match(bad([{ protocol: 'tcp', destination: '1.2.3.4', ports: '80', type: 8 }]), [/type is only allowed for protocols of type ICMP/]);
  t.match(bad([{ protocol: 'all' }]), [/destination is required/]);
  t.match(bad([{ protocol: 'all', destination: '1.2.3.4, 5.6.7.8' }]), [/must not contain whitespace/]);
  t.match(bad([{ protocol: 'all', destination: '1.2.3.400' }]), [/not a valid CIDR, IP address, or IP address range/]);
  t.match(bad([{ protocol: 'all', destination: '10.0.0.0/33' }]), [/is not a valid CIDR/]);
  t.match(bad([{ protocol: 'all', destination: '10.0.0.9-10.0.0.1' }]), [/range endpoints are inverted/]);
  t.match(bad([{ protocol: 'all', destination: 'example.com' }]), [/not a valid CIDR/], 'a name is refused (nft would resolve it)');
  t.match(bad([{ protocol: 'all', destination: '1.2.3.4', log: 'yes' }]), [/log must be a boolean/]);
  t.match(bad([{ protocol: 'all', destination: '1.2.3.4', description: 7 }]), [/description must be a string/]);
  t.match(bad([{ protocol: 'all', destination: '1.2.3.4', extra: 1 }]), [/rules\[0\]\.extra: is not a known field/]);
  t.match(bad(['rule']), [/rules\[0\]: must be an object/]);
  t.match(issuesOf(parseCreateSecurityGroup({ rules: [] })), [/name: is required/]);
  t.match(issuesOf(parseCreateSecurityGroup({ name: 'x'.repeat(SECURITY_GROUP_NAME_MAX + 1) })), [/at most 250/]);
  t.match(issuesOf(parseCreateSecurityGroup({ name: 'x', rules: 'all' })), [/rules: must be an array/]);
  t.match(issuesOf(parseCreateSecurityGroup({ name: 'x', relationships: { running_spaces: { data: [{ guid: 'a.b' }] } } })), [/guid: must be 1-128/]);
  t.match(issuesOf(parseCreateSecurityGroup({ name: 'x', globally_enabled: { running: 'yes' } })), [/globally_enabled.running: must be true or false/]);
  t.equal(issuesOf(parseCreateSecurityGroup({ name: 'x', rules: Array(MAX_RULES_PER_GROUP + 1).fill(tcp443) })).length, 1, 'too many rules');
  t.match(
    destinationRanges(
      Array(MAX_DESTINATIONS_PER_RULE + 1)
        .fill('1.2.3.4')
        .join(','),
    ),
    /at most/,
  );
  t.same(issuesOf(parseUpdateSecurityGroup({ globally_enabled: { staging: true } })), []);
  t.match(issuesOf(parseUpdateSecurityGroup({ guid: 'x' })), [/guid: is not a known field/]);
});

t.test('destinations and ports become merged numeric ranges (host bits of a CIDR ignored, as CF does)', async (t) => {
  t.same(destinationRanges('192.168.10.2/24'), [{ first: 3232238080, last: 3232238335 }]);
  t.same(destinationRanges('10.0.0.5,10.0.0.1-10.0.0.5,10.0.0.6'), [{ first: 167772161, last: 167772166 }], 'overlaps and neighbours joined');
  t.same(portRanges('443,80,8000-9000,8500-9500'), [
    { first: 80, last: 80 },
    { first: 443, last: 443 },
    { first: 8000, last: 9500 },
  ]);
  t.same(mergeRanges([]), []);
});

t.test('decider: given / when / then', async (t) => {
  const create = (groupId: string, name: string): SecurityGroupCommand => ({
    type: 'CreateSecurityGroup',
    data: { groupId, name, rules: [tcp443], globallyEnabled: { running: false, staging: false }, runningSpaces: ['s1'], stagingSpaces: [] },
  });
  const decide =
    (cmd: Parameters<typeof decideSecurityGroup>[0], access = admin) =>
    (m: Model) =>
      decideSecurityGroup(cmd, {
        access,
        group: m.securityGroups[cmd.data.groupId],
        nameOwner: 'name' in cmd.data && cmd.data.name !== undefined ? m.securityGroupIdByName[cmd.data.name] : undefined,
      });
  given(t, [])
    .when(decide(create('g1', 'web')))
    .then([sg.created('g1', 'web', [tcp443], { running: ['s1'] })]);
  given(t, [])
    .when(decide(create('g1', 'web'), developer))
    .thenRejects('admin-only', 403);
  given(t, [sg.created('g1', 'web')])
    .when(decide(create('g1', 'web')))
    .thenNothing('already-created');
  given(t, [sg.created('g1', 'web')])
    .when(decide(create('g2', 'web')))
    .thenRejects('security-group-name-taken', 422);
  given(t, [sg.created('g1', 'web'), sg.created('g2', 'db')])
    .when(decide({ type: 'UpdateSecurityGroup', data: { groupId: 'g2', name: 'web' } }))
    .thenRejects('security-group-name-taken', 422);
  given(t, [sg.created('g1', 'web')])
    .when(decide({ type: 'UpdateSecurityGroup', data: { groupId: 'g1', rules: [tcp443] } }))
    .thenNothing('unchanged');
  given(t, [sg.created('g1', 'web')])
    .when(decide({ type: 'UpdateSecurityGroup', data: { groupId: 'g1', globallyEnabled: { running: true } } }))
    .then([sg.updated('g1', 'web', [tcp443], true)]);
  given(t, [])
    .when(decide({ type: 'UpdateSecurityGroup', data: { groupId: 'g9', name: 'x' } }))
    .thenRejects('security-group-not-found', 404);
  given(t, [sg.created('g1', 'web')])
    .when(decide({ type: 'BindSecurityGroup', data: { groupId: 'g1', lifecycle: 'running', spaceIds: ['s1', 's2'] } }))
    .then([sg.bound('g1', ['s1', 's2'])]);
  given(t, [sg.created('g1', 'web', [tcp443], { running: ['s1'] })])
    .when(decide({ type: 'BindSecurityGroup', data: { groupId: 'g1', lifecycle: 'running', spaceIds: ['s1', 's2'] } }))
    .then([sg.bound('g1', ['s2'])], 'only the spaces not bound yet');
  given(t, [sg.created('g1', 'web', [tcp443], { running: ['s1'] })])
    .when(decide({ type: 'BindSecurityGroup', data: { groupId: 'g1', lifecycle: 'running', spaceIds: ['s1'] } }))
    .thenNothing('already-bound');
  given(t, [sg.created('g1', 'web', [tcp443], { running: ['s1'] })])
    .when(decide({ type: 'UnbindSecurityGroup', data: { groupId: 'g1', lifecycle: 'staging', spaceIds: ['s1'] } }))
    .thenNothing('not-bound');
  given(t, [sg.created('g1', 'web', [tcp443], { running: ['s1'] })])
    .when(decide({ type: 'UnbindSecurityGroup', data: { groupId: 'g1', lifecycle: 'running', spaceIds: ['s1'] } }))
    .then([sg.unbound('g1', ['s1'])]);
  given(t, [sg.created('g1', 'web')])
    .when(decide({ type: 'DeleteSecurityGroup', data: { groupId: 'g1' } }))
    .then([sg.deleted('g1', 'web')]);
  given(t, [sg.created('g1', 'web'), sg.deleted('g1', 'web')])
    .when(decide({ type: 'DeleteSecurityGroup', data: { groupId: 'g1' } }))
    .thenRejects('security-group-not-found', 404);
});

t.test('fold: groups, names, bindings; a name lost to a race is ignored; deletes release everything', async (t) => {
  const m = modelOf([
    sg.created('g1', 'web', [tcp443], { running: ['s1'], staging: ['s1'] }),
    sg.created('g2', 'web'), // the same name: lost the race, ignored
    sg.created('g3', 'all', [tcp443], { global: true }),
    sg.bound('g1', ['s2']),
    sg.bound('g9', ['s2']), // an unknown group: no effect
  ]);
  t.same(Object.keys(m.securityGroups).sort(), ['g1', 'g3']);
  t.same(securityGroupsFor(m, 's1', 'running'), ['g1', 'g3']);
  t.same(securityGroupsFor(m, 's2', 'running'), ['g1', 'g3']);
  t.same(securityGroupsFor(m, 's1', 'staging'), ['g1'], 'g3 is global for running only');
  t.same(securityGroupsFor(m, 's3', 'staging'), []);
  const after = modelOf([
    sg.created('g1', 'web', [tcp443], { running: ['s1'] }),
    sg.updated('g1', 'api', [tcp443]),
    sg.created('g2', 'web'),
    sg.deleted('g1', 'api'),
  ]);
  t.same(Object.keys(after.securityGroups), ['g2'], 'a rename frees the old name');
  t.same({ ...after.securityGroupsBySpace }, {}, 'a delete removes its bindings');
  t.same({ ...after.securityGroupIdByName }, { web: 'g2' });
});

/** A cell scenario: two cells, two spaces, running and staging containers, groups bound, changed and removed. */
function scenario(): DomainEvent[] {
  return [
    ev.cell('cell-1'),
    ev.cell('cell-2'),
    ev.registered('app-a', 'a', 's1'),
    ev.registered('app-b', 'b', 's2'),
    ev.started('a0', 'app-a', 'cell-1', '10.255.1.2', 0),
    ev.started('a1', 'app-a', 'cell-2', '10.255.2.2', 1),
    ev.started('as', 'app-a', 'cell-2', '10.255.2.3', 2, 'staging'),
    ev.started('b0', 'app-b', 'cell-2', '10.255.2.4', 0),
    sg.created('g1', 'web', [tcp443], { running: ['s1'] }),
    sg.created('g2', 'dns', [{ protocol: 'udp', destination: '0.0.0.0/0', ports: '53' }], { global: true }),
    sg.bound('g1', ['s1'], 'staging'),
    sg.updated('g1', 'web', [tcp443, { protocol: 'icmp', destination: '203.0.113.0/24', type: 8, code: 0, log: true }]),
    ev.started('a2', 'app-a', 'cell-1', '10.255.1.3', 3),
    ev.stopped('a0', 'app-a', 'cell-1'),
    sg.unbound('g1', ['s1']),
    sg.updated('g2', 'dns', [{ protocol: 'udp', destination: '0.0.0.0/0', ports: '53' }], false),
    sg.bound('g2', ['s2']),
    ev.deleted('app-b'),
    sg.deleted('g1', 'web'),
  ];
}

t.test('cells: egress entries per (space, lifecycle), groups carried where used; the planner after every event equals the whole derivation', async (t) => {
  const events = scenario();
  const core = new PlannerCore({ domain: 'apps.internal', snapshotEvery: 8, owns: () => true });
  const recs = record(events);
  let seen = 0;
  for (const rec of recs) {
    core.ingest([rec]);
    for (const cell of ['cell-1', 'cell-2'])
      if (canonicalJson(core.cellState(cell) ?? emptyCellState()) !== canonicalJson(deriveCellState(core.model, cell)))
        t.fail(`${cell} differs after ${rec.event.type} #${rec.seq}`);
    seen += 1;
    if (seen === 12) {
      const c2 = core.cellState('cell-2')!;
      t.same(Object.keys(c2.egress).sort(), ['s1|running', 's1|staging', 's2|running'], 'cell-2: one entry per (space, lifecycle) with a group');
      t.same(c2.egress['s1|staging'], { ips: { '10.255.2.3': true }, groups: ['g1'] }, 'the staging container: g1 (bound for staging)');
      t.same(c2.egress['s2|running']?.groups, ['g2'], 's2: the global group only');
      t.same(Object.keys(c2.asg).sort(), ['g1', 'g2']);
      t.equal(c2.asg.g1?.rules.length, 2, 'the updated rules');
    }
  }
  t.pass(`the incremental planner matched the whole derivation after each of ${seen} events`);
  const end = core.cellState('cell-2')!;
  t.same(Object.keys(end.egress), [], 'at the end no group applies on cell-2 (g1 deleted, g2 bound to a space with no container left)');
  t.same(Object.keys(end.asg), []);
  t.same(core.cellState('cell-1')?.egress, {});
});

t.test('a bind touches only the cells running that space’s containers of that lifecycle', async (t) => {
  const events = scenario().slice(0, 9);
  const m = modelOf(events);
  const dirty = (e: DomainEvent) => [...dirtyEntries(m, record([e], 100)[0]!.event).keys()].sort();
  t.same(dirty(sg.bound('g1', ['s2'])), ['cell-2'], 's2 runs on cell-2 only');
  t.same(dirty(sg.bound('g1', ['s1'], 'staging')), ['cell-2'], "s1's staging container is on cell-2 only");
  t.same(dirty(sg.bound('g1', ['s9'])), [], 'a space with no containers: no cell');
  t.same(dirty(sg.updated('g1', 'web', [])), ['cell-1', 'cell-2'], 'a rule change: every cell running a bound space');
});

t.test('agent rendering: a plan, the whole table, differences touching only what changed', async (t) => {
  t.same(EGRESS_DEFAULTS, ['deny', 'allow']);
  t.same(renderEgressRule(tcp443, 'web'), ['ip daddr 203.0.113.5 tcp dport 443 accept']);
  t.same(
    renderEgressRule({ protocol: 'udp', destination: '10.0.0.0/8,192.168.0.1-192.168.0.9', ports: '53,5353-5354', log: true }, 'my group!'),
    [
      'ip daddr 10.0.0.0/8 udp dport 53 log prefix "netfold-asg my_group_ " accept',
      'ip daddr 10.0.0.0/8 udp dport 5353-5354 log prefix "netfold-asg my_group_ " accept',
      'ip daddr 192.168.0.1-192.168.0.9 udp dport 53 log prefix "netfold-asg my_group_ " accept',
      'ip daddr 192.168.0.1-192.168.0.9 udp dport 5353-5354 log prefix "netfold-asg my_group_ " accept',
    ],
    'destinations x ports, one plain rule each (nft loads anonymous sets slowly)',
  );
  const many = Array.from({ length: MAX_EXPANSION + 1 }, (_, i) => `10.1.${i}.1`).join(',');
  t.same(
    renderEgressRule({ protocol: 'tcp', destination: many, ports: '443' }, 'x'),
    [`ip daddr { ${many.split(',').join(', ')} } tcp dport 443 accept`],
    'past MAX_EXPANSION rules: one rule with sets',
  );
  t.same(renderEgressRule({ protocol: 'icmp', destination: '0.0.0.0/0', type: 8, code: -1 }, 'x'), ['ip daddr 0.0.0.0/0 meta l4proto icmp icmp type 8 accept']);
  t.same(renderEgressRule({ protocol: 'all', destination: '10.0.0.0-10.0.0.255' }, 'x'), ['ip daddr 10.0.0.0/24 accept'], 'an aligned range as a CIDR');
  t.equal(renderEgressRule({ protocol: 'all', destination: 'evil.example' }, 'x'), null, 'an invalid rule is left out, never rendered');
  t.equal(logPrefixOf('a"b'), 'netfold-asg a_b ', 'no quote can end the prefix');
  t.equal(groupChainOf('g1'), 'g_g1');
  t.match(groupChainOf('a b'), /^g_h[0-9a-f]{24}$/, 'an id that is not one: a hashed name');
  t.equal(spaceChainOf('s1', 'staging'), 's_s1_s');

  const core = new PlannerCore({ domain: 'apps.internal', snapshotEvery: 8, owns: () => true });
  const recs = record(scenario());
  core.ingest(recs.slice(0, 11));
  const before = planEgress(structuredClone(core.cellState('cell-2')!), ['10.255.2.0/24']);
  t.same(egressCounts(before), { bound: 3, groups: 2, rules: 2 });
  t.same(
    [...before.chains],
    [
      ['s_s1_r', ['g_g1', 'g_g2']],
      ['s_s1_s', ['g_g1']],
      ['s_s2_r', ['g_g2']],
    ],
  );
  const table = renderEgressTable(before, '10.255.0.0/16', 'deny');
  t.match(table, /table inet netfold_egress \{/);
  t.match(table, /elements = \{ 10\.255\.2\.2 : goto s_s1_r, 10\.255\.2\.3 : goto s_s1_s, 10\.255\.2\.4 : goto s_s2_r \}/);
  t.match(
    table,
    /ip daddr 10\.255\.0\.0\/16 accept\n {4}ip saddr vmap @egress_of\n {4}meta l4proto tcp reject with tcp reset/,
    'deny by default after the map',
  );
  t.match(renderEgressTable(before, '10.255.0.0/16', 'allow'), /ip saddr vmap @egress_of\n {4}accept\n/, 'allow by default');
  core.ingest(recs.slice(11, 12)); // g1's rules change
  const after = planEgress(structuredClone(core.cellState('cell-2')!), ['10.255.2.0/24']);
  t.equal(
    renderEgressDiff(before, after),
    [
      'flush chain inet netfold_egress g_g1',
      'add rule inet netfold_egress g_g1 ip daddr 203.0.113.5 tcp dport 443 accept',
      'add rule inet netfold_egress g_g1 ip daddr 203.0.113.0/24 meta l4proto icmp icmp type 8 icmp code 0 log prefix "netfold-asg web " accept',
      '',
    ].join('\n'),
    "a group's rule change: its chain flushed and refilled, nothing else",
  );
  t.equal(renderEgressDiff(after, after), null, 'nothing changed: nothing loaded');
  const cache: EgressRenderCache = new WeakMap();
  const held = core.cellState('cell-2')!;
  const first = planEgress(held, ['10.255.2.0/24'], cache);
  const again = planEgress({ ...held, asg: { ...held.asg, g1: { ...held.asg.g1! } } }, ['10.255.2.0/24'], cache);
  t.equal(again.groups.get('g_g2'), first.groups.get('g_g2'), 'an entry the state still holds is not rendered again');
  t.not(again.groups.get('g_g1'), first.groups.get('g_g1'), 'a replaced entry is');
  t.same(again.groups.get('g_g1'), first.groups.get('g_g1'));
  core.ingest(recs.slice(12, 15)); // a2 starts on cell-1, a0 stops, g1 unbound from s1 running
  const later = planEgress(structuredClone(core.cellState('cell-2')!), ['10.255.2.0/24']);
  t.equal(
    renderEgressDiff(after, later),
    [
      'flush chain inet netfold_egress s_s1_r',
      'add rule inet netfold_egress s_s1_r jump g_g2',
      ...['meta l4proto tcp reject with tcp reset', 'reject with icmpx admin-prohibited'].map((l) => `add rule inet netfold_egress s_s1_r ${l}`),
      '',
    ].join('\n'),
    'an unbind: the (space, lifecycle) chain refilled, no map element touched',
  );
  const plane = new MemoryEgressDriver();
  const enforcer = new EgressEnforcer({ overlayCidr: '10.255.0.0/16', egressDefault: 'deny', driver: plane });
  t.equal(enforcer.egressDefault, 'deny');
  t.equal(await enforcer.converge(core.cellState('cell-2')!, ['10.255.2.0/24']), 'whole');
  t.equal(await enforcer.converge(core.cellState('cell-2')!, ['10.255.2.0/24']), 'none');
  core.ingest(recs.slice(15));
  t.equal(await enforcer.converge(core.cellState('cell-2')!, ['10.255.2.0/24']), 'incremental');
  t.same(enforcer.loads, { full: 1, incremental: 1 });
  t.equal(plane.loaded, 2);
  t.same(enforcer.applied?.bindings.size, 0);
});

t.test('agent rendering fails closed on a state that is not valid', async (t) => {
  const state = deriveCellState(modelOf(scenario().slice(0, 9)), 'cell-2');
  (state.egress as Record<string, unknown>)['no-lifecycle'] = { ips: { '10.255.2.9': true }, groups: ['g1'] };
  (state.asg as Record<string, unknown>).g1 = { name: 'web', rules: [{ protocol: 'all', destination: 'example.com' }, tcp443] };
  const plan = planEgress(state, []);
  t.equal(plan.bindings.get('10.255.2.9'), 's_invalid', 'containers of an invalid entry are denied');
  t.same(plan.groups.get('g_g1')?.rules, ['ip daddr 203.0.113.5 tcp dport 443 accept'], 'an invalid rule is left out');
  t.equal(plan.refused.length, 2);
});

t.test('explain egress: by which group and rule, or why not', async (t) => {
  const m = modelOf(scenario().slice(0, 12));
  const q = (destination: string, protocol: 'tcp' | 'udp' | 'icmp', port?: number, icmpType?: number) => ({
    destination,
    protocol,
    ...(port !== undefined && { port }),
    ...(icmpType !== undefined && { icmpType, icmpCode: 0 }),
  });
  const ex = (source: string, question: ReturnType<typeof q>, dflt: 'deny' | 'allow' = 'deny') => explainEgress(m, source, question, '10.255.0.0/16', dflt);
  t.match(ex('a0', q('203.0.113.5', 'tcp', 443)), {
    allowed: true,
    reason: 'allowed by security group web',
    source: { containerId: 'a0', appId: 'app-a', spaceId: 's1', lifecycle: 'running', cellId: 'cell-1' },
    matches: [{ groupId: 'g1', index: 0 }],
  });
  t.same(
    ex('a0', q('203.0.113.5', 'tcp', 443)).applicable.map((g) => [g.groupName, g.global]),
    [
      ['web', false],
      ['dns', true],
    ],
  );
  t.match(ex('a0', q('8.8.8.8', 'udp', 53)), { allowed: true, matches: [{ groupName: 'dns' }] }, 'a global group');
  t.match(ex('a0', q('203.0.113.5', 'tcp', 80)), {
    allowed: false,
    reason: /2 security group\(s\) apply to space s1 \(running\) but none allows 203\.0\.113\.5 tcp\/80/,
  });
  t.match(ex('a0', q('203.0.113.9', 'icmp', undefined, 8)), { allowed: true, matches: [{ groupName: 'web', index: 1 }] }, 'icmp by type');
  t.match(ex('a0', q('203.0.113.9', 'icmp', undefined, 0)), { allowed: false }, 'another icmp type');
  t.match(ex('as', q('203.0.113.5', 'tcp', 443)), { allowed: true, source: { lifecycle: 'staging' } }, 'the staging container: bound for staging');
  t.match(ex('b0', q('203.0.113.5', 'tcp', 443)), { allowed: false, applicable: [{ groupName: 'dns' }] });
  t.match(ex('app-b', q('203.0.113.5', 'tcp', 443)), { source: { containerId: null, lifecycle: 'running' } }, 'an app: its running containers');
  t.match(ex('a0', q('10.255.2.2', 'tcp', 443)), { allowed: false, reason: /inside the overlay/ });
  t.match(ex('nobody', q('203.0.113.5', 'tcp', 443)), { allowed: false, source: null });
  t.match(ex('a0', q('300.1.1.1', 'tcp', 443)), { allowed: false, reason: /not an IPv4 address/ });
  const bare = modelOf([ev.registered('app-z', 'z', 's9')]);
  t.match(explainEgress(bare, 'app-z', q('1.1.1.1', 'tcp', 443), '10.255.0.0/16', 'allow'), { allowed: true, reason: /allowed by --egress-default allow/ });
  t.equal(ruleAllows({ protocol: 'all', destination: '1.1.1.0/24' }, q('1.1.1.7', 'udp', 9)), true, 'all: any protocol and port');
  t.equal(ruleAllows({ protocol: 'udp', destination: '1.1.1.0/24', ports: '53' }, q('1.1.1.7', 'tcp', 53)), false, 'another protocol');
});

t.test('events read back: ContainerStarted v1 upcast to v2 (running); group events validated like the API', async (t) => {
  const [rec] = record([ev.started('c1', 'a')]);
  const v1 = { ...rec!.event, v: 1, data: { containerId: 'c1', appId: 'a', cellId: 'cell-1', ip: '10.255.1.2', instanceIndex: 0 } };
  const up = parseEvent(JSON.parse(JSON.stringify(v1)));
  t.match(up, { ok: true, value: { type: 'ContainerStarted', v: 2, data: { lifecycle: 'running' } } });
  t.notOk(parseEvent({ ...rec!.event, data: { ...rec!.event.data, lifecycle: 'booting' } }).ok, 'an unknown lifecycle is refused');
  const [created] = record([sg.created('g1', 'web')]);
  t.ok(parseEvent(JSON.parse(JSON.stringify(created!.event))).ok);
  const badRule = { ...created!.event, data: { ...created!.event.data, rules: [{ protocol: 'tcp', destination: 'example.com', ports: '443' }] } };
  t.notOk(parseEvent(badRule).ok, 'a rule with a host name is refused on read (quarantined, never folded)');
  const noSpaces = { ...record([sg.bound('g1', ['s1'])])[0]!.event, data: { groupId: 'g1', lifecycle: 'running', spaceIds: [] } };
  t.notOk(parseEvent(noSpaces).ok, 'a bind names at least one space');
});
