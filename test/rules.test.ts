// Rendering (golden file, and `nft --check` of it as root) and rule semantics of the memory driver, on the same
// cases the end-to-end test proves with real TCP.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { type CellState, emptyCellState } from '../projections/cell.ts';
import { type Allow, RuleExpander, expandRules, indexRules, normalizeAllows, renderNft, renderNftChanges, InvalidRuleError } from '../services/cell-agent/rules.ts';
import { MemoryDataplane, RenderDataplane, run } from '../services/cell-agent/dataplane.ts';
import { isRoot } from './harness/netns.ts';

const OVERLAY = '10.255.0.0/16';
const state: CellState = {
  containers: {
    back1: { appId: 'app-back', appName: 'back', instanceIndex: 0, ip: '10.255.1.3' },
    db0: { appId: 'app-db', appName: 'db', instanceIndex: 0, ip: '10.255.1.4' },
  },
  ingress: {
    'app-back': {
      'app-front|tcp|8080|8081': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8080, endPort: 8081 },
      'app-front|udp|53|53': { sourceAppId: 'app-front', protocol: 'udp', startPort: 53, endPort: 53 },
    },
    'app-db': { 'app-back|tcp|5432|5432': { sourceAppId: 'app-back', protocol: 'tcp', startPort: 5432, endPort: 5432 } },
  },
  sources: { 'app-front': { '10.255.1.2': true, '10.255.2.9': true }, 'app-back': { '10.255.1.3': true } },
  tags: { 'app-front': 1, 'app-back': 2, 'app-db': 3 },
  names: {},
  cell: { 'cell-1': { subnet: '10.255.1.0/24' } },
};

t.test('expansion: one allow per (source IP, local destination, rule)', async (t) => {
  const rules = expandRules(state);
  t.same(rules.local, ['10.255.1.3', '10.255.1.4']);
  t.same(rules.allows.map((a) => `${a.src}>${a.dst}/${a.protocol}:${a.startPort}-${a.endPort}`), [
    '10.255.1.2>10.255.1.3/tcp:8080-8081',
    '10.255.1.2>10.255.1.3/udp:53-53',
    '10.255.2.9>10.255.1.3/tcp:8080-8081',
    '10.255.2.9>10.255.1.3/udp:53-53',
    '10.255.1.3>10.255.1.4/tcp:5432-5432',
  ]);
});

t.test('rendering matches the golden file', async (t) => {
  const text = renderNft(expandRules(state), OVERLAY);
  const golden = new URL('./golden/cell.nft', import.meta.url);
  if (process.env.UPDATE_GOLDEN) writeFileSync(golden, text);
  t.equal(text, readFileSync(golden, 'utf8'));
  t.match(text, /set allow_tcp \{\n\s+type ipv4_addr \. ipv4_addr \. inet_service\n\s+elements = \{ 10\.255\.1\.3 \. 10\.255\.1\.4 \. 5432 \}/);
  t.match(text, /set range_tcp \{[^}]*flags interval[^}]*10\.255\.1\.2 \. 10\.255\.1\.3 \. 8080-8081/);
  const empty = renderNft({ local: [], allows: [] }, OVERLAY);
  t.notMatch(empty, /elements/, 'empty sets have no elements clause');
});

t.test('rendering refuses anything nft would misread', async (t) => {
  t.throws(() => renderNft({ local: ['example.com'], allows: [] }, OVERLAY), InvalidRuleError);
  t.throws(() => renderNft({ local: [], allows: [{ src: '10.0.0.1', dst: '10.0.0.300', protocol: 'tcp', startPort: 1, endPort: 1 }] }, OVERLAY), InvalidRuleError);
  t.throws(() => renderNft({ local: [], allows: [{ src: '10.0.0.1', dst: '10.0.0.2', protocol: 'tcp', startPort: 9, endPort: 8 }] }, OVERLAY), InvalidRuleError);
  t.throws(() => renderNft({ local: [], allows: [] }, '10.255.0.0/33'), InvalidRuleError);
});

t.test('nft accepts the rendered file (nft --check)', { skip: isRoot() ? false : 'needs root for nft --check' }, async (t) => {
  await run('nft', ['-c', '-f', '-'], renderNft(expandRules(state), OVERLAY));
  t.pass('nft --check accepted the ruleset');
});

t.test('memory driver semantics: the end-to-end cases', async (t) => {
  const mem = new MemoryDataplane(OVERLAY);
  await mem.apply(expandRules(state));
  t.equal(mem.allows('10.255.1.2', '10.255.1.3', 'tcp', 8080), true, 'allowed source, port in range');
  t.equal(mem.allows('10.255.1.2', '10.255.1.3', 'tcp', 8081), true, 'range end');
  t.equal(mem.allows('10.255.1.2', '10.255.1.3', 'tcp', 8082), false, 'port outside the range');
  t.equal(mem.allows('10.255.1.2', '10.255.1.3', 'udp', 53), true, 'udp rule');
  t.equal(mem.allows('10.255.1.2', '10.255.1.3', 'tcp', 53), false, 'protocol matters');
  t.equal(mem.allows('10.255.9.9', '10.255.1.3', 'tcp', 8080), false, 'unknown source in the overlay: denied');
  t.equal(mem.allows('10.255.1.2', '10.255.1.4', 'tcp', 5432), false, 'another destination app: denied');
  t.equal(mem.allows('10.255.1.3', '10.255.1.4', 'tcp', 5432), true);
  t.equal(mem.allows('192.0.2.1', '10.255.1.3', 'tcp', 22), true, 'traffic from outside the overlay is not container-to-container');
  t.equal(mem.allows('10.255.1.3', '10.255.2.2', 'tcp', 80), true, 'a destination on another cell is enforced there, not here');
  mem.tamper();
  t.equal(await mem.drifted(), true);
  await mem.apply(expandRules(state));
  t.equal(await mem.drifted(), false);
  t.equal(mem.applies, 2);
});

t.test('render driver prints what it would load', async (t) => {
  const printed: string[] = [];
  const dry = new RenderDataplane(OVERLAY, (text) => printed.push(text));
  await dry.apply(expandRules(state));
  t.equal(printed.length, 1);
  t.equal(printed[0], renderNft(expandRules(state), OVERLAY));
  t.equal(await dry.drifted(), false);
});

t.test('incremental changes: element additions and deletions in one transaction', async (t) => {
  const before = expandRules(state);
  const after = expandRules({
    ...state,
    sources: { ...state.sources, 'app-front': { '10.255.1.2': true, '10.255.3.3': true } },
  });
  t.equal(renderNftChanges(indexRules(before), before, OVERLAY).text, null, 'nothing to do');
  t.equal(
    renderNftChanges(indexRules(before), after, OVERLAY).text,
    [
      'delete element inet netfold allow_udp { 10.255.2.9 . 10.255.1.3 . 53 }',
      'delete element inet netfold range_tcp { 10.255.2.9 . 10.255.1.3 . 8080-8081 }',
      'add element inet netfold allow_udp { 10.255.3.3 . 10.255.1.3 . 53 }',
      'add element inet netfold range_tcp { 10.255.3.3 . 10.255.1.3 . 8080-8081 }',
      '',
    ].join('\n'),
  );
  const moved = renderNftChanges(indexRules(before), { local: ['10.255.1.9'], allows: [] }, OVERLAY).text!;
  t.match(moved, /delete element inet netfold local \{ 10\.255\.1\.3, 10\.255\.1\.4 \}/);
  t.match(moved, /add element inet netfold local \{ 10\.255\.1\.9 \}/);
  t.throws(() => renderNftChanges(indexRules(before), { local: ['nope'], allows: [] }, OVERLAY), InvalidRuleError);
});

t.test('overlapping port ranges of two policies are merged (an interval set refuses overlaps)', async (t) => {
  const overlapping: CellState = {
    ...state,
    ingress: {
      'app-back': {
        'app-front|tcp|8000-8100': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8000, endPort: 8100 },
        'app-front|tcp|8050-8150': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8050, endPort: 8150 },
        'app-front|tcp|8120-8120': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8120, endPort: 8120 },
      },
    },
    sources: { 'app-front': { '10.255.1.2': true } },
  };
  const rules = expandRules(overlapping);
  t.same(rules.allows.map((a) => `${a.startPort}-${a.endPort}`), ['8000-8150', '8120-8120']);
  t.throws(() => renderNft({ local: ['10.255.1.3'], allows: [
    { src: '10.255.1.2', dst: '10.255.1.3', protocol: 'tcp', startPort: 1, endPort: 10 },
    { src: '10.255.1.2', dst: '10.255.1.3', protocol: 'tcp', startPort: 5, endPort: 20 },
  ] }, OVERLAY), InvalidRuleError, 'unmerged overlaps are refused before nft sees them');
});

t.test('nft accepts merged overlapping ranges', { skip: isRoot() ? false : 'needs root for nft --check' }, async (t) => {
  const rules = expandRules({
    ...state,
    ingress: { 'app-back': {
      'app-front|tcp|8000-8100': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8000, endPort: 8100 },
      'app-front|tcp|8050-8150': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8050, endPort: 8150 },
    } },
  });
  await run('nft', ['-c', '-f', '-'], renderNft(rules, OVERLAY));
  t.pass('accepted');
});

t.test('RuleExpander: equal to a whole expansion after every step of a random history; same object when unchanged', async (t) => {
  // The spec, written out directly: every (source IP, local container, ingress rule of its app), sorted, normalized.
  const whole = (s: CellState) => {
    const all: Allow[] = [];
    for (const c of Object.values(s.containers)) {
      for (const r of Object.values(s.ingress[c.appId] ?? {})) {
        for (const src of Object.keys(s.sources[r.sourceAppId] ?? {})) all.push({ src, dst: c.ip, protocol: r.protocol, startPort: r.startPort, endPort: r.endPort });
      }
    }
    return { local: [...new Set(Object.values(s.containers).map((c) => c.ip))].sort(), allows: normalizeAllows(all) };
  };
  let seed = 42;
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const apps = ['a', 'b', 'c', 'd'];
  let s: CellState = emptyCellState();
  const expander = new RuleExpander();
  let previous = expander.expand(s);
  let sameObjectSteps = 0;
  for (let step = 0; step < 400; step++) {
    // copy on write, as the cell feed does: a changed entry is a new object in a new section object
    const kind = rnd(6);
    const app = apps[rnd(apps.length)]!;
    if (kind === 0) {
      const id = `c${rnd(8)}`;
      const containers = { ...s.containers };
      if (containers[id]) delete containers[id];
      else containers[id] = { appId: app, appName: app, instanceIndex: 0, ip: `10.255.0.${rnd(6)}` }; // addresses may repeat
      s = { ...s, containers };
    } else if (kind === 1) {
      const start = 1000 + rnd(5);
      const rule = { sourceAppId: apps[rnd(apps.length)]!, protocol: rnd(2) ? ('tcp' as const) : ('udp' as const), startPort: start, endPort: start + rnd(3) };
      const key = `${rule.sourceAppId}|${rule.protocol}|${rule.startPort}|${rule.endPort}`;
      const entry = { ...(s.ingress[app] ?? {}) };
      if (entry[key]) delete entry[key];
      else entry[key] = rule;
      s = { ...s, ingress: { ...s.ingress, [app]: entry } };
    } else if (kind === 2) {
      const ips = { ...(s.sources[app] ?? {}) };
      const ip = `10.255.9.${rnd(5)}`;
      if (ips[ip]) delete ips[ip];
      else ips[ip] = true;
      s = { ...s, sources: { ...s.sources, [app]: ips } };
    } else if (kind === 3) {
      s = { ...s, names: { ...s.names, [`${app}.apps.internal`]: { [`10.255.0.${rnd(6)}`]: true } } };
    } else if (kind === 4) {
      s = { ...s, tags: { ...s.tags, [app]: rnd(100) } };
    } else {
      s = JSON.parse(JSON.stringify(s)) as CellState; // a snapshot: every object new, nothing different
    }
    const got = expander.expand(s);
    t.same(got, whole(s), `step ${step}`);
    if (kind === 3 || kind === 4) {
      t.equal(got, previous, `step ${step}: names/tags do not touch the rules: the same object`);
      sameObjectSteps++;
    }
    previous = got;
  }
  t.ok(sameObjectSteps > 50, 'unchanged steps were exercised');
  t.same(expandRules(s), whole(s));
});
