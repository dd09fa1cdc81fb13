// `npm run bench:scale` at a small size, as CI's smoke test: the whole system as separate processes (nats-server,
// policy-writer, planner, discovery, two agent hosts of 25 cells each), loaded and churned through the real gateway
// and intake, once with agents following their streams and once polling (the baseline). Correctness only: every
// change reached every cell it affects, every cell converged to the planner's hash, the system says the last
// revision is enforced, and a fresh replay of the log agrees. No timing is asserted.
import t from 'tap';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

type Summary = { samples: number; unconverged?: number; unresolved?: number };
type Run = {
  mode: string;
  results: Record<string, unknown>;
  check: { cells: number; converged: number; enforced: boolean; replayOk: boolean; differing: string[]; withoutStatus: string[] };
};

t.test('bench:scale smoke run: every cell converges to the planner, stream and poll', async (t) => {
  const env = {
    ...process.env,
    BENCH_CELLS: '50',
    BENCH_APPS: '200',
    BENCH_CONTAINERS: '2000',
    BENCH_POLICIES: '400',
    BENCH_DURATION_S: '4',
    BENCH_CHURN: '10',
    BENCH_POLICY_RATE: '8',
    BENCH_DNS_EVERY: '2',
    BENCH_RAW_MSGS: '5000',
    BENCH_BASELINE: '1',
    BENCH_BASELINE_POLL_MS: '300',
    BENCH_CONVERGE_TIMEOUT_S: '60',
    BENCH_FORMAT: 'json',
  };
  const { stdout } = await run(process.execPath, ['--import', 'tsx', 'bench/scale.ts'], { env, timeout: 170_000, maxBuffer: 16 << 20 });
  const doc = JSON.parse(stdout) as { runs: Run[] };
  t.equal(doc.runs.length, 2, 'a stream run and a poll baseline');
  t.match(doc.runs[0]!.mode, /stream/);
  t.match(doc.runs[1]!.mode, /poll every 300 ms/);
  for (const r of doc.runs) {
    t.equal(r.check.cells, 50, `${r.mode}: all 50 cells have planned state`);
    t.equal(r.check.converged, 50, `${r.mode}: every cell applied the planner's latest hash`);
    t.ok(r.check.enforced, `${r.mode}: the system reports the last revision enforced`);
    t.ok(r.check.replayOk, `${r.mode}: a fresh replay agrees with planner and agents`);
    t.same(r.check.differing, [], `${r.mode}: no cell differs`);
    t.same(r.check.withoutStatus, [], `${r.mode}: every cell reported a status`);
    t.equal(r.results['churn: commands failed'], 0, `${r.mode}: no command failed`);
    for (const key of ['policy add → every affected cell applied (ms)', 'container start → every affected cell applied (own cell and peers) (ms)']) {
      const s = r.results[key] as Summary;
      t.ok(s.samples > 0, `${r.mode}: ${key}: measured`);
      t.equal(s.unconverged, 0, `${r.mode}: ${key}: every sample reached all of its cells`);
    }
    const dns = r.results['container start → DNS name answers (ms)'] as Summary;
    t.ok(dns.samples > 0, `${r.mode}: DNS answers measured`);
    t.equal(dns.unresolved, 0, `${r.mode}: every started container's name answered`);
  }
});
