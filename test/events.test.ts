import t from 'tap';
import { parseEvent } from '../events/catalogue.ts';
import { parseCfPolicies, parseIdList, parseIntakeCommand } from '../events/commands.ts';
import { record, ev } from './harness/events.ts';

const opts = { maxPolicies: 3 };
const policy = (over: { source?: unknown; destination?: unknown } = {}) => ({
  source: { id: 'a' },
  destination: { id: 'b', protocol: 'tcp', ports: { start: 80, end: 90 } },
  ...over,
});
const issuesOf = (r: { ok: boolean; issues?: { path: string; message: string }[] }) => (r.ok ? [] : r.issues!.map((i) => `${i.path}: ${i.message}`));

t.test('CF policies: a valid body parses', async (t) => {
  const r = parseCfPolicies({ policies: [policy()] }, opts);
  t.same(r, { ok: true, value: [{ sourceAppId: 'a', rule: { destAppId: 'b', protocol: 'tcp', startPort: 80, endPort: 90 } }] });
});

t.test('CF policies: every validation rule gives a clear error', async (t) => {
  const cases: [string, unknown, RegExp][] = [
    ['body not an object', [], /must be an object/],
    ['missing policies', {}, /policies: is required/],
    ['policies not a list', { policies: {} }, /policies: must be an array/],
    ['empty list', { policies: [] }, /at least 1/],
    ['too many', { policies: [policy(), policy(), policy(), policy()] }, /at most 3/],
    ['missing source id', { policies: [policy({ source: {} })] }, /source\.id: is required/],
    ['missing destination id', { policies: [policy({ destination: { protocol: 'tcp', ports: { start: 1, end: 1 } } })] }, /destination\.id: is required/],
    ['bad id characters', { policies: [policy({ source: { id: 'a.b' } })] }, /source\.id: must be 1-128 characters/],
    ['bad protocol', { policies: [policy({ destination: { id: 'b', protocol: 'icmp', ports: { start: 1, end: 1 } } })] }, /protocol: must be one of tcp, udp/],
    ['missing protocol', { policies: [policy({ destination: { id: 'b', ports: { start: 1, end: 1 } } })] }, /protocol: must be one of/],
    ['port 0', { policies: [policy({ destination: { id: 'b', protocol: 'tcp', ports: { start: 0, end: 1 } } })] }, /ports\.start: must be between 1 and 65535/],
    [
      'port above 65535',
      { policies: [policy({ destination: { id: 'b', protocol: 'tcp', ports: { start: 1, end: 65536 } } })] },
      /ports\.end: must be between 1 and 65535/,
    ],
    [
      'start above end',
      { policies: [policy({ destination: { id: 'b', protocol: 'tcp', ports: { start: 9, end: 8 } } })] },
      /start must not be greater than end/,
    ],
    ['non-integer port', { policies: [policy({ destination: { id: 'b', protocol: 'tcp', ports: { start: 1.5, end: 8 } } })] }, /must be an integer/],
    ['missing ports', { policies: [policy({ destination: { id: 'b', protocol: 'tcp' } })] }, /destination\.ports: must be an object/],
    ['source tag', { policies: [policy({ source: { id: 'a', tag: '0001' } })] }, /source\.tag: tags are assigned by the server/],
    [
      'destination tag',
      { policies: [policy({ destination: { id: 'b', tag: '01', protocol: 'tcp', ports: { start: 1, end: 1 } } })] },
      /destination\.tag: tags are assigned/,
    ],
    ['unknown field', { policies: [policy()], extra: 1 }, /extra: is not a known field/],
  ];
  for (const [name, body, expected] of cases) {
    const r = parseCfPolicies(body, opts);
    t.notOk(r.ok, `${name} is refused`);
    t.match(issuesOf(r).join('\n'), expected, name);
  }
});

t.test('CF policies: every problem of one body is reported at once', async (t) => {
  const r = parseCfPolicies({ policies: [policy({ source: {} }), policy({ destination: { id: '', protocol: 'x', ports: { start: 0, end: 0 } } })] }, opts);
  t.ok(issuesOf(r).length >= 4, issuesOf(r).join('\n'));
});

t.test('id lists', async (t) => {
  t.same(parseIdList('a,b', 'id'), { ok: true, value: ['a', 'b'] });
  t.same(parseIdList(undefined, 'id'), { ok: true, value: undefined });
  t.notOk(parseIdList('a,,b', 'id').ok);
  t.notOk(parseIdList(['a', 'b'], 'id').ok);
});

t.test('intake commands', async (t) => {
  const ok = parseIntakeCommand('StartContainer', { containerId: 'c1', appId: 'a', cellId: 'cell-1', instanceIndex: 0, ip: '10.0.0.1', requestId: 'r1' });
  t.same(ok, {
    ok: true,
    value: {
      command: { type: 'StartContainer', data: { containerId: 'c1', appId: 'a', cellId: 'cell-1', instanceIndex: 0, ip: '10.0.0.1' } },
      meta: { requestId: 'r1' },
    },
  });
  const badIps = ['10.0.0', '10.0.0.256', '010.0.0.1', 'localhost', '10.0.0.1 ', '::1'];
  for (const ip of badIps) {
    const r = parseIntakeCommand('StartContainer', { containerId: 'c1', appId: 'a', cellId: 'x', instanceIndex: 0, ip });
    t.match(issuesOf(r).join(), /ip: must be an IPv4 address/, `ip ${JSON.stringify(ip)} refused`);
  }
  t.match(issuesOf(parseIntakeCommand('RegisterApp', { appId: 'a', name: '-bad-', spaceId: 's', orgId: 'o' })).join(), /name: must be a DNS label/);
  t.match(issuesOf(parseIntakeCommand('RegisterApp', { appId: 'a', name: 'ok', spaceId: 's' })).join(), /orgId: is required/);
  t.match(issuesOf(parseIntakeCommand('StopContainer', { containerId: 'c*' })).join(), /containerId: must be/);
  t.match(issuesOf(parseIntakeCommand('StopContainer', { containerId: 'c', bogus: true })).join(), /bogus: is not a known field/);
  t.match(
    issuesOf(parseIntakeCommand('StartContainer', { containerId: 'c', appId: 'a', cellId: 'x', instanceIndex: -1, ip: '1.2.3.4' })).join(),
    /instanceIndex: must be between/,
  );
  t.match(issuesOf(parseIntakeCommand('DeleteApp', 'a')).join(), /must be an object/);
});

t.test('events read back are validated', async (t) => {
  const [rec] = record([ev.started('c1', 'a')]);
  t.same(parseEvent(JSON.parse(JSON.stringify(rec!.event))), { ok: true, value: rec!.event });
  t.notOk(parseEvent({ ...rec!.event, type: 'Nope' }).ok, 'unknown type');
  t.notOk(parseEvent({ ...rec!.event, id: 'not-a-ulid' }).ok, 'bad id');
  t.notOk(parseEvent({ ...rec!.event, at: 'yesterday' }).ok, 'bad time');
  t.notOk(parseEvent({ ...rec!.event, data: { ...rec!.event.data, ip: '999.1.1.1' } }).ok, 'bad data');
  t.match(issuesOf(parseEvent({ ...rec!.event, v: 3 })).join(), /newer than this build knows/);
  t.notOk(parseEvent(null).ok);
});

t.test('cell registrations: leased or named, with an underlay address; bad ones refused with their path', async (t) => {
  t.same(parseIntakeCommand('RegisterCell', { cellId: 'c1', underlay: '192.0.2.7' }), {
    ok: true,
    value: { command: { type: 'RegisterCell', data: { cellId: 'c1', underlay: '192.0.2.7' } }, meta: {} },
  });
  t.same(parseIntakeCommand('RegisterCell', { cellId: 'c1', prefix: 26 }), {
    ok: true,
    value: { command: { type: 'RegisterCell', data: { cellId: 'c1', prefix: 26 } }, meta: {} },
  });
  t.match(issuesOf(parseIntakeCommand('RegisterCell', { cellId: 'c1', underlay: '192.0.2' })).join(), /underlay: must be an IPv4 address/);
  t.match(issuesOf(parseIntakeCommand('RegisterCell', { cellId: 'c1', prefix: 31 })).join(), /prefix: must be between 8 and 30/);
  t.match(issuesOf(parseIntakeCommand('RegisterCell', { cellId: 'c1', prefix: '24' })).join(), /prefix: must be an integer/);
  t.match(issuesOf(parseIntakeCommand('RegisterCell', { cellId: 'c1', subnet: '10.255.1.0/24', prefix: 24 })).join(), /prefix: only for a leased range/);
  t.match(issuesOf(parseIntakeCommand('RegisterCell', { cellId: 'c1', subnet: '10.255.1.7/24' })).join(), /subnet: must have no host bits/);
  // A start without an IP (or with null) asks the writer for one.
  const auto = parseIntakeCommand('StartContainer', { containerId: 'c1', appId: 'a', cellId: 'cell-1', instanceIndex: 0, ip: null });
  t.same(auto, {
    ok: true,
    value: { command: { type: 'StartContainer', data: { containerId: 'c1', appId: 'a', cellId: 'cell-1', instanceIndex: 0 } }, meta: {} },
  });
});

t.test('CellRegistered: v1 upcast to v2; v2 validated', async (t) => {
  const [rec] = record([ev.cell('cell-1', '10.255.1.0/24', '192.0.2.1', true)]);
  const e = rec!.event;
  t.same(parseEvent(JSON.parse(JSON.stringify(e))), { ok: true, value: e });
  const v1 = { ...e, v: 1, data: { cellId: 'cell-1', subnet: '10.255.1.0/24' } };
  t.same(parseEvent(v1), { ok: true, value: { ...e, data: { cellId: 'cell-1', subnet: '10.255.1.0/24', underlay: null, leased: false } } });
  t.match(issuesOf(parseEvent({ ...e, data: { ...e.data, underlay: 'host-a' } })).join(), /data.underlay: must be an IPv4 address/);
  t.match(issuesOf(parseEvent({ ...e, data: { cellId: 'cell-1', subnet: '10.255.1.0/24', underlay: null } })).join(), /data.leased: is required/);
  t.match(issuesOf(parseEvent({ ...e, v: 3 })).join(), /newer than this build knows/);
});
