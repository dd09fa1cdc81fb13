// Signing in with credential files, against a real secured nats-server: the files `netfold up` keeps (one per
// principal, 0600, seeds kept across starts), and a service whose role may not manage streams or buckets checking
// them instead: it starts when they exist, and stops with `topology-missing` when they do not.
import t from 'tap';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNats } from './harness/nats.ts';
import { credentialFileOf, ensureCredentialFiles, readCredentialFile, type Principal } from '../runtime/authz.ts';
import { clientAuthOf, connectBus } from '../runtime/nats.ts';
import { natsClientOf } from '../runtime/config.ts';
import { defaultTopologyOptions, ensureBuckets, ensureTopology } from '../runtime/topology.ts';
import { silentLogger } from '../runtime/logger.ts';
import { followRecords } from '../services/discovery/follower.ts';
import { DiscoveryIndex } from '../services/discovery/records.ts';
import { writePrivateFile } from '../runtime/private-file.ts';

t.test('credential files: one 0600 file per principal, kept across calls, missing ones created', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-creds-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const first = ensureCredentialFiles(dir, [{ role: 'admin' }, { role: 'writer' }]);
  t.same(first.created, ['admin', 'writer']);
  const file = credentialFileOf(dir, 'writer');
  t.equal(statSync(file).mode & 0o777, 0o600);
  t.same(readCredentialFile(file), { name: 'writer', seed: first.credentials[1]!.seed, inboxPrefix: '_INBOX_writer' });
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
