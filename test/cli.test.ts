// The netfold CLI as a user runs it (a child process), against a real nats-server and gateway.
import t from 'tap';
import { startNats } from './harness/nats.ts';
import { startGateway, TEST_SECRET } from './harness/gateway.ts';
import { cliEnv, cliRunner } from './harness/cli.ts';
import { verifyToken } from '../runtime/tokens.ts';

t.test('netfold CLI: token, app, container, policy', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  // the CLI signs in as `netfold up`'s files in the data dir say: intake as platform `cli`, reads as the operator
  const env = await cliEnv(nats, gw.writer.url);
  const netfold = cliRunner(env);

  const minted = await netfold('token', 'mint', '--user', 'dev', '--scope', 'network.write', '--space', 's1', '--ttl', '1h', '--json');
  t.equal(minted.code, 0, minted.stderr);
  const { token } = JSON.parse(minted.stdout);
  t.same(await verifyToken(TEST_SECRET, token), { user: 'dev', scopes: ['network.write'], spaces: ['s1'] });
  env.NETFOLD_TOKEN = token;

  // Minting beyond what the gateway accepts, or with a weak secret, is refused with a clear error.
  const tooLong = await netfold('token', 'mint', '--user', 'dev', '--scope', 'network.write', '--ttl', '8d', '--json');
  t.equal(tooLong.code, 1);
  t.match(JSON.parse(tooLong.stderr), { code: 'ttl-too-long', error: /--token-max-ttl/ });
  const withinMax = await netfold('token', 'mint', '--user', 'dev', '--scope', 'network.write', '--ttl', '2h', '--token-max-ttl', '1h');
  t.equal(withinMax.code, 1);
  t.match(withinMax.stderr, /longer than the gateway accepts .* \(ttl-too-long\)/);
  const weak = await cliRunner({ ...env, NETFOLD_TOKEN_SECRET: 'too-short' })('token', 'mint', '--user', 'dev', '--scope', 'network.write');
  t.equal(weak.code, 1);
  t.match(weak.stderr, /at least 32 bytes.*\(weak-token-secret\)/);

  const reg = await netfold('app', 'register', '--id', 'a1', '--name', 'web', '--space', 's1', '--org', 'o1', '--json');
  t.same(JSON.parse(reg.stdout), { ok: true, revision: 1, appended: 1 });
  t.match((await netfold('app', 'register', '--id', 'a2', '--name', 'api', '--space', 's1', '--org', 'o1')).stdout, /^ok: revision 2/);
  t.match((await netfold('app', 'register', '--id', 'a2', '--name', 'api', '--space', 's1', '--org', 'o1')).stdout, /already-registered, nothing appended/);
  const unknownCell = await netfold('container', 'start', '--id', 'c1', '--app', 'a2', '--cell', 'cell-1', '--index', '0', '--ip', '10.255.1.2');
  t.equal(unknownCell.code, 1);
  t.match(unknownCell.stderr, /cell cell-1 is not registered \(cell-not-found\)/);
  t.match((await netfold('cell', 'register', '--id', 'cell-1', '--subnet', '10.255.1.0/24')).stdout, /^ok: revision 3/);
  const overlap = await netfold('cell', 'register', '--id', 'cell-2', '--subnet', '10.255.0.0/20');
  t.equal(overlap.code, 1);
  t.match(overlap.stderr, /overlaps cell cell-1 \(subnet-overlap\)/);
  t.match(
    (await netfold('container', 'start', '--id', 'c1', '--app', 'a2', '--cell', 'cell-1', '--index', '0', '--ip', '10.255.1.2')).stdout,
    /^ok: revision 4/,
  );
  const borrowed = await netfold('container', 'start', '--id', 'c9', '--app', 'a1', '--cell', 'cell-1', '--index', '0', '--ip', '10.255.1.2');
  t.equal(borrowed.code, 1);
  t.match(borrowed.stderr, /held by running container c1: stop it first \(ip-in-use\)/);

  const add = await netfold('policy', 'add', '--from', 'a1', '--to', 'a2', '--port', '8080-8090', '--json');
  t.equal(add.code, 0, add.stderr);
  t.same(JSON.parse(add.stdout), { revision: 5 });
  const list = await netfold('policy', 'list');
  t.match(list.stdout, /a1\s+a2\s+tcp\s+8080-8090/);
  t.match(list.stdout, /1 policies \(revision 5\)/);
  const listJson = JSON.parse((await netfold('policy', 'list', '--source', 'a1', '--json')).stdout);
  t.equal(listJson.total_policies, 1);
  t.equal((await netfold('policy', 'remove', '--from', 'a1', '--to', 'a2', '--port', '8080-8090')).code, 0);
  t.match((await netfold('policy', 'list')).stdout, /0 policies/);
  t.match((await netfold('container', 'stop', '--id', 'c1', '--json')).stdout, /"appended":1/);
  t.match((await netfold('app', 'delete', '--id', 'a1')).stdout, /^ok/);
  t.match((await netfold('cell', 'decommission', '--id', 'cell-1')).stdout, /^ok/);
  // Leases: a cell joins with its underlay address and is leased a range; a start without --ip gets an address of it.
  t.match(
    (await netfold('cell', 'register', '--id', 'host-a', '--underlay', '192.0.2.10')).stdout,
    /^ok: revision \d+, range 10\.255\.0\.0\/24 at 192\.0\.2\.10/,
  );
  t.match(
    (await netfold('container', 'start', '--id', 'c5', '--app', 'a2', '--cell', 'host-a', '--index', '1')).stdout,
    /^ok: revision \d+, ip 10\.255\.0\.2 \(address-allocated\)/,
  );
  const cells = await netfold('cells');
  t.match(cells.stdout, /host-a\s+10\.255\.0\.0\/24 \(leased\)\s+192\.0\.2\.10\s+\(no agent\)/, 'netfold cells shows the lease and the underlay address');
  t.match(JSON.parse((await netfold('cells', '--json')).stdout), [
    { cellId: 'host-a', registration: { subnet: '10.255.0.0/24', underlay: '192.0.2.10', leased: true } },
  ]);
  const taken = await netfold('cell', 'register', '--id', 'host-b', '--underlay', '192.0.2.10');
  t.equal(taken.code, 1);
  t.match(taken.stderr, /underlay-in-use/);
  const quarantine = JSON.parse((await netfold('quarantine', '--json')).stdout);
  t.same(quarantine.entries, [], 'nothing skipped by the folds');

  const denied = await netfold('policy', 'add', '--from', 'a2', '--to', 'nope', '--port', '80');
  t.equal(denied.code, 1);
  t.match(denied.stderr, /cannot be found or accessed \(app-not-accessible\)/);
  const badIp = await netfold('container', 'start', '--id', 'c2', '--app', 'a2', '--cell', 'x', '--index', '0', '--ip', 'nope', '--json');
  t.equal(badIp.code, 1);
  t.match(JSON.parse(badIp.stderr), { code: 'invalid-input' });
  const usage = await netfold('policy', 'add', '--from', 'a2');
  t.equal(usage.code, 2);
  t.match(usage.stderr, /--to is required|--port is required/);
  t.equal((await netfold('frobnicate')).code, 2);
  t.equal((await netfold('app', 'register', '--bogus')).code, 2);
  t.match((await netfold('help')).stdout, /usage: netfold/);
});
