// Signing in with credential files, against a real secured nats-server: the files `netfold up` keeps (one per
// principal, 0600, seeds kept across starts), and a service whose role may not manage streams or buckets checking
// them instead: it starts when they exist, and stops with `topology-missing` when they do not.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNats } from './harness/nats.ts';
import { authorizationBlock, credentialFileOf, ensureCredentialFiles, readCredentialFile, type Principal } from '../runtime/authz.ts';
import { clientAuthOf, connectBus } from '../runtime/nats.ts';
import { natsClientOf } from '../runtime/config.ts';
import { defaultTopologyOptions, ensureBuckets, ensureTopology } from '../runtime/topology.ts';
import { silentLogger } from '../runtime/logger.ts';
import { followRecords } from '../services/discovery/follower.ts';
import { DiscoveryIndex } from '../services/discovery/records.ts';
import { writePrivateFile } from '../runtime/private-file.ts';
import { execFile, spawnSync } from 'node:child_process';
import { startNatsServer } from '../runtime/nats-server.ts';

t.test('credential files: one 0600 file per principal, kept across calls, missing ones created', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-creds-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const first = ensureCredentialFiles(dir, [{ role: 'admin' }, { role: 'writer' }]);
  t.same(first.created, ['admin', 'writer']);
  const file = credentialFileOf(dir, 'writer');
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.same(readCredentialFile(file), { name: 'writer', seed: first.credentials[1]!.seed, inboxPrefix: '_INBOX.writer' });
  const second = ensureCredentialFiles(dir, [{ role: 'admin' }, { role: 'writer' }, { role: 'agent', cellId: 'c1' }]);
  t.same(second.created, ['agent_c1'], 'only the new principal is generated');
  t.equal(second.credentials[1]!.publicKey, first.credentials[1]!.publicKey, 'an existing principal keeps its key');
  writePrivateFile(join(dir, 'bad.json'), '{"name":"x"}');
  t.throws(() => readCredentialFile(join(dir, 'bad.json')), { code: 'invalid-credential-file' });
  t.throws(() => readCredentialFile(join(dir, 'absent.json')), { code: 'invalid-credential-file' });
});

t.test('a role that may not manage streams checks them: topology-missing until the admin creates them', async (t) => {
  const secured: Principal[] = [{ role: 'writer' }, { role: 'discovery' }, { role: 'agent', cellId: 'cell-1' }];
  const nats = await startNats(t, { secured });
  const log = silentLogger();
  const dir = mkdtempSync(join(tmpdir(), 'netfold-creds-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // each principal signs in from its credential file, as a standalone service with --nats-creds does
  const connectFromFile = async (name: string) => {
    const c = nats.credentials.get(name)!;
    const file = join(dir, `${name}.creds.json`);
    writePrivateFile(file, JSON.stringify({ name: c.name, seed: c.seed, inboxPrefix: c.inboxPrefix }));
    const auth = clientAuthOf(natsClientOf({ natsCreds: file, natsTlsCa: undefined, natsTlsCert: undefined, natsTlsKey: undefined }));
    const bus = await connectBus({ servers: nats.server.url, name, log, ...auth });
    t.teardown(() => bus.close());
    return bus;
  };
  const writer = await connectFromFile('writer');
  await t.rejects(ensureTopology(writer.jsm, defaultTopologyOptions, log), { code: 'topology-missing' }, 'the writer may not create the streams');
  const discovery = await connectFromFile('discovery');
  await ensureTopology(discovery.jsm, defaultTopologyOptions, log); // it reads none of them
  const follow = () => followRecords({ bus: discovery, index: new DiscoveryIndex(60_000), replicas: 1, now: Date.now, log });
  await t.rejects(follow(), { code: 'topology-missing' }, 'nor may discovery create its bucket');

  const admin = await nats.connect('admin'); // creates the streams
  await ensureBuckets(admin.js, { replicas: 1, plannerMemberTtlMs: 5000 });
  await ensureTopology(writer.jsm, defaultTopologyOptions, log);
  t.pass('once they exist, the writer checks them and goes on');
  const followed = await follow();
  await followed.stop();
  t.pass('discovery opens the existing bucket (KV create of an existing bucket only reads its info)');

  const noSeed = join(dir, 'plain.json');
  writePrivateFile(noSeed, readFileSync(join(dir, 'writer.creds.json'), 'utf8').replace(/"seed":"[^"]*"/, '"seed":"nope"'));
  t.throws(() => clientAuthOf({ credsFile: noSeed, tls: undefined }), { code: 'invalid-credential-file' });
  await t.rejects(connectBus({ servers: nats.server.url, name: 'anonymous', log, connectTimeoutMs: 3000 }), { code: 'nats-unauthorized' });
});

t.test('netfold creds: files for a cluster and the authorization block to paste into its config', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-creds-cli-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const out = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
    execFile(process.execPath, ['bin/netfold.mjs', 'creds', '--cells', 'c1,c2', '--platform', 'cc', '--dir', dir, '--json'], (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    ),
  );
  t.equal(out.code, 0, out.stderr);
  const r = JSON.parse(out.stdout) as { created: string[]; users: { name: string; publicKey: string }[]; authorization: string };
  t.same(r.created.sort(), ['admin', 'agent_c1', 'agent_c2', 'discovery', 'operator', 'planner', 'platform_cc', 'writer']);
  for (const name of r.created) t.equal(statSync(credentialFileOf(dir, name)).mode & 0o777, 0o600, `${name}: 0600`);
  // The block is a working server config: agent_c1 signs in with its file, an anonymous client does not.
  const storeDir = mkdtempSync(join(tmpdir(), 'netfold-creds-js-'));
  const configFile = join(dir, 'server.conf');
  writePrivateFile(configFile, r.authorization);
  const server = await startNatsServer({ storeDir, configFile });
  t.teardown(async () => {
    await server.stop();
    rmSync(storeDir, { recursive: true, force: true });
  });
  const agent = await connectBus({
    servers: server.url,
    name: 'agent',
    log: silentLogger(),
    credential: readCredentialFile(credentialFileOf(dir, 'agent_c1')),
  });
  t.ok(agent.nc.getServer(), 'agent_c1 signs in with its file');
  await agent.close();
  await t.rejects(connectBus({ servers: server.url, name: 'anonymous', log: silentLogger(), connectTimeoutMs: 2000 }), 'an anonymous client is refused');
  const again = JSON.parse(
    await new Promise<string>((resolve) =>
      execFile(process.execPath, ['bin/netfold.mjs', 'creds', '--cells', 'c1,c2', '--platform', 'cc', '--dir', dir, '--json'], (_e, stdout) => resolve(stdout)),
    ),
  ) as { created: string[]; users: { publicKey: string }[] };
  t.same(again.created, [], 'a second run keeps every credential');
  t.same(
    again.users.map((u) => u.publicKey),
    r.users.map((u) => u.publicKey),
  );
});

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

t.test(
  'TLS: a process connects with --nats-tls-ca (and its credential) to a server that requires TLS',
  { skip: hasOpenssl ? false : 'needs openssl to make a test CA and certificate' },
  async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'netfold-tls-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    const ssl = (...args: string[]) =>
      new Promise<void>((resolve, reject) => execFile('openssl', args, { cwd: dir }, (err, _o, stderr) => (err ? reject(new Error(stderr)) : resolve())));
    await ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=netfold-test-ca');
    await ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
    writePrivateFile(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n'); // nats.js names 127.0.0.1 localhost
    await ssl(
      'x509',
      '-req',
      '-in',
      'server.csr',
      '-CA',
      'ca.pem',
      '-CAkey',
      'ca.key',
      '-CAcreateserial',
      '-out',
      'server.pem',
      '-days',
      '1',
      '-extfile',
      'ext.cnf',
    );
    const { credentials } = ensureCredentialFiles(join(dir, 'nats'), [{ role: 'operator' }]);
    const configFile = join(dir, 'server.conf');
    writePrivateFile(
      configFile,
      `${authorizationBlock(credentials)}tls {\n  cert_file: "${join(dir, 'server.pem')}"\n  key_file: "${join(dir, 'server.key')}"\n}\n`,
    );
    const storeDir = mkdtempSync(join(tmpdir(), 'netfold-tls-js-'));
    const server = await startNatsServer({ storeDir, configFile });
    t.teardown(async () => {
      await server.stop();
      rmSync(storeDir, { recursive: true, force: true });
    });
    const settings = natsClientOf({
      natsCreds: credentialFileOf(join(dir, 'nats'), 'operator'),
      natsTlsCa: join(dir, 'ca.pem'),
      natsTlsCert: undefined,
      natsTlsKey: undefined,
    });
    const bus = await connectBus({ servers: server.url, name: 'tls', log: silentLogger(), ...clientAuthOf(settings) });
    t.ok(bus.nc.getServer(), 'signed in over TLS with the test CA');
    await bus.close();
    const withoutCa = natsClientOf({
      natsCreds: credentialFileOf(join(dir, 'nats'), 'operator'),
      natsTlsCa: undefined,
      natsTlsCert: undefined,
      natsTlsKey: undefined,
    });
    await t.rejects(
      connectBus({ servers: server.url, name: 'no-ca', log: silentLogger(), connectTimeoutMs: 2000, ...clientAuthOf(withoutCa) }),
      'without the CA the server is not trusted',
    );
  },
);
