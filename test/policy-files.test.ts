// Policy as code: a policy file (YAML or JSON) parsed with every problem at its line; applied through the gateway
// as one change set (one correlation id), idempotent, with --prune limited to the file's scope; the dry run per
// policy and per cell; export -> apply gives no change; a large file streams its progress; the CLI end to end.
import t, { type Test } from 'tap';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parsePolicyFile } from '../events/policy-file.ts';
import { EventLog } from '../runtime/event-log.ts';
import { startNats } from './harness/nats.ts';
import { startGateway, TEST_SECRET, type GatewayFixture } from './harness/gateway.ts';
import { audit } from '../cli/operators.ts';
import { serverSentEvents } from '../cli/policy-files.ts';
import { progressLine } from '../cli/progress-bar.ts';

const run = promisify(execFile);

t.test('a policy file: YAML or JSON; every problem reported at its line', async (t) => {
  const good = parsePolicyFile(
    'version: 1\nspaces:\n  s1:\n    web:\n      - to: api\n        ports: 8080\n      - { to: db, ports: "5432-5433", protocol: udp }\n',
  );
  t.ok(good.ok);
  if (good.ok)
    t.same(
      good.value.entries.map((e) => [e.source, e.to, e.protocol, e.startPort, e.endPort, e.line, e.space]),
      [
        ['web', 'api', 'tcp', 8080, 8080, 5, 's1'],
        ['web', 'db', 'udp', 5432, 5433, 7, 's1'],
      ],
    );
  const json = parsePolicyFile('{"version": 1, "apps": {"web": [{"to": "api", "ports": 80}]}}');
  t.ok(json.ok && json.value.apps[0]!.name === 'web' && json.value.entries.length === 1, 'JSON is a policy file too');
  const bad = parsePolicyFile(
    [
      'version: 2', // 1
      'spaces:', // 2
      '  s1:', // 3
      '    web:', // 4
      '      - to: api', // 5
      '        ports: 70000', // 6
      '      - ports: 80', // 7
      '        protocol: icmp', // 8
      '        colour: red', // 9
    ].join('\n'),
  );
  t.notOk(bad.ok);
  if (!bad.ok)
    t.same(
      bad.issues.map((i) => [i.line, i.path]),
      [
        [1, 'version'],
        [6, 'spaces.s1.web[0].ports'],
        [9, 'spaces.s1.web[1].colour'],
        [7, 'spaces.s1.web[1].to'],
        [8, 'spaces.s1.web[1].protocol'],
      ],
    );
  const broken = parsePolicyFile('version: 1\nspaces:\n  s1: [\n');
  t.notOk(broken.ok);
  if (!broken.ok) t.match(broken.issues[0], { line: 4, message: /not valid YAML/ });
});

async function setup(t: Test): Promise<{ gw: GatewayFixture; log: EventLog }> {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells('cell-1', 'cell-2');
  const apps = [
    ['app-web', 'web', 's1'],
    ['app-api', 'api', 's1'],
    ['app-db', 'db', 's1'],
    ['app-x', 'x', 's2'],
    ['app-y', 'y', 's2'],
  ];
  for (const [appId, name, spaceId] of apps) t.equal((await gw.intake('registerApp', { appId, name, spaceId, orgId: 'o1' })).ok, true);
  const starts = [
    ['api-0', 'app-api', 'cell-1', '10.255.1.2'],
    ['db-0', 'app-db', 'cell-2', '10.255.2.2'],
    ['web-0', 'app-web', 'cell-1', '10.255.1.3'],
  ];
  for (const [containerId, appId, cellId, ip] of starts)
    t.equal((await gw.intake('startContainer', { containerId, appId, cellId, ip, instanceIndex: 0 })).ok, true);
  return { gw, log: new EventLog(gw.bus) };
}

const FILE = `version: 1
spaces:
  s1:
    web:
      - to: api
        ports: 8080
      - to: app-db
        ports: 5432
        protocol: tcp
`;
const apply = (gw: GatewayFixture, document: string, q = '', token?: string) =>
  gw.http('POST', `/netfold/v1/apply${q}`, { body: { document }, ...(token ? { token } : {}) });

t.test('apply: dry run per policy and per cell, one change set, idempotent, prune within scope, export round trip', async (t) => {
  const { gw, log } = await setup(t);
  // s2 has a policy of its own that no s1 file may touch
  t.equal(
    (
      await gw.http('POST', '/networking/v1/external/policies', {
        body: { policies: [{ source: { id: 'app-x' }, destination: { id: 'app-y', protocol: 'udp', ports: { start: 53, end: 53 } } }] },
      })
    ).status,
    200,
  );

  const before = await log.lastSeq();
  const dry = await apply(gw, FILE, '?dry_run=true');
  t.equal(dry.status, 200, JSON.stringify(dry.body));
  t.match(dry.body, { dry_run: true, created: 2, deleted: 0, unchanged: 0 });
  t.same(
    dry.body.changes.map((c: any) => [c.op, c.source.name, c.destination.name, c.destination.ports.start, c.line]),
    [
      ['create', 'web', 'api', 8080, 5],
      ['create', 'web', 'db', 5432, 7],
    ],
  );
  t.same(dry.body.cells, {
    'cell-1': { added: ['10.255.1.3 -> 10.255.1.2 tcp/8080'], removed: [] },
    'cell-2': { added: ['10.255.1.3 -> 10.255.2.2 tcp/5432'], removed: [] },
  });
  t.equal(await log.lastSeq(), before, 'the dry run appended nothing');

  const applied = await gw.http('POST', '/netfold/v1/apply', { body: { document: FILE }, headers: { 'x-request-id': 'change-set-1' } });
  t.match(applied.body, { dry_run: false, created: 2, deleted: 0, change_set: 'change-set-1' });
  t.ok(applied.body.revision > before);
  const set = await audit(gw.bus, { changeSet: 'change-set-1' });
  t.same(
    set.map((a) => [a.type, a.actor, a.effect]),
    [['PoliciesCreated', 'user:admin', 'allowed: app-web -> app-api tcp/8080, app-web -> app-db tcp/5432']],
    'one audited change set',
  );

  const again = await apply(gw, FILE);
  t.match(again.body, { created: 0, deleted: 0, unchanged: 2 }, 'applying twice changes nothing');
  t.equal(await log.lastSeq(), applied.body.revision, 'nothing appended the second time');

  // A smaller file: without --prune the extra policy stays; with --prune it goes, and s2's policy is out of scope.
  const smaller = 'version: 1\nspaces:\n  s1:\n    web:\n      - { to: api, ports: 8080 }\n    api:\n      - { to: db, ports: 5432-5440 }\n';
  t.match((await apply(gw, smaller)).body, { created: 1, deleted: 0, unchanged: 1 });
  const dryPrune = await apply(gw, smaller, '?prune=true&dry_run=true');
  t.match(dryPrune.body, { created: 0, deleted: 1 });
  t.same(dryPrune.body.cells, { 'cell-2': { added: [], removed: ['10.255.1.3 -> 10.255.2.2 tcp/5432'] } });
  const pruned = await gw.http('POST', '/netfold/v1/apply?prune=true', { body: { document: smaller }, headers: { 'x-request-id': 'change-set-2' } });
  t.match(pruned.body, { created: 0, deleted: 1, unchanged: 2 });
  t.same(
    (await audit(gw.bus, { changeSet: 'change-set-2' })).map((a) => a.effect),
    ['revoked: app-web -> app-db tcp/5432'],
  );
  const list = await gw.http('GET', '/networking/v1/external/policies');
  t.same(
    list.body.policies.map((p: any) => `${p.source.id}>${p.destination.id}/${p.destination.ports.start}`).sort(),
    ['app-api>app-db/5432', 'app-web>app-api/8080', 'app-x>app-y/53'],
    "s2's policy is untouched",
  );

  // Export -> apply (with prune) -> no change, in both formats.
  for (const format of ['yaml', 'json']) {
    const res = await fetch(`${gw.writer.url}/netfold/v1/export?format=${format}`, { headers: { authorization: `Bearer ${gw.admin}` } });
    t.equal(res.status, 200);
    const text = await res.text();
    if (format === 'yaml') t.match(text, /^# netfold policies at revision \d+\n/);
    const parsed = parsePolicyFile(text);
    t.ok(parsed.ok && parsed.value.entries.length === 3, `${format}: the export is a policy file of the 3 policies`);
    const seq = await log.lastSeq();
    t.match((await apply(gw, text, '?prune=true')).body, { created: 0, deleted: 0, unchanged: 3 }, `${format}: export -> apply --prune changes nothing`);
    t.equal(await log.lastSeq(), seq);
  }
});

t.test('refusals: bad files, unknown or inaccessible apps, an app in another space; nothing appended', async (t) => {
  const { gw, log } = await setup(t);
  const dev = await gw.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] });
  const before = await log.lastSeq();
  const bad = await apply(gw, 'version: 1\nspaces:\n  s1:\n    web:\n      - to: api\n        ports: 0\n');
  t.equal(bad.status, 400);
  t.equal(bad.body.code, 'invalid-input');
  t.match(bad.body.issues, [{ line: 6, path: 'spaces.s1.web[0].ports' }]);
  t.match(bad.body.error, /^line 6: spaces\.s1\.web\[0\]\.ports: /);
  const unknown = await apply(gw, 'version: 1\napps:\n  web:\n    - to: nobody\n      ports: 80\n');
  t.equal(unknown.body.code, 'unknown-app');
  t.match(unknown.body.issues, [{ line: 4, path: 'apps.web[0].to', message: /no app "nobody"/ }]);
  const otherSpace = await apply(gw, 'version: 1\nspaces:\n  s1:\n    x:\n      - to: web\n        ports: 80\n');
  t.match(otherSpace.body.issues, [{ line: 5, message: /app "x" is in space s2, not s1/ }]);
  const foreign = await apply(gw, 'version: 1\napps:\n  web:\n    - to: x\n      ports: 80\n', '', dev);
  t.equal(foreign.status, 400);
  t.match(foreign.body.issues, [{ line: 4, message: /no app "x" .* this token may use/ }], 'a developer of s1 cannot name an s2 app');
  const notJson = await gw.http('POST', '/netfold/v1/apply', { body: { document: 42 } });
  t.equal(notJson.status, 400);
  t.equal((await gw.http('POST', '/netfold/v1/apply', { body: { document: 'x' }, token: null })).status, 401);
  t.equal(await log.lastSeq(), before, 'nothing appended');
  // the developer's own space works, and its export holds only what it may change
  t.match((await apply(gw, FILE, '', dev)).body, { created: 2 });
  t.equal(
    (
      await gw.http('POST', '/networking/v1/external/policies', {
        body: { policies: [{ source: { id: 'app-x' }, destination: { id: 'app-y', protocol: 'tcp', ports: { start: 1, end: 1 } } }] },
      })
    ).status,
    200,
  );
  const res = await fetch(`${gw.writer.url}/netfold/v1/export`, { headers: { authorization: `Bearer ${dev}` } });
  const text = await res.text();
  t.notMatch(text, /\bs2\b|\bx\b/, "the developer's export has nothing of s2");
  t.match((await apply(gw, text, '?prune=true', dev)).body, { created: 0, deleted: 0, unchanged: 2 });
});

t.test('a large file streams its progress; the CLI applies, dry-runs and exports', async (t) => {
  const { gw, log } = await setup(t);
  const ports = Array.from({ length: 400 }, (_, i) => `      - { to: ${['api', 'db', 'x', 'y'][i % 4]}, ports: ${1000 + i} }`);
  const sources = ['web', 'api', 'db', 'x', 'y'];
  const doc = `version: 1\napps:\n${sources.map((s) => `  ${s}:\n${ports.join('\n')}`).join('\n')}\n`;
  const res = await fetch(`${gw.writer.url}/netfold/v1/apply`, {
    method: 'POST',
    headers: { authorization: `Bearer ${gw.admin}`, 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ document: doc }),
  });
  t.equal(res.status, 200);
  t.match(res.headers.get('content-type'), /text\/event-stream/);
  const events: { event: string; data: any }[] = [];
  for await (const e of serverSentEvents(res.body!)) events.push({ event: e.event, data: JSON.parse(e.data) });
  const progress = events.filter((e) => e.event === 'progress').map((e) => e.data);
  t.same(progress[0], { done: 0, total: 2000 });
  t.equal(progress.length, 1 + sources.length, 'one progress event per source app appended');
  t.ok(
    progress.every((p, i) => i === 0 || p.done > progress[i - 1].done),
    'progress only grows',
  );
  t.same(progress.at(-1), { done: 2000, total: 2000 });
  t.match(events.at(-1), { event: 'result', data: { created: 2000 } });
  t.equal(progressLine('applying', 'policies', 500, 2000, 2000), 'applying [######..................] 500/2000 policies, 250/s, ETA 6.0 s', 'the bar as drawn');
  t.equal(progressLine('waiting', 'cells', 3, 3, 10), 'waiting [########################] 3/3 cells, 300/s, ETA 0.0 s');

  // the CLI, as a user runs it
  const dir = mkdtempSync(join(tmpdir(), 'netfold-files-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const env = { ...process.env, NETFOLD_TOKEN_SECRET: TEST_SECRET, NETFOLD_API_URL: gw.writer.url, NETFOLD_TOKEN: gw.admin, NETFOLD_DATA_DIR: dir };
  const netfold = async (...args: string[]) =>
    run(process.execPath, ['bin/netfold.mjs', ...args], { env, timeout: 60_000 }).catch((e: { code: number; stdout: string; stderr: string }) => e);
  const file = join(dir, 'policies.yaml');
  writeFileSync(file, 'version: 1\nspaces:\n  s1:\n    web:\n      - to: api\n        ports: 9999\n');
  const dry = await netfold('apply', '-f', file, '--dry-run', '--prune');
  t.match(
    dry.stdout,
    /^dry run at revision \d+: 1 to create, 1200 to delete, 0 unchanged; nothing was appended\n {2}\+ web \(app-web\) -> api \(app-api\) tcp\/9999 {3}line 5\n/,
  );
  t.match(dry.stdout, /cell cell-1:\n {2}\+ 10\.255\.1\.3 -> 10\.255\.1\.2 tcp\/9999\n/);
  const seq = await log.lastSeq();
  const out = await netfold('apply', '-f', file);
  t.match(out.stdout, /^applied at revision \d+: 1 created, 0 deleted, 0 unchanged \(change set \w+: netfold audit --change-set \w+\)/);
  t.equal(await log.lastSeq(), seq + 1);
  t.match((await netfold('apply', '-f', file)).stdout, /^no change: the log already holds the file \(1 policies\)/);
  const exported = join(dir, 'export.yaml');
  await netfold('export', '-f', exported);
  t.match((await netfold('apply', '-f', exported, '--prune', '--json')).stdout, /"created":0,"deleted":0,"unchanged":2001/);
  const bad = await netfold('apply', '-f', join(dir, 'missing.yaml'));
  t.equal((bad as { code: number }).code, 1);
  writeFileSync(file, 'version: 1\nspaces:\n  s1:\n    web:\n      - to: api\n        ports: 99999\n');
  const invalid = await netfold('apply', '-f', file);
  t.match((invalid as { stderr: string }).stderr, /line 6: spaces\.s1\.web\[0\]\.ports: must be a port/);
});
