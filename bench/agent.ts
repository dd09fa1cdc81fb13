// npm run bench:agent — the cell agent's dataplane: whole-table apply time for 1k/10k/100k-tuple rule sets next to
// a bare `nft -f` of the same file in the same run, incremental change latency, and the memory driver's apply rate.
// Needs root (it programs nftables in a network namespace of its own); sizes: BENCH_SIZES (1000,10000,100000),
// BENCH_RUNS (5), BENCH_INCREMENTAL (20).
import { writeFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryDataplane, NftDataplane, run } from '../services/cell-agent/dataplane.ts';
import { type Allow, type RuleSet, expandRules, normalizeAllows, renderNft } from '../services/cell-agent/rules.ts';
import { type CellState, emptyCellState } from '../projections/cell.ts';
import { envNumber, machine, percentile, progress } from './lib.ts';

if (process.getuid?.() !== 0) {
  console.error('bench:agent needs root (nftables in a network namespace)');
  process.exit(1);
}
const SIZES = (process.env.BENCH_SIZES ?? '1000,10000,100000').split(',').map(Number);
const RUNS = envNumber('BENCH_RUNS', 5);
const INCREMENTAL = envNumber('BENCH_INCREMENTAL', 20);
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
const median = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );
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
      await plane.drifted(); // lets its baseline listing finish outside the timing
    }
    results[`${n} tuples: bare nft -f, median (ms)`] = Math.round(median(bare));
    results[`${n} tuples: driver apply (render + load), median (ms)`] = Math.round(median(driver));
    results[`${n} tuples: driver / bare`] = Math.round((median(driver) / median(bare)) * 100) / 100;

    const plane = new NftDataplane({ overlayCidr: OVERLAY, netns: ns });
    await plane.apply(rules, { revision: 1, hash: 'ab'.repeat(16) });
    const inc: number[] = [];
    let current = rules;
    for (let k = 0; k < INCREMENTAL; k++) {
      const next: RuleSet = {
        ...current,
        allows: [
          ...current.allows,
          { src: ip(60000 + k), dst: ip(1), protocol: 'tcp', startPort: 8080, endPort: 8080, srcApp: 'app-new', dstApp: 'app-d1', policy: 'tcp/8080' },
        ],
      };
      inc.push(await time(() => plane.apply(next, { revision: k + 2, hash: 'ab'.repeat(16) })));
      current = next;
      await plane.drifted();
    }
    results[`${n} tuples: incremental change of one tuple, p50 / max (ms)`] =
      `${Math.round(median(inc) * 10) / 10} / ${Math.round(Math.max(...inc) * 10) / 10}`;
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
} finally {
  await run('ip', ['netns', 'del', ns]).catch(() => undefined);
  rmSync(dir, { recursive: true, force: true });
}
console.log(JSON.stringify({ machine: machine(), results }, null, 2));
console.log(['', '| measurement | figure |', '|---|---|', ...Object.entries(results).map(([k, v]) => `| ${k} | ${v} |`)].join('\n'));
