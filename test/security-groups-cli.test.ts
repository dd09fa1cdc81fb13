// The security group verbs and egress `explain` of the netfold CLI as a user runs them (child processes), against a
// real nats-server and gateway; audit and `state --at` cover the groups.
import t from 'tap';
import { startNats } from './harness/nats.ts';
import { startGateway } from './harness/gateway.ts';
import { cliEnv, cliRunner } from './harness/cli.ts';

t.test('netfold security-group verbs, explain for egress, audit and state --at', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  const env = await cliEnv(nats, gw.writer.url, { NETFOLD_TOKEN: gw.admin });
  const netfold = cliRunner(env);
  const ok = async (...args: string[]) => {
    const r = await netfold(...args);
    t.equal(r.code, 0, `netfold ${args.join(' ')}: ${r.stderr}`);
    return r.stdout;
  };

  await ok('cell', 'register', '--id', 'cell-1', '--subnet', '10.255.1.0/24');
  await ok('app', 'register', '--id', 'a1', '--name', 'web', '--space', 's1', '--org', 'o1');
  await ok('container', 'start', '--id', 'web-0', '--app', 'a1', '--cell', 'cell-1', '--index', '0');
  await ok('container', 'start', '--id', 'web-stage', '--app', 'a1', '--cell', 'cell-1', '--index', '1', '--lifecycle', 'staging');

  const created = JSON.parse(
    await ok(
      'security-group',
      'create',
      '--name',
      'public-api',
      '--protocol',
      'tcp',
      '--destination',
      '203.0.113.0/24',
      '--ports',
      '443,8443',
      '--description',
      'the API',
      '--log',
      '--running-spaces',
      's1',
      '--json',
    ),
  );
  t.match(created, { name: 'public-api', rules: [{ protocol: 'tcp', destination: '203.0.113.0/24', ports: '443,8443', description: 'the API', log: true }] });
  const beforeUpdate = created.revision as number;
  t.type(beforeUpdate, 'number');
  t.match(await ok('security-group', 'list'), /public-api\s+\S+\s+1\s+-\s+s1\s+-/);
  t.match(await ok('security-group', 'get', '--group', 'public-api'), /\[0\] tcp\/443,8443 to 203\.0\.113\.0\/24 \(logged\)  # the API/);

  const allowed = JSON.parse(await ok('explain', 'web-0', '203.0.113.5', '443', '--json'));
  t.match(allowed, {
    allowed: true,
    reason: 'allowed by security group public-api',
    matches: [{ groupName: 'public-api', index: 0 }],
    source: { spaceId: 's1', lifecycle: 'running', cellId: 'cell-1' },
  });
  t.match(
    await ok('explain', 'web-0', '203.0.113.5', '22'),
    /DENIED \(1 security group\(s\) apply to space s1 \(running\) but none allows 203\.0\.113\.5 tcp\/22: denied\)/,
  );
  t.match(
    await ok('explain', 'web-stage', '203.0.113.5', '443'),
    /DENIED \(no security group applies to space s1 \(staging\): denied by --egress-default deny\)/,
  );
  t.match(await ok('explain', 'web-stage', '203.0.113.5', '443', '--egress-default', 'allow'), /ALLOWED .*by --egress-default allow/);
  t.match(await ok('explain', 'web-0', '10.255.1.9', '443'), /inside the overlay/);

  await ok(
    'security-group',
    'update',
    '--group',
    'public-api',
    '--rules',
    JSON.stringify([{ protocol: 'icmp', destination: '203.0.113.5', type: 8, code: -1 }]),
  );
  t.match(await ok('explain', 'web-0', '203.0.113.5', '--protocol', 'icmp', '--icmp-type', '8'), /ALLOWED/);
  t.match(await ok('explain', 'web-0', '203.0.113.5', '--protocol', 'icmp', '--icmp-type', '13'), /DENIED/);
  await ok('security-group', 'bind', '--group', 'public-api', '--space', 's1', '--lifecycle', 'staging');
  t.match(await ok('explain', 'web-stage', '203.0.113.5', '--protocol', 'icmp'), /ALLOWED \(allowed by security group public-api\)/);
  t.match(await ok('security-group', 'update', '--group', 'public-api', '--global-running', 'true'), /^ok: security group \S+ updated, revision \d+/);

  // audit names each change; state --at shows the group as it was before the update
  const audit = await ok('audit', '--type', 'SecurityGroupCreated');
  t.match(audit, /SecurityGroupCreated {2}security group \S+ "public-api" created with 1 rule\(s\), bound running \[s1\] staging \[\]/);
  t.match(await ok('audit'), /SecurityGroupSpacesBound {2}security group \S+ bound to staging spaces s1/);
  const then = JSON.parse(await ok('state', '--at', String(beforeUpdate), '--cell', 'cell-1', '--json'));
  t.match(then.securityGroups, [{ name: 'public-api', rules: [{ protocol: 'tcp', ports: '443,8443' }] }], 'the group as it was');
  t.same(Object.keys(then.cell.state.egress), ['s1|running'], "and the cell's egress entry then");
  t.match(await ok('state'), /security groups \(1\):\n {2}public-api \(\S+\) global running, running \[s1\], staging \[s1\]/);

  // refusals: a developer may not write; an invalid rule is a 422 with its path
  const dev = await ok('token', 'mint', '--user', 'dev', '--scope', 'network.write', '--space', 's1', '--ttl', '1h', '--json');
  const refused = await cliRunner({ ...env, NETFOLD_TOKEN: JSON.parse(dev).token })('security-group', 'create', '--name', 'x');
  t.match(refused, { code: 1, stderr: /network\.admin scope \(admin-only\)/ });
  const invalid = await netfold('security-group', 'create', '--name', 'bad', '--protocol', 'tcp', '--destination', '203.0.113.5', '--ports', '70000');
  t.equal(invalid.code, 1);
  t.match(invalid.stderr, /rules\[0\]\.ports: ports must be a valid single port/);
  t.equal((await netfold('security-group', 'frobnicate')).code, 2, 'an unknown verb is a usage error');

  await ok('security-group', 'unbind', '--group', 'public-api', '--space', 's1', '--lifecycle', 'staging');
  t.match(await ok('security-group', 'delete', '--group', 'public-api'), /deleted, revision \d+/);
  t.match(await ok('security-group', 'list'), /0 security groups/);
  t.match(await ok('explain', 'web-0', '203.0.113.5', '443'), /DENIED \(no security group applies/);
});
