// The web console in a real browser (Debian's headless Chromium, driven by playwright-core) against a real gateway
// and nats-server: sign in with a token, see the graph, watch a policy appear live after a POST (audit feed and graph,
// over server-sent events), run an explain and a dry run of a pasted policy file, and see only what a developer's
// token may see. Skipped, saying why, only where no browser is installed (scripts/ensure-env.mjs --for=test installs it).
import t from 'tap';
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';

const CHROMIUM = '/usr/bin/chromium';

t.test(
  'the console in Chromium: sign in, live policy, explain, dry run, visibility',
  { skip: existsSync(CHROMIUM) ? false : `no browser at ${CHROMIUM}: apt-get install -y chromium` },
  async (t) => {
    const nats = await startNats(t);
    const gw = await startGateway(t, nats);
    await gw.registerCells('cell-1', 'cell-2');
    for (const [appId, name, spaceId] of [
      ['app-web', 'web', 's1'],
      ['app-api', 'api', 's1'],
      ['app-x', 'x', 's2'],
    ])
      t.equal((await gw.intake('registerApp', { appId, name, spaceId, orgId: 'o1' })).ok, true);
    for (const [containerId, appId, cellId, ip] of [
      ['web-0', 'app-web', 'cell-1', '10.255.1.2'],
      ['api-0', 'app-api', 'cell-2', '10.255.2.2'],
    ])
      t.equal((await gw.intake('startContainer', { containerId, appId, cellId, ip, instanceIndex: 0 })).ok, true);
    t.equal((await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('app-x', 'app-x', 'udp', 53)] } })).status, 200);

    const browser: Browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
    t.teardown(() => browser.close());
    const errors: string[] = [];
    const open = async (token: string): Promise<Page> => {
      const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
      page.on('pageerror', (e) => errors.push(e.message));
      page.on('console', (m) => {
        // e.g. a refused inline style under the content security policy; answers with a 4xx (the bad dry run) are expected
        if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) errors.push(m.text());
      });
      await page.goto(`${gw.writer.url}/ui`);
      await page.fill('#token', token);
      await page.click('#sign-in-form button');
      await page.waitForSelector('#console:not([hidden])');
      await page.waitForSelector('body[data-audit-ready="true"]');
      return page;
    };

    // a wrong token is refused on the sign-in form
    const refused = await browser.newPage();
    await refused.goto(`${gw.writer.url}/ui`);
    await refused.fill('#token', 'not-a-token');
    await refused.click('#sign-in-form button');
    await refused.waitForFunction(() => document.getElementById('sign-in-error')!.textContent !== '');
    t.match(await refused.textContent('#sign-in-error'), /token/i, 'a bad token is refused with a message');
    t.equal(await refused.isHidden('#console'), true);
    await refused.close();

    const page = await open(gw.admin);
    t.match(await page.textContent('#who'), /signed in as admin/);
    await page.waitForSelector('#graph [data-app="app-web"]');
    t.same(await page.$$eval('#graph [data-app]', (els) => els.map((e) => e.getAttribute('data-app')).sort()), ['app-api', 'app-web', 'app-x']);
    t.ok(await page.$('#graph [data-edge="app-x|app-x|udp|53|53"]'), 'the existing policy is an edge');
    t.equal(await page.$('#graph [data-edge="app-web|app-api|tcp|8080|8080"]'), null, 'web -> api is not there yet');
    t.same(await page.$$eval('#cells tbody tr', (rows) => rows.map((r) => (r as HTMLElement).dataset.cell)), ['cell-1', 'cell-2']);

    // A policy POSTed through the API appears live: in the audit feed and as an edge in the graph.
    const posted = await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('app-web', 'app-api', 'tcp', 8080)] } });
    t.equal(posted.status, 200);
    await page.waitForSelector(`#audit li[data-revision="${posted.body.revision}"][data-type="PoliciesCreated"]`, { timeout: 10_000 });
    t.match(await page.textContent(`#audit li[data-revision="${posted.body.revision}"]`), /allowed: app-web -> app-api tcp\/8080 \(user:admin\)/);
    await page.waitForSelector('#graph [data-edge="app-web|app-api|tcp|8080|8080"]', { timeout: 10_000 });
    t.pass('the new policy is drawn without a reload');

    // The space filter keeps space s2 only.
    await page.selectOption('#filter-space', 's2');
    t.same(await page.$$eval('#graph [data-app]', (els) => els.map((e) => e.getAttribute('data-app'))), ['app-x']);
    await page.selectOption('#filter-space', '');

    // Explain: allowed on 8080 (by the new policy), denied on 9090.
    await page.fill('#explain-source', 'web');
    await page.fill('#explain-destination', 'api');
    await page.fill('#explain-port', '8080');
    await page.click('#explain-form button');
    await page.waitForSelector('#explain-result .verdict');
    t.equal(await page.textContent('#explain-result .verdict'), 'ALLOWED');
    t.match(await page.textContent('#explain-result'), /by policy app-web -> app-api tcp\/8080-8080.*cell cell-2: planned/s);
    await page.fill('#explain-port', '9090');
    await page.click('#explain-form button');
    await page.waitForFunction(() => document.querySelector('#explain-result .verdict')?.textContent === 'DENIED');
    t.match(await page.textContent('#explain-result'), /none covers tcp\/9090/);

    // Dry run of a pasted policy file: per policy and per cell; nothing appended.
    const before = (await gw.http('GET', '/networking/v1/external/policies')).body.revision;
    await page.fill('#dry-run-file', 'version: 1\nspaces:\n  s1:\n    web:\n      - to: api\n        ports: 9090\n');
    await page.click('#dry-run-form button');
    await page.waitForFunction(() => document.getElementById('dry-run-result')!.textContent!.startsWith('dry run'));
    const dry = await page.textContent('#dry-run-result');
    t.match(dry, /1 to create, 0 to delete, 0 unchanged/);
    t.match(dry, /\+ web \(app-web\) -> api \(app-api\) tcp\/9090 {3}line 5/);
    t.match(dry, /cell cell-2:\n {2}\+ 10\.255\.1\.2 -> 10\.255\.2\.2 tcp\/9090/);
    await page.fill('#dry-run-file', 'version: 1\nspaces:\n  s1:\n    web:\n      - to: nobody\n        ports: 1\n');
    await page.click('#dry-run-form button');
    await page.waitForFunction(() => document.getElementById('dry-run-result')!.textContent!.startsWith('line'));
    t.match(await page.textContent('#dry-run-result'), /^line 5: spaces\.s1\.web\[0\]\.to: no app "nobody"/);
    t.equal((await gw.http('GET', '/networking/v1/external/policies')).body.revision, before, 'the dry runs appended nothing');

    // A developer of s1 sees s1's apps and policies, not s2's, and no audit entry of s2.
    const dev = await open(await gw.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] }));
    await dev.waitForSelector('#graph [data-app="app-web"]');
    t.same(await dev.$$eval('#graph [data-app]', (els) => els.map((e) => e.getAttribute('data-app')).sort()), ['app-api', 'app-web']);
    t.notMatch(await dev.textContent('#audit'), /app-x/, 'no audit entry about s2');
    t.match(await dev.textContent('#audit'), /app-web -> app-api/);
    t.same(errors, [], 'no script errors or console errors in the pages');
  },
);

t.test("the console's routes refuse what a token may not see, and bad queries", async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  for (const [appId, spaceId] of [
    ['app-a', 's1'],
    ['app-b', 's2'],
  ])
    t.equal((await gw.intake('registerApp', { appId, name: appId, spaceId, orgId: 'o1' })).ok, true);
  const dev = await gw.token({ user: 'dev', scopes: ['network.write'], spaces: ['s1'] });
  const foreign = await gw.http('GET', '/netfold/v1/explain?source=app-a&destination=app-b&port=80', { token: dev });
  t.equal(foreign.status, 403);
  t.equal(foreign.body.code, 'app-not-accessible');
  const unknown = await gw.http('GET', '/netfold/v1/explain?source=app-a&destination=nobody&port=80', { token: dev });
  t.same([unknown.status, unknown.body.code], [403, 'app-not-accessible'], 'unknown looks the same as inaccessible');
  const admin = await gw.http('GET', '/netfold/v1/explain?source=app-a&destination=app-b&port=80');
  t.match(admin.body, { allowed: false, reason: /denied by default/ });
  const bad = await gw.http('GET', '/netfold/v1/explain?source=app-a&destination=app-b&port=0&protocol=icmp');
  t.equal(bad.status, 400);
  t.same(bad.body.issues.map((i: { path: string }) => i.path).sort(), ['port', 'protocol']);
  t.same(
    (await gw.http('GET', '/netfold/v1/apps', { token: dev })).body.apps.map((a: { id: string }) => a.id),
    ['app-a'],
  );
  t.equal((await gw.http('GET', '/netfold/v1/cells', { token: null })).status, 401);
  const badFrom = await gw.http('GET', '/netfold/v1/audit/stream?from=0');
  t.same([badFrom.status, badFrom.body.code, badFrom.body.issues[0].path], [400, 'invalid-input', 'from']);
  const badFormat = await gw.http('GET', '/netfold/v1/export?format=xml');
  t.same([badFormat.status, badFormat.body.issues[0].path], [400, 'format']);
  const extra = await gw.http('GET', '/netfold/v1/explain?source=app-a&destination=app-b&port=80&colour=red');
  t.same([extra.status, extra.body.issues[0].path], [400, 'colour'], 'unknown query parameters are refused');
  t.equal((await gw.http('GET', '/netfold/v1/audit/stream', { token: null })).status, 401);
  const file = await fetch(`${gw.writer.url}/ui/secrets.txt`);
  t.equal(file.status, 404, 'only the console files are served');
  const ui = await fetch(`${gw.writer.url}/ui`);
  t.match(ui.headers.get('content-type'), /text\/html/);
  t.match(ui.headers.get('content-security-policy'), /default-src 'self'/, 'a content security policy: nothing inline, nothing foreign');
  // an open audit stream does not hold the gateway's shutdown
  const stream = await fetch(`${gw.writer.url}/netfold/v1/audit/stream`, { headers: { authorization: `Bearer ${gw.admin}` } });
  t.equal(stream.status, 200);
  await gw.stop();
  t.pass('stopped with a stream open');
});
