// The pure fold, without NATS: a synthetic in-memory log (the bench:planner replay workload: apps, policies,
// containers on cells, then stop/start churn), folded in batches of 1,000 as the live follower does, then every
// cell's state derived from the model. Three runs. Sizes: BENCH_EVENTS, BENCH_APPS, BENCH_CELLS, BENCH_CONTAINERS,
// BENCH_POLICIES. To compare two versions, run it in a checkout of each, alternating.
import type { RecordedEvent } from '../events/catalogue.ts';
import { deriveCellState } from '../projections/cell.ts';
import { foldEventsInPlace, initialModel } from '../projections/model.ts';
import { envNumber, machine } from './lib.ts';

const EVENTS = envNumber('BENCH_EVENTS', 1_000_000);
const APPS = envNumber('BENCH_APPS', 10_000);
const CELLS = envNumber('BENCH_CELLS', 1000);
const CONTAINERS = envNumber('BENCH_CONTAINERS', 50_000);
const POLICIES = envNumber('BENCH_POLICIES', 10_000);

const ip = (j: number) => `10.${(j >> 16) & 255}.${(j >> 8) & 255}.${j & 255}`;
const at = new Date(0).toISOString();
const recs: RecordedEvent[] = [];
const push = (subject: string, event: Record<string, unknown>) =>
  recs.push({
    seq: recs.length + 1,
    subject,
    event: { id: '01JB0000000000000000000000', v: 1, at, actor: 'platform:bench', correlationId: 'c', ...event } as RecordedEvent['event'],
  });
for (let a = 0; a < APPS; a++) push(`nf.evt.app.app-${a}`, { type: 'AppRegistered', data: { appId: `app-${a}`, name: `a${a}`, spaceId: 's', orgId: 'o' } });
for (let p = 0; p < POLICIES; p++) {
  push(`nf.evt.policy.app-${p % APPS}`, {
    type: 'PoliciesCreated',
    data: { sourceAppId: `app-${p % APPS}`, policies: [{ destAppId: `app-${(p * 7 + 1) % APPS}`, protocol: 'tcp', startPort: 8080, endPort: 8080 }] },
  });
}
const start = (j: number, app: number, cell: number) =>
  push(`nf.evt.container.c-${j}`, {
    type: 'ContainerStarted',
    data: { containerId: `c-${j}`, appId: `app-${app}`, instanceIndex: Math.floor(j / APPS), cellId: `cell-${cell}`, ip: ip(j) },
  });
for (let j = 0; j < CONTAINERS; j++) start(j, j % APPS, j % CELLS);
for (let k = 0, fresh = CONTAINERS; recs.length < EVENTS; k++, fresh++) {
  push(`nf.evt.container.c-${k}`, {
    type: 'ContainerStopped',
    data: { containerId: `c-${k}`, appId: `app-${k % APPS}`, cellId: `cell-${k % CELLS}`, wasRunning: true },
  });
  start(fresh, k % APPS, k % CELLS);
}

const runs = [];
for (let run = 0; run < 3; run++) {
  const m = initialModel();
  const t0 = performance.now();
  for (let i = 0; i < recs.length; i += 1000) foldEventsInPlace(m, recs.slice(i, i + 1000));
  const t1 = performance.now();
  for (let c = 0; c < CELLS; c++) deriveCellState(m, `cell-${c}`);
  const t2 = performance.now();
  runs.push({ 'fold (events/s)': Math.round(recs.length / ((t1 - t0) / 1000)), 'derive every cell (ms)': Math.round(t2 - t1) });
}
console.log(JSON.stringify({ machine: machine(), sizes: { EVENTS: recs.length, APPS, CELLS, CONTAINERS, POLICIES }, runs }, null, 2));
