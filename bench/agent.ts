// npm run bench:agent — the cell agent's dataplane: whole-table apply time for 1k/10k/100k-tuple rule sets next to
// a bare `nft -f` of the same file in the same run; one-tuple changes end to end (a cell delta is parsed and
// applied by the feed's replica, expanded by the converger, loaded by the nftables driver, with drift checks
// ticking at the agent's default interval), next to a bare `nft add element` / `nft delete element` on the same
// table; and the memory driver's apply rate.
// Needs root (it programs nftables in a network namespace of its own); sizes: BENCH_SIZES (1000,10000,100000),
// BENCH_RUNS (5), BENCH_INCREMENTAL (200), BENCH_DRIFT_MS (500).
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryDataplane, NftDataplane, run } from '../services/cell-agent/dataplane.ts';
import { type Allow, type RuleSet, RuleExpander, expandRules, normalizeAllows, renderNft } from '../services/cell-agent/rules.ts';
import { Converger } from '../services/cell-agent/converger.ts';
import { type CellOp, type CellState, applyCellOps, cellHashOf, emptyCellState } from '../projections/cell.ts';
import { CellReplica } from '../projections/cell-stream.ts';
import { Registry } from '../runtime/metrics.ts';
import { silentLogger } from '../runtime/logger.ts';
import { envNumber, machine, percentile, progress } from './lib.ts';

if (process.getuid?.() !== 0) {
  console.error('bench:agent needs root (nftables in a network namespace)');
  process.exit(1);
}
const SIZES = (process.env.BENCH_SIZES ?? '1000,10000,100000').split(',').map(Number);
const RUNS = envNumber('BENCH_RUNS', 5);
const INCREMENTAL = envNumber('BENCH_INCREMENTAL', 200);
const DRIFT_MS = envNumber('BENCH_DRIFT_MS', 500);
const OVERLAY = '10.255.0.0/16';
const ns = `nfbench${process.pid}`;
const dir = mkdtempSync(join(tmpdir(), 'netfold-bench-'));
await run('ip', ['netns', 'add', ns]);

const ip = (n: number) => `10.255.${(n >> 8) & 255}.${n & 255}`;
/** n allows: 100 local destinations, sources spread over the overlay; 1% port ranges. */
function ruleSet(n: number): RuleSet {
  const allows: Allow[] = [];
  for (let i = 0; i < n; i++) {
    const port = 1000 + Math.floor(i / 50000);
    const protocol = i % 10 === 9 ? 'udp' : 'tcp';
    const endPort = i % 100 === 0 ? port + 10 : port;
    // commented like the agent's elements: source app, destination app, policy
    allows.push({
      src: ip(300 + (i % 50000)),
      dst: ip(1 + (i % 100)),
      protocol,
      startPort: port,
      endPort,
      srcApp: `app-${i % 500}`,
      dstApp: `app-d${i % 100}`,
      policy: `${protocol}/${port === endPort ? port : `${port}-${endPort}`}`,
    });
  }
  return { local: Array.from({ length: 100 }, (_, i) => ip(1 + i)), subnets: ['10.255.0.0/16'], allows: normalizeAllows(allows) };
}

/**
 * A cell's desired state that expands to n tuples: 100 local containers (one per destination app, 10.255.0.1-100,
 * cell range 10.255.0.0/24), each app allowing 10 source apps (of 500; the first rule of every tenth app a port
 * range, the last one udp), each source app with n / 1,000 instances.
 */
function cellState(cellId: string, n: number): CellState {
  const perSource = Math.max(1, Math.round(n / 1000));
  const s = emptyCellState();
  s.cell[cellId] = { subnet: '10.255.0.0/24' };
  for (let d = 0; d < 100; d++) {
    s.containers[`d${d}-0`] = { appId: `d${d}`, appName: `d${d}`, instanceIndex: 0, ip: ip(1 + d) };
    const rules: CellState['ingress'][string] = {};
    for (let r = 0; r < 10; r++) {
      const sourceAppId = `s${(d * 10 + r) % 500}`;
      const protocol = r === 9 ? 'udp' : 'tcp';
      const startPort = 1000 + r;
      const endPort = r === 0 && d % 10 === 0 ? startPort + 10 : startPort;
      rules[`${sourceAppId}|${protocol}|${startPort}|${endPort}`] = { sourceAppId, protocol, startPort, endPort };
    }
    s.ingress[`d${d}`] = rules;
  }
  for (let a = 0; a < 500; a++)
    s.sources[`s${a}`] = Object.fromEntries(Array.from({ length: perSource }, (_, k) => [ip(256 + a * perSource + k), true as const]));
  return s;
}

/**
 * One-tuple changes end to end on a cell of n tuples: a policy from a new one-instance app into destination d0
 * (two entries change: the new source's IPs, d0's ingress rules), each as a delta message the replica parses and
 * checks; timed from the message to the converger's enforced revision. Then the same policies deleted, one by one.
 */
async function oneTupleChanges(
  n: number,
): Promise<{ adds: number[]; removes: number[]; bareAdds: number[]; bareDeletes: number[]; errors: number; loads: unknown }> {
  await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'netfold']).catch(() => undefined);
  const cellId = 'bench-cell';
  const planned = cellState(cellId, n);
  let hash = cellHashOf(planned);
  let revision = 1;
  const replica = new CellReplica(cellId);
  if (replica.applyMessage(JSON.stringify({ cellId, revision, hash, state: planned }), 'snapshot') !== 'applied') throw new Error('snapshot refused');
  const plane = new NftDataplane({ overlayCidr: OVERLAY, netns: ns });
  let errors = 0;
  const converger = new Converger({
    cellId,
    overlayCidr: OVERLAY,
    subnets: [],
    driftIntervalMs: DRIFT_MS,
    dataplane: plane,
    found: await plane.found(),
    feed: {
      get view() {
        const r = replica;
        return { cellId, revision: r.revision, hash: r.hash, state: r.state, namesSeq: r.namesSeq, verified: r.verified };
      },
    },
    log: silentLogger(),
    metrics: new Registry(),
    passed: async (p) => void (p.error && errors++),
  });
  await converger.start();
  const change = async (ops: CellOp[]): Promise<number> => {
    const prev = revision++;
    hash = applyCellOps(planned, hash, ops);
    const data = JSON.stringify({ cellId, revision, prevRevision: prev, ops, hash, at: new Date().toISOString() });
    const want = revision;
    const t0 = performance.now();
    if (replica.applyMessage(data, 'delta') !== 'applied') throw new Error('delta refused');
    converger.schedule();
    await converger.enforced.until((e) => e.revision >= want, 60_000, `revision ${want}`);
    const ms = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 5 + ((want * 7) % 20))); // changes at irregular times against the drift ticks
    return ms;
  };
  const ingress = () => ({ ...planned.ingress.d0 });
  const adds: number[] = [];
  for (let k = 0; k < INCREMENTAL; k++) {
    const rules = ingress();
    rules[`p${k}|tcp|8080|8080`] = { sourceAppId: `p${k}`, protocol: 'tcp', startPort: 8080, endPort: 8080 };
    adds.push(
      await change([
        { path: ['sources', `p${k}`], value: { [ip(61440 + k)]: true } },
        { path: ['ingress', 'd0'], value: rules },
      ]),
    );
  }
  const removes: number[] = [];
  for (let k = INCREMENTAL - 1; k >= 0; k--) {
    const rules = ingress();
    delete rules[`p${k}|tcp|8080|8080`];
    removes.push(await change([{ path: ['sources', `p${k}`] }, { path: ['ingress', 'd0'], value: rules }]));
  }
  await converger.stop();
  // The raw limit on the same table: one element added, then deleted, by a bare `nft` (as the driver runs it).
  const nft = (...args: string[]) => run('ip', ['netns', 'exec', ns, 'nft', ...args]);
  const bareAdds: number[] = [];
  const bareDeletes: number[] = [];
  for (let k = 0; k < INCREMENTAL; k++) {
    const element = `{ ${ip(61440 + k)} . ${ip(1)} . 8080 }`;
    bareAdds.push(await time(() => nft('add', 'element', 'inet', 'netfold', 'allow_tcp', element)));
    bareDeletes.push(await time(() => nft('delete', 'element', 'inet', 'netfold', 'allow_tcp', element)));
  }
  return { adds, removes, bareAdds, bareDeletes, errors, loads: plane.loads };
}

const median = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
const summary = (xs: number[]) => {
  const sorted = [...xs].sort((a, b) => a - b);
  const r = (x: number) => Math.round(x * 10) / 10;
  return `${r(percentile(sorted, 50))} / ${r(percentile(sorted, 99))} / ${r(sorted[sorted.length - 1]!)}`;
};
const time = async (fn: () => Promise<unknown>) => {
  const t0 = performance.now();
  await fn();
  return performance.now() - t0;
};
const results: Record<string, string | number> = {};
try {
  for (const n of SIZES) {
    progress(`${n} tuples`);
    const rules = ruleSet(n);
    const file = join(dir, `rules-${n}.nft`);
    writeFileSync(file, renderNft(rules, OVERLAY));
    const bare: number[] = [];
    const driver: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      bare.push(await time(() => run('ip', ['netns', 'exec', ns, 'nft', '-f', file])));
      const plane = new NftDataplane({ overlayCidr: OVERLAY, netns: ns });
      driver.push(await time(() => plane.apply(rules)));
      await plane.drifted(); // (a driver that lists the table after a load: that listing finishes outside the timing)
    }
    results[`${n} tuples: bare nft -f, median (ms)`] = Math.round(median(bare));
    results[`${n} tuples: driver apply (render + load), median (ms)`] = Math.round(median(driver));
    results[`${n} tuples: driver / bare`] = Math.round((median(driver) / median(bare)) * 100) / 100;

    progress(`${n} tuples: ${INCREMENTAL} one-tuple changes end to end`);
    const inc = await oneTupleChanges(n);
    results[`${n} tuples: one-tuple policy add, delta → enforced, p50 / p99 / max (ms)`] = summary(inc.adds);
    results[`${n} tuples: one-tuple policy delete, delta → enforced, p50 / p99 / max (ms)`] = summary(inc.removes);
    results[`${n} tuples: bare nft add element, p50 / p99 / max (ms)`] = summary(inc.bareAdds);
    results[`${n} tuples: bare nft delete element, p50 / p99 / max (ms)`] = summary(inc.bareDeletes);
    results[`${n} tuples: loads (whole / incremental), failed passes`] = `${JSON.stringify(inc.loads)}, ${inc.errors}`;
  }

  progress('memory driver');
  const state: CellState = emptyCellState();
  for (let d = 0; d < 50; d++) {
    state.containers[`c${d}`] = { appId: `dst${d}`, appName: `dst${d}`, instanceIndex: 0, ip: ip(1 + d) };
    state.ingress[`dst${d}`] = { [`src${d}|tcp|8080|8080`]: { sourceAppId: `src${d}`, protocol: 'tcp', startPort: 8080, endPort: 8080 } };
    state.sources[`src${d}`] = Object.fromEntries(Array.from({ length: 20 }, (_, k) => [ip(1000 + d * 20 + k), true as const]));
  }
  const mem = new MemoryDataplane(OVERLAY);
  const rounds = 2000;
  const ms = await time(async () => {
    for (let i = 0; i < rounds; i++) await mem.apply(expandRules(state));
  });
  results['memory driver: expand + apply of a 1,000-tuple cell (applies/s)'] = Math.round(rounds / (ms / 1000));
  // the agent's path since the expander keeps its expansion: one source IP more or less, then the difference applied
  const expander = new RuleExpander();
  await mem.apply(expander.expand(state));
  const changeMs = await time(async () => {
    for (let i = 0; i < rounds; i++) {
      const ips = { ...state.sources.src0 };
      if (i % 2 === 0) ips[ip(60000)] = true;
      else delete ips[ip(60000)];
      state.sources.src0 = ips;
      if (!(await mem.change(expander.update(state)!))) throw new Error('difference refused');
    }
  });
  results['memory driver: one-tuple change of that cell, expander update + change (changes/s)'] = Math.round(rounds / (changeMs / 1000));
} finally {
  await run('ip', ['netns', 'del', ns]).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify({ machine: machine(), loadavg: (await import('node:os')).loadavg().map((x) => Math.round(x * 100) / 100), results }, null, 2));
console.log(['', '| measurement | figure |', '|---|---|', ...Object.entries(results).map(([k, v]) => `| ${k} | ${v} |`)].join('\n'));
