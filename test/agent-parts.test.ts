// The cell agent's parts alone, without NATS: the adoption rule (pure), the converger driven by a fake feed and the
// real MemoryDataplane (first load, only-on-change, fail-closed adoption of a found table, drift repair, a failed
// load retried), the status record (pure), the discovery publisher and the ready gate's answers.
import t from 'tap';
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { type CellState, cellHashOf, emptyCellState } from '../projections/cell.ts';
import { EMPTY_CELL_HASH } from '../projections/cell-stream.ts';
import { Progress } from '../runtime/progress.ts';
import { Registry } from '../runtime/metrics.ts';
import type { Logger } from '../runtime/logger.ts';
import type { CellView } from '../services/cell-agent/feed.ts';
import { MemoryDataplane } from '../services/cell-agent/dataplane.ts';
import { type AppliedStamp, type RuleDiff, type RuleSet, expandRules } from '../services/cell-agent/rules.ts';
import { adoptionOf } from '../services/cell-agent/adoption.ts';
import { Converger, type ConvergePass, type Enforced, type Repairs } from '../services/cell-agent/converger.ts';
import { type CellStatus, StatusReporter, statusAfterPass, statusAfterRepair } from '../services/cell-agent/status.ts';
import { DiscoveryPublisher } from '../services/cell-agent/discovery-publisher.ts';
import { readyAnswerOf, parseReadyRequest } from '../services/cell-agent/ready-gate.ts';

const OVERLAY = '10.255.0.0/16';
const CELL = 'cell-1';

/** A logger that keeps its lines (as parsed JSON) for the test to read. */
function capturingLog(): { log: Logger; lines: { msg: string; [k: string]: unknown }[]; msgs: () => string[] } {
  const lines: { msg: string; [k: string]: unknown }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const text of chunk.toString().split('\n')) if (text) lines.push(JSON.parse(text));
      done();
    },
  });
  return { log: pino({ level: 'debug' }, stream), lines, msgs: () => lines.map((l) => l.msg) };
}
/** pino writes through the stream asynchronously: let it flush. */
const flushed = () => new Promise((r) => setImmediate(r));

/** web (on another cell) → api (here) tcp/8080; `other` is here too, allowed nothing. */
function plannedState(): CellState {
  return {
    ...emptyCellState(),
    containers: {
      'api-0': { appId: 'api', appName: 'api', instanceIndex: 0, ip: '10.255.1.3' },
      'other-0': { appId: 'other', appName: 'other', instanceIndex: 0, ip: '10.255.1.4' },
    },
    ingress: { api: { 'web|tcp|8080|8080': { sourceAppId: 'web', protocol: 'tcp', startPort: 8080, endPort: 8080 } } },
    sources: { web: { '10.255.2.2': true } },
    names: { 'api.apps.internal': { '10.255.1.3': true }, '0.api.apps.internal': { '10.255.1.3': true } },
    cell: { [CELL]: { subnet: '10.255.1.0/24' } },
  };
}

/** A feed as the converger sees one: a view that the test moves (its state changed in place, like the real feed's). */
class FakeFeed {
  view: CellView = { cellId: CELL, revision: 0, hash: EMPTY_CELL_HASH, state: emptyCellState(), namesSeq: 0, verified: false };
  /** Adopts a planned (verified) state at `revision`. */
  plan(revision: number, state: CellState = this.view.state, opts: { names?: boolean } = {}): CellView {
    this.view = { ...this.view, revision, state, hash: cellHashOf(state), verified: true, namesSeq: this.view.namesSeq + (opts.names === false ? 0 : 1) };
    return this.view;
  }
}

/** A converger on a fresh fake feed, recording what it hands to its hooks. */
async function converger(plane: { dataplane: MemoryDataplane | FlakyDataplane; feed?: FakeFeed }) {
  const feed = plane.feed ?? new FakeFeed();
  const { log, lines, msgs } = capturingLog();
  const passes: ConvergePass[] = [];
  const announced: number[] = [];
  const repairs: Repairs[] = [];
  const c = new Converger({
    cellId: CELL,
    overlayCidr: OVERLAY,
    subnets: [],
    driftIntervalMs: 60_000, // ticks are called by the test
    dataplane: plane.dataplane,
    found: await plane.dataplane.found(),
    feed,
    log,
    metrics: new Registry(),
    passed: async (p) => void passes.push(p),
    applied: async (v) => void announced.push(v.revision),
    repaired: async (r) => void repairs.push(r),
  });
  return { c, feed, lines, msgs, passes, announced, repairs };
}

/** The memory dataplane whose next `failures` loads throw. */
class FlakyDataplane extends MemoryDataplane {
  failures = 0;
  #fail(): void {
    if (this.failures > 0) {
      this.failures -= 1;
      throw new Error('nft: no buffer space');
    }
  }
  override async apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void> {
    this.#fail();
    return super.apply(rules, stamp);
  }
  override async change(diff: RuleDiff, stamp?: AppliedStamp): Promise<boolean> {
    this.#fail();
    return super.change(diff, stamp);
  }
}

t.test('adoption: a found table is replaced only by the stamped state or a verified one at least as new', async (t) => {
  const stamp = { revision: 5, hash: 'h5' };
  const cases: [AppliedStamp | null, { revision: number; hash: string; verified: boolean }, 'keep' | 'load', string][] = [
    [stamp, { revision: 0, hash: EMPTY_CELL_HASH, verified: false }, 'keep', 'the initial empty state'],
    [stamp, { revision: 4, hash: 'h4', verified: true }, 'keep', 'an older plan'],
    [stamp, { revision: 6, hash: 'h6', verified: false }, 'keep', 'newer but unverified'],
    [stamp, { revision: 5, hash: 'other', verified: false }, 'keep', 'the stamped revision, another hash, unverified'],
    [stamp, { revision: 5, hash: 'h5', verified: false }, 'load', 'exactly the stamped state'],
    [stamp, { revision: 5, hash: 'other', verified: true }, 'load', 'a verified state at the stamped revision'],
    [stamp, { revision: 6, hash: 'h6', verified: true }, 'load', 'a verified newer plan'],
    [null, { revision: 0, hash: EMPTY_CELL_HASH, verified: false }, 'keep', 'no stamp: not the initial state'],
    [null, { revision: 1, hash: 'h1', verified: true }, 'load', 'no stamp: any verified state'],
  ];
  for (const [s, view, want, what] of cases) t.equal(adoptionOf(s, view), want, what);
});

t.test('converger: an empty dataplane gets the initial default-deny rules at once, then each change', async (t) => {
  const plane = new MemoryDataplane(OVERLAY);
  const { c, feed, msgs, passes, announced } = await converger({ dataplane: plane });
  t.equal(c.enforced.value.revision, -1, 'nothing enforced before the first pass');
  await c.converge();
  t.same(plane.stamp, { revision: 0, hash: EMPTY_CELL_HASH }, 'the initial state, stamped, loaded although unverified');
  t.equal(plane.applies, 1);
  t.equal(c.enforced.value.revision, 0);
  t.same(announced, [0]);

  feed.plan(3, plannedState());
  await c.converge();
  t.same(plane.stamp, { revision: 3, hash: cellHashOf(plannedState()) });
  t.equal(plane.allows('10.255.2.2', '10.255.1.3', 'tcp', 8080), true, 'the planned flow');
  t.equal(plane.allows('10.255.2.2', '10.255.1.4', 'tcp', 8080), false, 'default deny to another local container');
  t.equal(plane.allows('10.255.2.2', '10.255.1.9', 'tcp', 8080), false, 'and to an unknown address in the cell range');
  t.same([...c.enforced.value.containers].sort(), ['api-0', 'other-0'], 'the containers the rules cover');
  t.match(passes.at(-1), { error: null, view: { revision: 3 }, rules: { local: 2, allows: 1 } });
  t.equal(plane.changes, 1, 'after the first load, the difference');
  const { local, subnets, allows } = expandRules(plannedState(), ['10.255.1.0/24']);
  t.same(plane.rules, { local, subnets, allows }, 'what is loaded is the whole expansion');

  // Only the names change: the rules are the same object, nothing is loaded, the revision is still announced.
  feed.view.state.names['1.api.apps.internal'] = { '10.255.1.5': true };
  feed.plan(4);
  await c.converge();
  t.equal(plane.applies, 2, 'no load when the rules did not change');
  t.equal(plane.stamp?.revision, 3, 'the stamp moves only with the rules');
  t.equal(c.enforced.value.revision, 4);
  t.same(announced, [0, 3, 4]);
  await c.stop();
  await flushed();
  t.same(msgs().filter((m) => m === 'rules-applied').length, 2);
  t.notOk(msgs().includes('table-found'), 'nothing found, nothing adopted');
});

t.test('converger: a found table is kept until a verified state at least as new as its stamp', async (t) => {
  const plane = new MemoryDataplane(OVERLAY);
  const enforcedState = plannedState();
  await plane.apply({ local: ['10.255.1.3'], subnets: ['10.255.1.0/24'], allows: [] }, { revision: 5, hash: 'h5' });
  const before = plane.rules;
  const { c, feed, lines, msgs, passes, announced } = await converger({ dataplane: plane });

  await c.converge();
  feed.plan(4, enforcedState);
  await c.converge();
  t.equal(plane.applies, 1, 'the initial state and an older plan load nothing');
  t.equal(plane.rules, before, 'the table found is untouched');
  t.same(passes, [], 'nothing reported');
  t.equal(c.enforced.value.revision, -1, 'nothing announced while kept');
  t.equal(await c.checkDrift(), false, 'nothing to repair');

  feed.plan(6);
  await c.converge();
  t.same(plane.stamp, { revision: 6, hash: cellHashOf(enforcedState) }, 'the verified newer plan is the first load');
  t.same(announced, [6]);
  await c.stop();
  await flushed();
  t.same(msgs(), ['table-found', 'table-kept', 'table-adopted', 'rules-applied'], 'kept logged once');
  t.match(lines[0], { tableRevision: 5, tableHash: 'h5' });
  t.match(lines[1], { tableRevision: 5, revision: 0, verified: false });
  t.match(lines[2], { tableRevision: 5, revision: 6 });
});

t.test('converger: a table without a stamp is kept until any verified state; exactly the stamped state is adopted', async (t) => {
  const unstamped = new MemoryDataplane(OVERLAY);
  await unstamped.apply({ local: [], subnets: [], allows: [] });
  const a = await converger({ dataplane: unstamped });
  await a.c.converge();
  t.equal(unstamped.applies, 1, 'kept');
  a.feed.plan(1);
  await a.c.converge();
  t.same(unstamped.stamp, { revision: 1, hash: EMPTY_CELL_HASH }, 'the first verified state loaded');

  const stamped = new MemoryDataplane(OVERLAY);
  await stamped.apply({ local: [], subnets: [], allows: [] }, { revision: 0, hash: EMPTY_CELL_HASH });
  const b = await converger({ dataplane: stamped });
  await b.c.converge();
  t.equal(stamped.applies, 2, 'the unverified initial state is exactly the stamped one: loaded');
  t.equal(b.c.enforced.value.revision, 0);
  await a.c.stop();
  await b.c.stop();
});

t.test('converger: drift is repaired and counted once the rules are back', async (t) => {
  const plane = new MemoryDataplane(OVERLAY);
  const { c, feed, msgs, passes, repairs } = await converger({ dataplane: plane });
  feed.plan(2, plannedState());
  await c.converge();
  t.equal(await c.checkDrift(), false, 'no drift');
  plane.tamper();
  t.equal(plane.allows('10.255.2.2', '10.255.1.3', 'tcp', 8080), false, 'tampered');
  t.equal(await c.checkDrift(), true);
  t.equal(plane.allows('10.255.2.2', '10.255.1.3', 'tcp', 8080), true, 'repaired');
  t.match(repairs, [{ count: 1, last: { drift: 'rules-flushed' } }]);
  t.same(c.repairs, repairs[0]);
  t.match(passes.at(-1), { view: { revision: 2 }, error: null, repairs: { count: 0 } }, 'the reload pass ran before the repair was counted');
  await c.stop();
  await flushed();
  t.same(msgs().slice(-3), ['drift-detected', 'rules-applied', 'drift-repaired']);
});

t.test('converger: a failed load keeps the enforced revision and is retried on the next tick', async (t) => {
  const plane = new FlakyDataplane(OVERLAY);
  const { c, feed, msgs, passes, announced } = await converger({ dataplane: plane });
  await c.converge();
  plane.failures = 1;
  feed.plan(2, plannedState());
  await c.converge();
  t.match(passes.at(-1), { error: 'nft: no buffer space', view: { revision: 2 } });
  t.equal(c.enforced.value.revision, 0, 'not announced');
  t.same(announced, [0]);
  c.tick();
  await c.enforced.until((e: Enforced) => e.revision === 2, 5000, 'the retry');
  t.same(plane.stamp?.revision, 2);
  t.match(passes.at(-1), { error: null });
  await c.stop();
  await flushed();
  t.ok(msgs().includes('rules-apply-failed'));
});

t.test('converger: stop cancels the waits on it and runs no pass after', async (t) => {
  const plane = new MemoryDataplane(OVERLAY);
  const { c, feed } = await converger({ dataplane: plane });
  await c.converge();
  const waiting = c.enforced.until((e) => e.revision >= 9, 10_000, 'revision 9');
  await c.stop();
  await t.rejects(waiting, /cell agent stopped/);
  feed.plan(9, plannedState());
  c.schedule();
  await c.converge();
  t.equal(plane.applies, 1, 'nothing loaded after stop');
});

t.test('status: built from a pass; a failed load keeps the revision still enforced; repairs update it', async (t) => {
  const view = new FakeFeed().plan(7, plannedState());
  const rules = { local: 2, allows: 0 };
  const ids = { cellId: CELL, dataplane: 'memory' as const };
  const ok = statusAfterPass(undefined, { view, rules, error: null, at: '2024-01-01T00:00:00.000Z', applyMs: 1.5, repairs: { count: 0, last: null } }, ids);
  t.same(ok, { cellId: CELL, dataplane: 'memory', revision: 7, hash: view.hash, appliedAt: '2024-01-01T00:00:00.000Z', applyMs: 1.5, rules: { local: 2, allows: 0 }, driftRepairs: 0, lastRepair: null, error: null, refusals: { count: 0, last: null } });
  const failed = statusAfterPass(ok, { view: { ...view, revision: 8, hash: 'h8' }, rules, error: 'boom', at: 'later', applyMs: 2, repairs: { count: 0, last: null } }, ids);
  t.match(failed, { revision: 7, hash: view.hash, error: 'boom', appliedAt: 'later' });
  t.match(statusAfterPass(undefined, { view, rules, error: 'boom', at: 'x', applyMs: 0, repairs: { count: 0, last: null } }, ids), { revision: 0, hash: '' }, 'nothing applied yet');
  const last = { at: 'then', drift: 'table-missing' };
  t.match(statusAfterRepair(ok, { count: 3, last }), { revision: 7, driftRepairs: 3, lastRepair: last });
  t.equal(statusAfterRepair(undefined, { count: 1, last }), undefined, 'no record before the first pass');

  // The reporter puts each one; a put that fails is logged, not thrown.
  const puts: [string, CellStatus][] = [];
  let fail = false;
  const { log, msgs } = capturingLog();
  const reporter = new StatusReporter({ cellId: CELL, dataplane: 'memory', log, writer: { put: async (k, v) => (fail ? Promise.reject(new Error('no responders')) : void puts.push([k, JSON.parse(v)])) } });
  await reporter.repaired({ count: 1, last });
  t.same(puts, [], 'nothing to report before a pass');
  await reporter.passed({ view, rules, error: null, at: 'a', applyMs: 1, repairs: { count: 0, last: null } });
  await reporter.repaired({ count: 1, last });
  t.match(puts, [[CELL, { revision: 7, driftRepairs: 0 }], [CELL, { revision: 7, driftRepairs: 1, lastRepair: last }]]);
  t.same(reporter.status, puts[1]![1]);
  fail = true;
  await reporter.passed({ view, rules, error: null, at: 'b', applyMs: 1, repairs: { count: 1, last } });
  await flushed();
  t.same(msgs(), ['status-put-failed']);
});

t.test('discovery publisher: a put after an apply that may have changed the names, and on every heartbeat', async (t) => {
  const state = plannedState();
  const puts: { key: string; record: { cellId: string; at: string; names: Record<string, string[]> } }[] = [];
  let fail = false;
  const { log, msgs } = capturingLog();
  const publisher = new DiscoveryPublisher({
    cellId: CELL,
    names: () => state.names,
    writer: { put: async (key, value) => (fail ? Promise.reject(new Error('timeout')) : void puts.push({ key, record: JSON.parse(value) })) },
    log,
    heartbeatMs: 60_000,
    now: () => new Date('2024-01-01T00:00:00Z'),
  });
  await publisher.applied({ namesSeq: 1 });
  await publisher.applied({ namesSeq: 1 });
  t.equal(puts.length, 1, 'unchanged names: no second put');
  t.same(puts[0], { key: CELL, record: { cellId: CELL, at: '2024-01-01T00:00:00.000Z', names: { 'api.apps.internal': ['10.255.1.3'], '0.api.apps.internal': ['10.255.1.3'] } } });
  delete state.names['0.api.apps.internal'];
  await publisher.applied({ namesSeq: 2 });
  t.same(puts[1]?.record.names, { 'api.apps.internal': ['10.255.1.3'] }, 'a removed name is gone');
  await publisher.publish();
  t.equal(puts.length, 3, 'the heartbeat re-puts');
  fail = true;
  await publisher.applied({ namesSeq: 3 });
  await flushed();
  t.same(msgs(), ['discovery-put-failed'], 'a failed put is logged, not thrown');
});

t.test('ready gate: answers once the container is enforced, or refuses the request', async (t) => {
  const enforced = new Progress<Enforced>({ revision: -1, containers: new Set() });
  const ask = (body: unknown) => readyAnswerOf(typeof body === 'string' ? body : JSON.stringify(body), CELL, enforced);
  t.same(await ask('{ nope'), { ready: false, code: 'invalid-json', error: 'request body is not valid JSON' });
  t.match(await ask({ containerId: 'a.b' }), { ready: false, code: 'invalid-input', error: /^containerId: / });
  t.match(await ask({}), { ready: false, code: 'invalid-input' });
  for (const body of ['null', '42', '"api-0"']) t.match(await ask(body), { ready: false, code: 'invalid-input' }, `${body}: refused, not thrown`);
  t.same(await ask({ containerId: 'api-0', timeoutMs: 10 }), { ready: false, code: 'timeout', error: `container api-0 is not enforced on ${CELL} yet` });
  const pending = ask({ containerId: 'api-0' });
  enforced.advance({ revision: 3, containers: new Set(['other-0']) });
  enforced.advance({ revision: 4, containers: new Set(['api-0']) });
  t.same(await pending, { ready: true, cellId: CELL, revision: 4 });
  t.same(await ask({ containerId: 'api-0', timeoutMs: 0 }), { ready: true, cellId: CELL, revision: 4 }, 'already enforced');
  t.match(parseReadyRequest(JSON.stringify({ containerId: 'x', timeoutMs: 120_000 })), { ok: true, request: { timeoutMs: 10_000 } }, 'an out-of-range timeout: the default');
  t.match(parseReadyRequest(JSON.stringify({ containerId: 'x', timeoutMs: 60_000 })), { ok: true, request: { timeoutMs: 60_000 } });
});
