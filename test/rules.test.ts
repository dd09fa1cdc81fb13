// Rendering (golden file, and `nft --check` of it as root) and rule semantics of the memory driver, on the same
// cases the end-to-end test proves with real TCP.
import t from 'tap';
import { readFileSync, writeFileSync } from 'node:fs';
import { type CellState, emptyCellState } from '../projections/cell.ts';
import {
  type Allow,
  type RuleSet,
  RuleExpander,
  expandRules,
  normalizeAllows,
  renderNft,
  renderNftDiff,
  readTable,
  stampElementsOf,
  InvalidRuleError,
  commentOf,
  commentText,
  stampOf,
  parseCellSubnets,
  cellSubnetsOf,
  TABLE,
  STAMP_KEEP,
} from '../services/cell-agent/rules.ts';
import { MemoryDataplane, NftDataplane, RenderDataplane, run } from '../services/cell-agent/dataplane.ts';
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
  topology: {},
  egress: {},
  asg: {},
};

t.test('expansion: one allow per (source IP, local destination, rule)', async (t) => {
  const rules = expandRules(state);
  t.same(rules.local, ['10.255.1.3', '10.255.1.4']);
  t.same(
    rules.allows.map((a) => `${a.src}>${a.dst}/${a.protocol}:${a.startPort}-${a.endPort}`),
    [
      '10.255.1.2>10.255.1.3/tcp:8080-8081',
      '10.255.1.2>10.255.1.3/udp:53-53',
      '10.255.2.9>10.255.1.3/tcp:8080-8081',
      '10.255.2.9>10.255.1.3/udp:53-53',
      '10.255.1.3>10.255.1.4/tcp:5432-5432',
    ],
  );
});

const SUBNET = '10.255.1.0/24';
const STAMP = { revision: 42, hash: '0123456789abcdef0123456789abcdef' };

t.test('rendering matches the golden file', async (t) => {
  const text = renderNft(expandRules(state, [SUBNET]), OVERLAY, STAMP);
  const golden = new URL('./golden/cell.nft', import.meta.url);
  if (process.env.UPDATE_GOLDEN) writeFileSync(golden, text);
  t.equal(text, readFileSync(golden, 'utf8'));
  t.match(
    text,
    /set allow_tcp \{\n\s+type ipv4_addr \. ipv4_addr \. inet_service\n\s+elements = \{ 10\.255\.1\.3 \. 10\.255\.1\.4 \. 5432 comment "app-back->app-db tcp\/5432" \}/,
  );
  t.match(text, /set range_tcp \{[^}]*flags interval[^}]*10\.255\.1\.2 \. 10\.255\.1\.3 \. 8080-8081 comment "app-front->app-back tcp\/8080-8081"/);
  t.match(text, /set subnets \{[^}]*flags interval[^}]*elements = \{ 10\.255\.1\.0\/24 \}/);
  t.match(text, /ip daddr != @local ip daddr != @subnets accept/, 'the guard covers the cell subnet and the known containers');
  t.match(text, /meta nfproto ipv6 goto forward_ipv6/, 'IPv6 is not accepted unfiltered');
  t.notMatch(text, /nfproto != ipv4 accept/);
  t.same(stampOf(text.replace(/^table inet netfold\ndelete table inet netfold\n/, '')), STAMP, 'the stamp reads back from the text');
  const empty = renderNft({ local: [], subnets: [], allows: [] }, OVERLAY);
  t.notMatch(empty, /elements/, 'empty sets have no elements clause');
});

t.test('rendering refuses anything nft would misread', async (t) => {
  t.throws(() => renderNft({ local: ['example.com'], subnets: [], allows: [] }, OVERLAY), InvalidRuleError);
  t.throws(
    () =>
      renderNft(
        {
          local: [],
          subnets: [],
          allows: [{ src: '10.0.0.1', dst: '10.0.0.300', protocol: 'tcp', startPort: 1, endPort: 1, srcApp: 'a', dstApp: 'b', policy: 'tcp/1' }],
        },
        OVERLAY,
      ),
    InvalidRuleError,
  );
  t.throws(
    () =>
      renderNft(
        {
          local: [],
          subnets: [],
          allows: [{ src: '10.0.0.1', dst: '10.0.0.2', protocol: 'tcp', startPort: 9, endPort: 8, srcApp: 'a', dstApp: 'b', policy: 'tcp/1' }],
        },
        OVERLAY,
      ),
    InvalidRuleError,
  );
  t.throws(() => renderNft({ local: [], subnets: [], allows: [] }, '10.255.0.0/33'), InvalidRuleError);
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

t.test("incremental changes: the expander's difference as element additions and deletions in one transaction", async (t) => {
  const expander = new RuleExpander();
  const before = expander.expand(state);
  t.equal(expander.update(state), null, 'nothing to do');
  const next: CellState = { ...state, sources: { ...state.sources, 'app-front': { '10.255.1.2': true, '10.255.3.3': true } } };
  const diff = expander.update(next)!;
  t.match(diff, { from: before.version, to: before.version! + 1 });
  t.equal(
    renderNftDiff(diff, stampElementsOf(), OVERLAY).text,
    [
      'delete element inet netfold range_tcp { 10.255.2.9 . 10.255.1.3 . 8080-8081 }',
      'delete element inet netfold allow_udp { 10.255.2.9 . 10.255.1.3 . 53 }',
      'add element inet netfold range_tcp { 10.255.3.3 . 10.255.1.3 . 8080-8081 comment "app-front->app-back tcp/8080-8081" }',
      'add element inet netfold allow_udp { 10.255.3.3 . 10.255.1.3 . 53 comment "app-front->app-back udp/53" }',
      '',
    ].join('\n'),
  );
  const stamps = stampElementsOf(STAMP);
  const stamped = renderNftDiff(diff, stamps, OVERLAY, { revision: 43, hash: 'f'.repeat(32) });
  t.match(
    stamped.text,
    /delete element inet netfold applied \{ 42 \}\nadd element inet netfold applied \{ 43 comment "netfold revision=43 hash=f{32}" \}\n$/,
    'the stamp moves in the same transaction (old stamps go along with other deletions)',
  );
  t.same([...stamps.keys()], ['0x0000002a'], 'the stamp elements loaded change only on commit');
  stamped.commit();
  t.same([...stamps.keys()], ['0x0000002b']);
  t.same(
    stamped.keys.slice(0, 2),
    [
      ['range_tcp', '10.255.2.9 . 10.255.1.3 . 8080-8081'],
      ['allow_udp', '10.255.2.9 . 10.255.1.3 . 53'],
    ],
    'the elements it touches, as listed',
  );
  // Additions only: the new stamp is added, the old one stays (a deletion would cost the transaction ~13 ms) ...
  let s = next;
  for (let k = 0; k < STAMP_KEEP - 1; k++) {
    s = { ...s, sources: { ...s.sources, 'app-back': { ...s.sources['app-back'], [`10.255.${9 + Math.floor(k / 200)}.${(k % 200) + 1}`]: true } } };
    const c = renderNftDiff(expander.update(s)!, stamps, OVERLAY, { revision: 100 + k, hash: 'f'.repeat(32) });
    t.notMatch(c.text, /delete/, `addition ${k}: nothing deleted`);
    c.commit();
  }
  t.equal(stamps.size, STAMP_KEEP);
  t.same(
    stampOf(
      `set applied {\n elements = { 0x0000002a comment "netfold revision=42 hash=${'0'.repeat(32)}", 0x00000080 comment "netfold revision=128 hash=${'f'.repeat(32)}" }\n}`,
    ),
    { revision: 128, hash: 'f'.repeat(32) },
    'the highest stamp element is the stamp',
  );
  // ... until STAMP_KEEP have piled up: then they go in one deletion.
  s = { ...s, sources: { ...s.sources, 'app-back': { ...s.sources['app-back'], '10.255.20.1': true } } };
  const old = [...stamps.keys()].map(Number);
  const swept = renderNftDiff(expander.update(s)!, stamps, OVERLAY, { revision: 500, hash: 'f'.repeat(32) });
  t.match(swept.text, new RegExp(`delete element inet netfold applied \\{ ${old.join(', ')} \\}`));
  swept.commit();
  t.same([...stamps.keys()], ['0x000001f4']);
  const unchanged = renderNftDiff({ ...diff, added: [], removed: [] }, stamps, OVERLAY, { revision: 501, hash: 'e'.repeat(32) });
  t.equal(unchanged.text, null, 'no load when the rules are equal: the stamp moves only with them');
  const moved = expander.update({ ...emptyCellState(), containers: { x: { appId: 'x', appName: 'x', instanceIndex: 0, ip: '10.255.1.9' } } })!;
  const text = renderNftDiff(moved, stamps, OVERLAY).text!;
  t.match(text, /delete element inet netfold local \{ 10\.255\.1\.3, 10\.255\.1\.4 \}/);
  t.match(text, /add element inet netfold local \{ 10\.255\.1\.9 \}/);
  t.throws(() => renderNftDiff({ ...moved, local: { added: ['nope'], removed: [] } }, stamps, OVERLAY), InvalidRuleError);
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
  t.same(
    rules.allows.map((a) => `${a.startPort}-${a.endPort}`),
    ['8000-8150', '8120-8120'],
  );
  t.equal(commentOf(rules.allows[0]!), 'app-front->app-back tcp/8000-8100+tcp/8050-8150', 'a merged flow names every policy it came from');
  // A single port between two overlapping ranges (in sorted order) does not keep them apart.
  const between = expandRules({
    ...overlapping,
    ingress: {
      'app-back': {
        'app-front|tcp|1000|1010': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 1000, endPort: 1010 },
        'app-front|tcp|1005|1005': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 1005, endPort: 1005 },
        'app-front|tcp|1008|1012': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 1008, endPort: 1012 },
      },
    },
  });
  t.same(
    between.allows.map((a) => `${a.startPort}-${a.endPort}`),
    ['1000-1012', '1005-1005'],
  );
  t.throws(
    () =>
      renderNft(
        {
          local: ['10.255.1.3'],
          subnets: [],
          allows: [
            { src: '10.255.1.2', dst: '10.255.1.3', protocol: 'tcp', startPort: 1, endPort: 10, srcApp: 'a', dstApp: 'b', policy: 'tcp/1' },
            { src: '10.255.1.2', dst: '10.255.1.3', protocol: 'tcp', startPort: 5, endPort: 20, srcApp: 'a', dstApp: 'b', policy: 'tcp/1' },
          ],
        },
        OVERLAY,
      ),
    InvalidRuleError,
    'unmerged overlaps are refused before nft sees them',
  );
});

t.test('nft accepts merged overlapping ranges', { skip: isRoot() ? false : 'needs root for nft --check' }, async (t) => {
  const rules = expandRules({
    ...state,
    ingress: {
      'app-back': {
        'app-front|tcp|8000-8100': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8000, endPort: 8100 },
        'app-front|tcp|8050-8150': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8050, endPort: 8150 },
      },
    },
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
        const policy = `${r.protocol}/${r.startPort === r.endPort ? r.startPort : `${r.startPort}-${r.endPort}`}`;
        for (const src of Object.keys(s.sources[r.sourceAppId] ?? {}))
          all.push({ src, dst: c.ip, protocol: r.protocol, startPort: r.startPort, endPort: r.endPort, srcApp: r.sourceAppId, dstApp: c.appId, policy });
      }
    }
    return { local: [...new Set(Object.values(s.containers).map((c) => c.ip))].sort(), subnets: [], allows: normalizeAllows(all) };
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
  const plain = ({ local, subnets, allows }: RuleSet) => ({ local, subnets, allows });
  // What the differences add up to, applied to a copy of the first expansion (as a driver does): the whole expansion.
  const key = (a: Allow) => `${a.src} ${a.dst} ${a.protocol} ${a.startPort} ${a.endPort}`;
  const held = { flows: new Map<string, Allow>(), local: new Set<string>(), version: previous.version };
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
    const diff = expander.update(s);
    const got = expander.rules;
    t.same(plain(got), whole(s), `step ${step}`);
    if (diff) {
      t.equal(diff.from, held.version, `step ${step}: the difference starts where the last one ended`);
      for (const a of diff.removed) t.ok(held.flows.delete(key(a)), `step ${step}: ${key(a)} was there`);
      for (const a of diff.added) {
        t.notOk(held.flows.has(key(a)), `step ${step}: ${key(a)} was not there`);
        held.flows.set(key(a), a);
      }
      for (const ip of diff.local.removed) t.ok(held.local.delete(ip));
      for (const ip of diff.local.added) held.local.add(ip);
      held.version = diff.to;
    }
    t.equal(got.version, held.version, `step ${step}: the rules are the version the differences reached`);
    t.same(normalizeAllows([...held.flows.values()]), got.allows, `step ${step}: the differences add up to the expansion`);
    t.same([...held.local].sort(), got.local);
    if (kind === 3 || kind === 4) {
      t.equal(got, previous, `step ${step}: names/tags do not touch the rules: the same object`);
      sameObjectSteps++;
    }
    previous = got;
  }
  t.ok(sameObjectSteps > 50, 'unchanged steps were exercised');
  t.same(plain(expandRules(s)), whole(s));
});

t.test('comments are safe whatever goes in: no quote can end them, at most 120 bytes', async (t) => {
  t.equal(commentText('web->api tcp/8080'), 'web->api tcp/8080');
  t.equal(commentText('a"b\\c\nd;e{f}é'), 'a_b_c_d_e_f__');
  const long = commentText('x'.repeat(500));
  t.equal(Buffer.byteLength(long), 120);
  t.ok(long.endsWith('~'), 'a cut comment says so');
  const a: Allow = {
    src: '10.255.1.2',
    dst: '10.255.1.3',
    protocol: 'tcp',
    startPort: 1,
    endPort: 1,
    srcApp: 'A'.repeat(128),
    dstApp: 'B'.repeat(128),
    policy: 'tcp/1',
  };
  t.ok(Buffer.byteLength(commentOf(a)) <= 120);
});

t.test('cell subnets: CIDRs inside the overlay, host bits zero; the memory driver guards every address in them', async (t) => {
  t.same(parseCellSubnets('10.255.2.0/24, 10.255.1.0/24', OVERLAY), ['10.255.1.0/24', '10.255.2.0/24']);
  t.same(parseCellSubnets(undefined, OVERLAY), []);
  t.same(parseCellSubnets('', OVERLAY), []);
  t.throws(() => parseCellSubnets('10.254.1.0/24', OVERLAY), InvalidRuleError, 'outside the overlay');
  t.throws(() => parseCellSubnets('10.255.1.5/24', OVERLAY), InvalidRuleError, 'host bits set');
  t.throws(() => parseCellSubnets('10.0.0.0/8', OVERLAY), InvalidRuleError, 'wider than the overlay');
  t.throws(() => parseCellSubnets('example.com/24', OVERLAY), InvalidRuleError);
  t.same(cellSubnetsOf(state, 'cell-1', ['10.255.1.0/24']), ['10.255.1.0/24']);
  t.throws(() => renderNft({ local: [], subnets: ['10.255.1.0/33'], allows: [] }, OVERLAY), InvalidRuleError);

  const mem = new MemoryDataplane(OVERLAY);
  await mem.apply(expandRules(state));
  t.equal(mem.allows('10.255.1.2', '10.255.1.77', 'tcp', 8080), true, 'without a subnet an unknown address is not guarded (the old fallback)');
  await mem.apply(expandRules(state, [SUBNET]));
  t.equal(mem.allows('10.255.1.2', '10.255.1.77', 'tcp', 8080), false, 'an address in the subnet that no container has: denied');
  t.equal(mem.allows('10.255.1.2', '10.255.1.3', 'tcp', 8080), true, 'allowed flows still allowed');
  t.equal(mem.allows('192.0.2.1', '10.255.1.77', 'tcp', 8080), true, 'from outside the overlay: not container-to-container');
  t.equal(mem.allows('10.255.1.3', '10.255.2.2', 'tcp', 80), true, "another cell's subnet is enforced there");
  const expander = new RuleExpander();
  const one = expander.expand(state, [SUBNET]);
  t.equal(expander.expand(state, [SUBNET]), one, 'same subnets: the same object');
  t.not(expander.expand(state, ['10.255.1.0/25']), one, 'other subnets: a new rule set');
});

t.test(
  'nft loads comments, applies incremental changes with them, reads the stamp back and sees no drift',
  { skip: isRoot() ? false : 'needs root (a network namespace and nft)' },
  async (t) => {
    const ns = `nfrules${process.pid}`;
    await run('ip', ['netns', 'add', ns]);
    t.teardown(() => run('ip', ['netns', 'del', ns]).catch(() => undefined));
    const plane = new NftDataplane({ overlayCidr: OVERLAY, netns: ns });
    t.equal(await plane.found(), null, 'no table yet');
    const before = expandRules(state, [SUBNET]);
    await plane.apply(before, STAMP);
    t.same(await plane.found(), { stamp: STAMP }, 'the stamp reads back from the kernel');
    const listed = (await plane.listing())!;
    t.match(listed, /10\.255\.1\.3 \. 10\.255\.1\.4 \. 5432 comment "app-back->app-db tcp\/5432"/);
    t.equal(await plane.drifted(), false, 'comments do not look like drift');
    // A merge changes a comment only; a new source adds elements; subnets change: one incremental transaction.
    const expander = new RuleExpander();
    await plane.apply(expander.expand(state, [SUBNET]), STAMP);
    const changed: CellState = {
      ...state,
      ingress: {
        ...state.ingress,
        'app-back': { ...state.ingress['app-back'], 'app-front|tcp|8081|8085': { sourceAppId: 'app-front', protocol: 'tcp', startPort: 8081, endPort: 8085 } },
      },
      sources: { ...state.sources, 'app-front': { '10.255.1.2': true, '10.255.3.3': true } },
    };
    t.equal(await plane.change(expander.update(changed, [SUBNET, '10.255.9.0/24'])!, { revision: 50, hash: 'a'.repeat(32) }), true);
    t.equal(plane.loads.incremental, 1, 'an incremental change');
    const now = (await plane.listing())!;
    t.match(
      now,
      /10\.255\.1\.2 \. 10\.255\.1\.3 \. 8080-8085 comment "app-front->app-back tcp\/8080-8081\+tcp\/8081-8085"/,
      'the merged element with its new comment',
    );
    t.notMatch(now, /10\.255\.2\.9/, 'the removed source is gone');
    t.match(now, /10\.255\.9\.0\/24/, 'the new subnet is there');
    t.same(await plane.found(), { stamp: { revision: 50, hash: 'a'.repeat(32) } });
    t.equal(await plane.drifted(), false, 'still no drift after an incremental change');
    t.equal(await plane.change(expander.update(state, [SUBNET])!, { revision: 51, hash: 'b'.repeat(32) }), true);
    t.equal(plane.loads.incremental, 2);
    // The same as a whole load of the same rules: what incremental changes leave is what a fresh load makes.
    const fresh = new NftDataplane({ overlayCidr: OVERLAY, netns: ns });
    const incrementalListing = (await plane.listing())!;
    await fresh.apply(before, { revision: 51, hash: 'b'.repeat(32) });
    // (compared element by element: the kernel lists a set in an order of its own, which insertions change)
    const canonical = async (listing: string) => {
      const elements: string[] = [];
      const skeleton = await readTable(listing, (set, element, comment) => void (set !== 'applied' && elements.push(`${set} ${element} ${comment}`)));
      return { skeleton, elements: elements.sort() };
    };
    t.same(await canonical((await fresh.listing())!), await canonical(incrementalListing), 'incremental result equals a whole load');
    t.equal(await fresh.drifted(), false);
    await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'element', 'inet', TABLE, 'allow_tcp', '{ 10.255.1.3 . 10.255.1.4 . 5432 }']);
    t.equal(await fresh.drifted(), true, 'a deleted commented element is drift');
  },
);
