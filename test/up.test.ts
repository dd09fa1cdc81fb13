// `netfold up` as a user runs it: embedded nats-server secured with a credential per role (anonymous connections
// refused), the gateway usable with the admin token it writes, the demo signed in with the generated credentials,
// and a clean shutdown on SIGTERM that also stops the embedded server.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Resolver } from 'node:dns/promises';
import { intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { readCredentialFile } from '../runtime/authz.ts';
import { nkeyAuthenticator } from '@nats-io/nats-core';

t.test('netfold up: embedded NATS, gateway with admin token, clean stop', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'netfold-up-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  // An admin token left world-readable (by an older version, or a careless copy) is rewritten 0600.
  writeFileSync(join(dataDir, 'admin.token'), 'stale\n', { mode: 0o644 });
  const child = spawn(
    process.execPath,
    [
      'bin/netfold.mjs',
      'up',
      '--data-dir',
      dataDir,
      '--nats-port=-1',
      '--http-port',
      '0',
      '--dns-port',
      '0',
      '--discovery-http-port',
      '0',
      '--log-level',
      'warn',
      '--demo-data',
      'none',
    ],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NATS_URL: '' },
    },
  );
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let banner = '';
  const ready = await new Promise<{ api: string; nats: string; dns: number }>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      banner += d.toString();
      const api = /policy API:\s+(\S+)/.exec(banner);
      const nats = /NATS:\s+(\S+)/.exec(banner);
      const dns = /DNS:\s+127\.0\.0\.1:(\d+)/.exec(banner);
      if (api && nats && dns && banner.includes('admin token:')) resolve({ api: api[1]!, nats: nats[1]!, dns: Number(dns[1]) });
    });
    child.once('exit', (code) => reject(new Error(`netfold up exited early (${code}): ${banner}`)));
  });
  t.match(banner, new RegExp(`admin token:\\s+${join(dataDir, 'admin.token')}`));
  const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
  t.equal(statSync(join(dataDir, 'admin.token')).mode & 0o777, 0o600, 'the admin token is mode 0600');
  t.equal(statSync(join(dataDir, 'token-secret')).mode & 0o777, 0o600, 'the generated secret is mode 0600');
  const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString());
  t.equal(claims.exp - claims.iat, 7 * 86400, 'the admin token lives --token-max-ttl (7 d by default)');
  const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };

  const { connect } = await import('@nats-io/transport-node');
  await t.rejects(connect({ servers: ready.nats, reconnect: false, timeout: 2000 }), /Authorization/i, 'an anonymous connection is refused');
  const natsDir = join(dataDir, 'nats');
  const files = readdirSync(natsDir).sort();
  const principals = ['admin', 'agent_sim-cell-1', 'agent_sim-cell-2', 'agent_sim-cell-3', 'discovery', 'operator', 'planner'];
  const expected = [...principals, 'platform_cli', 'platform_demo', 'writer']
    .map((n) => `${n}.creds.json`)
    .concat('server.conf')
    .sort();
  t.same(files, expected, 'a credential per principal, and the server config');
  for (const f of files) t.equal(statSync(join(natsDir, f)).mode & 0o777, 0o600, `${f} is mode 0600`);
  const cli = readCredentialFile(join(natsDir, 'platform_cli.creds.json'));
  const nc = await connect({ servers: ready.nats, authenticator: nkeyAuthenticator(new TextEncoder().encode(cli.seed)), inboxPrefix: cli.inboxPrefix });
  for (const appId of ['a', 'b']) {
    const r = await nc.request(intakeSubject('cli', intakeCommand.registerApp), JSON.stringify({ appId, name: appId, spaceId: 's', orgId: 'o' }), {
      timeout: 5000,
    });
    t.match(r.json(), { ok: true });
  }
  await nc.close();

  const body = JSON.stringify({ policies: [{ source: { id: 'a' }, destination: { id: 'b', protocol: 'tcp', ports: { start: 80, end: 80 } } }] });
  const created = await fetch(ready.api, { method: 'POST', headers: auth, body });
  t.equal(created.status, 200);
  const listed = (await (await fetch(ready.api, { headers: auth })).json()) as { total_policies: number };
  t.equal(listed.total_policies, 1);
  const deleted = await fetch(`${ready.api}/delete`, { method: 'POST', headers: auth, body });
  t.equal(deleted.status, 200);
  t.equal(((await (await fetch(ready.api, { headers: auth })).json()) as { total_policies: number }).total_policies, 0);
  t.equal((await fetch(ready.api)).status, 401, 'no token, no access');
  const resolver = new Resolver({ timeout: 2000, tries: 1 });
  resolver.setServers([`127.0.0.1:${ready.dns}`]);
  t.equal(
    await resolver.resolve4('a.apps.internal').then(
      () => 'answered',
      (e: { code: string }) => e.code,
    ),
    'ENOTFOUND',
    'DNS answers (no containers yet)',
  );

  // The newcomer's tour, in a second process, against this running `netfold up` (3 simulated cells by default).
  const { execFile } = await import('node:child_process');
  const tour = await new Promise<{ code: number; out: string }>((resolve) =>
    execFile(
      process.execPath,
      [
        'bin/netfold.mjs',
        'demo',
        '--nats-url',
        ready.nats,
        '--api',
        ready.api.replace(/\/networking.*$/, ''),
        '--dns-port',
        String(ready.dns),
        '--data-dir',
        dataDir,
      ],
      (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
    ),
  );
  t.equal(tour.code, 0, tour.out);
  t.match(tour.out, /cells reporting: sim-cell-1, sim-cell-2, sim-cell-3/);
  t.match(tour.out, /is enforced on every cell/);
  t.match(tour.out, /DNS backend\.apps\.internal -> 10\.255\.2\.11, 10\.255\.3\.12/, "addresses in the simulated cells' registered ranges");
  t.match(tour.out, /tcp\/8080: ALLOWED/);
  t.match(tour.out, /tcp\/9090: DENIED/);

  child.kill('SIGTERM');
  t.equal(await exited, 0, 'exits cleanly on SIGTERM');
  const { connect: again } = await import('@nats-io/transport-node');
  await t.rejects(again({ servers: ready.nats, reconnect: false, timeout: 1000 }), 'the embedded nats-server is gone');
});

t.test('netfold up refuses a token secret shorter than 32 bytes before starting anything', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'netfold-up-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const child = spawn(
    process.execPath,
    ['bin/netfold.mjs', 'up', '--data-dir', dataDir, '--nats-port=-1', '--http-port', '0', '--token-secret', 'short-secret'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NATS_URL: '' },
    },
  );
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  t.equal(code, 1, stderr);
  t.match(stderr, /at least 32 bytes, got 12 \(weak-token-secret\)/);
  t.notOk(stderr.includes('netfold is up'), 'nothing started');
});

/** `netfold up` on `dataDir` with free ports; resolves with the banner's gateway URL once it is up. */
async function startUp(t: Test, dataDir: string, extra: string[] = []) {
  const args = ['bin/netfold.mjs', 'up', '--data-dir', dataDir, '--nats-port=-1', '--http-port', '0', '--dns-port', '0', '--discovery-http-port', '0'];
  const child = spawn(process.execPath, [...args, '--log-level', 'warn', ...extra], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NATS_URL: '' },
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  let banner = '';
  const gateway = await new Promise<string>((resolve, reject) => {
    child.stderr!.on('data', (d: Buffer) => {
      banner += d.toString();
      const api = /policy API:\s+(\S+)\/networking/.exec(banner);
      if (api && banner.includes('admin token:')) resolve(api[1]!);
    });
    child.once('exit', (code) => reject(new Error(`netfold up exited early (${code}): ${banner}`)));
  });
  const stop = async () => {
    child.kill('SIGTERM');
    return exited;
  };
  return { gateway, banner, stop };
}

t.test("npm start on a fresh data dir: the console's reads show the demo's apps, policy and cells; a restart adds nothing", async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'netfold-up-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const get = async (gateway: string, path: string) => {
    const token = readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
    const r = await fetch(`${gateway}${path}`, { headers: { authorization: `Bearer ${token}` } });
    t.equal(r.status, 200, path);
    return r.json() as Promise<any>;
  };
  const first = await startUp(t, dataDir);
  t.match(first.banner, /demo data:/, 'the banner says the demo was seeded');
  const apps = await get(first.gateway, '/netfold/v1/apps');
  t.match(JSON.stringify(apps), /demo-frontend/, 'the graph has the demo apps');
  t.match(JSON.stringify(apps), /demo-backend/);
  const policies = await get(first.gateway, '/networking/v1/external/policies');
  t.equal(policies.total_policies, 1, 'and the demo policy');
  t.match(policies.policies[0], { source: { id: 'demo-frontend' }, destination: { id: 'demo-backend', protocol: 'tcp', ports: { start: 8080, end: 8080 } } });
  const cells = JSON.stringify(await get(first.gateway, '/netfold/v1/cells'));
  for (const c of ['sim-cell-1', 'sim-cell-2', 'sim-cell-3']) t.match(cells, c, `the cells table has ${c}`);
  t.equal(await first.stop(), 0, 'stops cleanly');

  // The same data dir again: the log has apps, so nothing is seeded twice.
  const again = await startUp(t, dataDir);
  t.equal((await get(again.gateway, '/networking/v1/external/policies')).total_policies, 1, 'still one policy');
  t.same(await get(again.gateway, '/netfold/v1/apps'), apps, 'the same apps');
  t.equal(await again.stop(), 0);
});

t.test('netfold up refuses an unknown --demo-data before starting anything', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'netfold-up-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const child = spawn(process.execPath, ['bin/netfold.mjs', 'up', '--data-dir', dataDir, '--nats-port=-1', '--http-port', '0', '--demo-data', 'lots'], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NATS_URL: '' },
  });
  let stderr = '';
  child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('close', (c) => resolve(c)));
  t.equal(code, 1, stderr);
  t.match(stderr, /--demo-data must be seed or none.*invalid-demo-data/);
  t.notOk(stderr.includes('netfold is up'), 'nothing started');
});
