// The incremental path of the nftables driver, proven against whole loads as root in network namespaces: a random
// history of cell states, each converged by the converger (its expander's difference, one element transaction),
// must leave the kernel's table exactly as a whole load of the same state leaves another one; drift checks read the
// table back against what was loaded, find every kind of tampering, and none while changes run beside them.
import t, { type Test } from 'tap';
import { type CellState, cellHashOf, emptyCellState } from '../projections/cell.ts';
import { Registry } from '../runtime/metrics.ts';
import { silentLogger } from '../runtime/logger.ts';
import type { CellView } from '../services/cell-agent/feed.ts';
import { NftDataplane, run } from '../services/cell-agent/dataplane.ts';
import { Converger } from '../services/cell-agent/converger.ts';
import { type AppliedStamp, RuleExpander, TABLE, cellSubnetsOf, expandRules, readTable, stampOf } from '../services/cell-agent/rules.ts';
import { isRoot } from './harness/netns.ts';

const skip = isRoot() ? false : 'needs root (network namespaces and nftables); CI runs as root';
const OVERLAY = '10.255.0.0/16';
const CELL = 'cell-1';

/** A fresh network namespace, deleted at teardown; with a driver programming it. */
async function namespace(
  t: Test,
  name: string,
  opts: { checkDueMs?: number } = {},
): Promise<{ ns: string; plane: NftDataplane; nft: (...args: string[]) => Promise<string> }> {
  const ns = `nfinc${process.pid}${name}`;
  await run('ip', ['netns', 'add', ns]);
  t.teardown(() => run('ip', ['netns', 'del', ns]).catch(() => undefined));
  return { ns, plane: new NftDataplane({ overlayCidr: OVERLAY, netns: ns, ...opts }), nft: (...args) => run('ip', ['netns', 'exec', ns, 'nft', ...args]) };
}

/**
 * What a table enforces, read back from its listing: the skeleton and every element with its comment, sorted (the
 * kernel lists a hash set in its own order); the stamp set apart (incremental loads keep older stamp elements).
 */
async function contentOf(listing: string | undefined): Promise<{ skeleton: string; elements: string[]; stamp: AppliedStamp | null }> {
  if (listing === undefined) throw new Error('no table');
  const elements: string[] = [];
  const skeleton = await readTable(listing, (set, element, comment) => void (set !== 'applied' && elements.push(`${set} ${element} ${comment}`)));
  return { skeleton, elements: elements.sort(), stamp: stampOf(listing) };
}

/** A seeded random history of cell states, copied on write as the feed's entries are (a changed entry is a new object). */
function history(seed: number) {
  const rnd = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const apps = ['a', 'b', 'c', 'd', 'e'];
  let s: CellState = { ...emptyCellState(), cell: { [CELL]: { subnet: '10.255.1.0/24' } } };
  return (): CellState => {
    const kind = rnd(7);
    const app = apps[rnd(apps.length)]!;
    if (kind === 0) {
      const id = `c${rnd(10)}`;
      const containers = { ...s.containers };
      if (containers[id] && rnd(3) > 0) delete containers[id];
      else containers[id] = { appId: app, appName: app, instanceIndex: 0, ip: `10.255.1.${1 + rnd(12)}` }; // started, or moved
      s = { ...s, containers };
    } else if (kind === 1 || kind === 2) {
      // single ports and ranges, overlapping ones of one source merged (a comment naming both policies)
      const protocol = rnd(2) ? ('tcp' as const) : ('udp' as const);
      const startPort = 1000 + rnd(20);
      const endPort = rnd(3) === 0 ? startPort + rnd(15) : startPort;
      const rule = { sourceAppId: apps[rnd(apps.length)]!, protocol, startPort, endPort };
      const key = `${rule.sourceAppId}|${protocol}|${startPort}|${endPort}`;
      const entry = { ...(s.ingress[app] ?? {}) };
      if (entry[key]) delete entry[key];
      else entry[key] = rule;
      const ingress = { ...s.ingress, [app]: entry };
      if (Object.keys(entry).length === 0) delete ingress[app];
      s = { ...s, ingress };
    } else if (kind === 3 || kind === 4) {
      const ips = { ...(s.sources[app] ?? {}) };
      const ip = `10.255.${2 + rnd(3)}.${1 + rnd(20)}`;
      if (ips[ip]) delete ips[ip];
      else ips[ip] = true;
      const sources = { ...s.sources, [app]: ips };
      if (Object.keys(ips).length === 0) delete sources[app];
      s = { ...s, sources };
    } else if (kind === 5) {
      s = { ...s, cell: rnd(4) === 0 ? {} : { [CELL]: { subnet: rnd(2) ? '10.255.1.0/24' : '10.255.1.0/25' } } };
    } else {
      s = JSON.parse(JSON.stringify(s)) as CellState; // a snapshot: every object new
    }
    return s;
  };
}

t.test('a random history applied by differences leaves the table a whole load of each state makes', { skip }, async (t) => {
  const inc = await namespace(t, 'i');
  const whole = await namespace(t, 'w');
  let view: CellView = { cellId: CELL, revision: 0, hash: cellHashOf(emptyCellState()), state: emptyCellState(), namesSeq: 0, verified: true };
  const c = new Converger({
    cellId: CELL,
    overlayCidr: OVERLAY,
    subnets: [],
    driftIntervalMs: 60_000,
    dataplane: inc.plane,
    found: null,
    feed: {
      get view() {
        return view;
      },
    },
    log: silentLogger(),
    metrics: new Registry(),
    passed: async (p) => void (p.error && t.fail(p.error)),
  });
  await c.converge();
  const next = history(7);
  for (let step = 1; step <= 150; step++) {
    const state = next();
    view = { ...view, revision: step, state, hash: cellHashOf(state) };
    await c.converge();
    const stamp = { revision: step, hash: view.hash };
    await whole.plane.apply(expandRules(state, cellSubnetsOf(state, CELL)), stamp);
    const [got, want] = [await contentOf(await inc.plane.listing()), await contentOf(await whole.plane.listing())];
    t.same(got.elements, want.elements, `step ${step}: the same elements and comments`);
    t.equal(got.skeleton, want.skeleton, `step ${step}: the same chains and sets`);
    if (got.stamp?.revision !== want.stamp?.revision && inc.plane.loads.incremental > 0) {
      // the stamp moves only with the rules: then the incremental table's stamp is the last state that changed them
      t.ok(got.stamp!.revision < step, `step ${step}: an older stamp only when the rules did not change`);
    }
    if (step % 10 === 0) t.equal(await inc.plane.drifted(), false, `step ${step}: no drift`);
  }
  t.equal(inc.plane.loads.full, 1, 'one whole load, the first');
  t.ok(inc.plane.loads.incremental > 60, `then differences (${inc.plane.loads.incremental})`);
  await c.stop();
});

/** A cell of about n flows: 10 local containers, each allowing one source app of n / 10 instances. */
function bigState(n: number): CellState {
  const s: CellState = { ...emptyCellState(), cell: { [CELL]: { subnet: '10.255.1.0/24' } } };
  const perSource = Math.max(1, Math.round(n / 10));
  for (let d = 0; d < 10; d++) {
    s.containers[`d${d}`] = { appId: `d${d}`, appName: `d${d}`, instanceIndex: 0, ip: `10.255.1.${d + 1}` };
    s.ingress[`d${d}`] = { [`s${d}|tcp|80|80`]: { sourceAppId: `s${d}`, protocol: 'tcp', startPort: 80, endPort: 80 } };
    const ips: Record<string, true> = {};
    for (let k = 0; k < perSource; k++) ips[`10.255.${10 + d * 10 + Math.floor(k / 250)}.${k % 250}`] = true;
    s.sources[`s${d}`] = ips;
  }
  return s;
}

t.test('drift checks read the table back: every tampering is found, changes beside a check are not', { skip }, async (t) => {
  // every check here must complete: a change waits for its listing, then runs while the check reads the table
  const { ns, plane, nft } = await namespace(t, 'd', { checkDueMs: 0 });
  const expander = new RuleExpander();
  let state = bigState(20_000);
  let revision = 1;
  const subnets = ['10.255.1.0/24'];
  await plane.apply(expander.expand(state, subnets), { revision, hash: cellHashOf(state) });

  // Changes while a check reads the table: left out of it, no drift.
  const change = async (k: number) => {
    const ips = { ...state.sources.s0 };
    if (k % 3 === 2) delete ips[`10.255.200.${k - 1}`];
    else ips[`10.255.200.${k}`] = true;
    state = { ...state, sources: { ...state.sources, s0: ips } };
    const diff = expander.update(state, subnets)!;
    return plane.change(diff, { revision: ++revision, hash: cellHashOf(state) });
  };
  // (the first check after a whole load also builds what it expects, from the rules loaded and the changes since)
  t.ok(await change(0));
  const checking = plane.drifted();
  for (let k = 1; k < 12; k++) t.ok(await change(k), `change ${k} applied`);
  t.equal(await checking, false, 'changes during a check are not drift');
  t.equal(await plane.drifted(), false, 'nor after');

  // A tampering beside changes is still found.
  const tampering = nft('delete', 'element', 'inet', TABLE, 'allow_tcp', '{ 10.255.13.7 . 10.255.1.1 . 80 }');
  const during = plane.drifted();
  await tampering;
  for (let k = 12; k < 15; k++) await change(k); // (refused once the check found the drift: the next load is whole)
  const seen = (await during) || (await plane.drifted());
  t.equal(seen, true, 'an element deleted by someone else');
  t.equal(plane.lastDrift, 'elements-changed');
  const diff = expander.update({ ...state, sources: { ...state.sources, s1: { ...state.sources.s1, '10.255.201.1': true } } }, subnets)!;
  t.equal(await plane.change(diff, { revision: ++revision, hash: 'a'.repeat(32) }), false, 'after drift no difference applies: a whole load');

  const a = expander.rules.allows[0]!;
  const element = `${a.src} . ${a.dst} . ${a.startPort}`;
  const tamperings: [string, string, string][] = [
    ['a foreign element', `add element inet ${TABLE} allow_tcp { 10.255.9.9 . 10.255.1.1 . 22 }`, 'elements-changed'],
    [
      'a comment changed',
      `delete element inet ${TABLE} allow_tcp { ${element} }\nadd element inet ${TABLE} allow_tcp { ${element} comment "x" }`,
      'elements-changed',
    ],
    ['a set flushed', `flush set inet ${TABLE} local`, 'elements-changed'],
    ['the stamp changed', `add element inet ${TABLE} applied { 999999 comment "netfold revision=999999 hash=00" }`, 'elements-changed'],
    ['a rule added', `insert rule inet ${TABLE} forward accept`, 'table-changed'],
    ['a chain flushed', `flush chain inet ${TABLE} forward`, 'table-changed'],
    ['the table deleted', `delete table inet ${TABLE}`, 'table-missing'],
  ];
  for (const [what, commands, kind] of tamperings) {
    await plane.apply(expander.rules, { revision: ++revision, hash: 'b'.repeat(32) });
    t.equal(await plane.drifted(), false, `${what}: none before`);
    await run('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], `${commands}\n`);
    t.equal(await plane.drifted(), true, `${what}: found`);
    t.equal(plane.lastDrift, kind, `${what}: ${kind}`);
  }
});

t.test('a difference applies only to what this process loaded', { skip }, async (t) => {
  const { plane } = await namespace(t, 'v');
  const expander = new RuleExpander();
  const state = bigState(100);
  const d1 = expander.update(state, [])!;
  t.equal(await plane.change(d1), false, 'nothing loaded here (a restart): no difference applies');
  await plane.apply(expander.rules);
  const d2 = expander.update({ ...state, sources: { ...state.sources, s1: { '10.255.3.3': true } } }, [])!;
  t.equal(await plane.change({ ...d2, from: d2.from - 1 }), false, 'another base: refused');
  t.equal(await plane.change(d2), true, 'its own base: applied');
  t.equal(await plane.change(d2), false, 'twice: refused (the base moved on)');
  await plane.apply({ local: [], subnets: [], allows: [] });
  const d3 = expander.update(state, [])!;
  t.equal(await plane.change(d3), false, 'a RuleSet without a version: no difference applies after it');
  t.equal(plane.loads.incremental, 1);
});

t.test('a change abandons a drift check under way (unless one is due), which the next check makes up for', { skip }, async (t) => {
  const { plane, nft } = await namespace(t, 'a');
  const expander = new RuleExpander();
  let state = bigState(20_000);
  await plane.apply(expander.expand(state, []), { revision: 1, hash: cellHashOf(state) });
  t.equal(await plane.drifted(), false);
  await nft('delete', 'element', 'inet', TABLE, 'allow_tcp', '{ 10.255.13.7 . 10.255.1.1 . 80 }');
  const checking = plane.drifted();
  state = { ...state, sources: { ...state.sources, s0: { ...state.sources.s0, '10.255.200.1': true } } };
  t.equal(await plane.change(expander.update(state, [])!, { revision: 2, hash: cellHashOf(state) }), true);
  t.equal(await checking, false, 'abandoned: it found nothing');
  t.equal(await plane.drifted(), true, 'the next check finds the tampering');
});
