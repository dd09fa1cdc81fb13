// npm run bench:egress — egress rules (application security groups), 1,000 groups x 10 rules bound across spaces.
//   1. One cell (needs root: nftables in a network namespace of its own) hosting a container of each of 100 spaces, so
//      every group applies there (10,000 rules): the agent's whole load of its egress table (plan, render, nft) next
//      to a bare `nft -f` of the same text; then changes through the agent's enforcer — a group's rules changed, a
//      group bound to one more space, a container started — each next to a bare `nft -f` of the same transaction.
//   2. 1,000 cells on the memory dataplane (like bench:scale): a nats-server, the policy-writer, a planner and the
//      cell agents (bench/scale-agents.ts with BENCH_EGRESS=1) as their own processes; 1,000 groups created and
//      bound through the real gateway; then group changes (rules updated, a space bound) one at a time: from the
//      HTTP request to every affected cell (each cell the planner sent a delta for that revision) reporting it
//      applied, p50/p99.
// Env: BENCH_GROUPS (1000), BENCH_RULES (10), BENCH_SPACES (100), BENCH_RUNS (5), BENCH_CHANGES (100),
// BENCH_CELLS (1000), BENCH_CONTAINERS (5000), BENCH_AGENT_PROCS (4), BENCH_SCALE_CHANGES (50), BENCH_GLOBAL_CHANGES (20),
// BENCH_PART (both|cell|scale). Last, a globally enabled group's rules changed: every cell running a container applies it.
import { mkdtempSync, rmSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import type { DomainEvent, RecordedEvent } from '../events/catalogue.ts';
import type { EgressRule } from '../events/security-groups.ts';
import { type Model, foldEventsInPlace, initialModel } from '../projections/model.ts';
import { type CellState, SECTIONS, deriveCellState } from '../projections/cell.ts';
import { canonicalJson } from '../projections/canonical.ts';
import { EgressEnforcer, NftEgressDriver, planEgress, renderEgressDiff, renderEgressTable } from '../services/cell-agent/egress.ts';
import { run } from '../services/cell-agent/dataplane.ts';
import { eventSubject, CELL_STATUS_BUCKET, intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { connectBus } from '../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { kvLayout } from '../runtime/nats-adapter.ts';
import { silentLogger } from '../runtime/logger.ts';
import { mintToken } from '../runtime/tokens.ts';
import { InboxRequester } from '../runtime/inbox-requester.ts';
import { enforcementOf } from '../services/topology-planner/enforcement.ts';
import { envNumber, freePort, machine, percentile, pool, progress, startBenchServer, startChild, stopChild } from './lib.ts';

const GROUPS = envNumber('BENCH_GROUPS', 1000);
const RULES = envNumber('BENCH_RULES', 10);
const SPACES = envNumber('BENCH_SPACES', 100);
const RUNS = envNumber('BENCH_RUNS', 5);
const CHANGES = envNumber('BENCH_CHANGES', 100);
const CELLS = envNumber('BENCH_CELLS', 1000);
const CONTAINERS = envNumber('BENCH_CONTAINERS', 5000);
const AGENT_PROCS = envNumber('BENCH_AGENT_PROCS', 4);
const SCALE_CHANGES = envNumber('BENCH_SCALE_CHANGES', 50);
const GLOBAL_CHANGES = envNumber('BENCH_GLOBAL_CHANGES', 20);
const PART = process.env.BENCH_PART ?? 'both';
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const summary = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return { samples: s.length, p50: round(percentile(s, 50)), p99: round(percentile(s, 99)), max: round(s[s.length - 1] ?? NaN) };
};
const median = (xs: number[]) =>
  round(
    percentile(
      [...xs].sort((a, b) => a - b),
      50,
    ),
  );

/** Group g's ten rules: tcp/udp/icmp/all, CIDRs, ranges and comma lists, port lists and ranges, one rule logged. */
function rulesOf(g: number, variant = 0): EgressRule[] {
  const a = (g >> 8) & 255;
  const b = g & 255;
  const all: EgressRule[] = [
    { protocol: 'tcp', destination: `100.${a}.${b}.0/24`, ports: `${443 + variant}` },
    { protocol: 'tcp', destination: `100.64.${a}.${b}-100.64.${a}.${Math.min(b + 9, 255)}`, ports: '8000-9000,443' },
    { protocol: 'udp', destination: `192.0.2.${b}`, ports: '53' },
    { protocol: 'icmp', destination: `198.51.${a}.${b}`, type: 8, code: -1 },
    { protocol: 'all', destination: `198.18.${a}.${b}` },
    { protocol: 'tcp', destination: `172.16.${a}.${b},172.17.${a}.${b},172.18.${a}.0/28`, ports: '5432,6379,27017' },
    { protocol: 'tcp', destination: `203.0.${a}.${b}`, ports: '80,443', log: true },
    { protocol: 'udp', destination: `100.100.${a}.0/24`, ports: '123,514' },
    { protocol: 'tcp', destination: `100.101.${a}.${b}/32`, ports: '1-1024' },
    { protocol: 'icmp', destination: `100.102.${a}.0/24`, type: 0, code: 0 },
  ];
  return all.slice(0, RULES);
}

const groupId = (g: number) => `g${g}`;
const spaceOf = (g: number) => `s${g % SPACES}`;

/** The spaces each group is bound to (running), to bind it to one more each time. */
const boundSpaces = new Map<number, Set<string>>();
function nextSpace(g: number): string {
  const bound = boundSpaces.get(g) ?? boundSpaces.set(g, new Set([spaceOf(g)])).get(g)!;
  for (let k = 1; k <= SPACES; k++) {
    const s = `s${(g + k) % SPACES}`;
    if (!bound.has(s)) {
      bound.add(s);
      return s;
    }
  }
  throw new Error(`group ${g} is bound to every space already`);
}

// ---- part 1: one cell, nftables -------------------------------------------------------------------------------------

async function cellPart(): Promise<Record<string, unknown>> {
  if (process.getuid?.() !== 0) throw new Error('bench:egress (cell part) needs root: BENCH_PART=scale skips it');
  const ns = `nfegress${process.pid}`;
  await run('ip', ['netns', 'add', ns]);
  try {
    const m: Model = initialModel();
    let seq = 0;
    const fold = (events: DomainEvent[]) => {
      const recs: RecordedEvent[] = events.map((e) => ({
        seq: ++seq,
        subject: eventSubject.securityGroup('x'),
        event: { ...e, id: '01JB0000000000000000000000', at: new Date(0).toISOString(), actor: 'user:bench', correlationId: 'bench' },
      }));
      foldEventsInPlace(m, recs);
    };
    const events: DomainEvent[] = [{ type: 'CellRegistered', v: 2, data: { cellId: 'cell-1', subnet: '10.255.1.0/24', underlay: null, leased: false } }];
    for (let s = 0; s < SPACES; s++) {
      events.push({ type: 'AppRegistered', v: 1, data: { appId: `app-${s}`, name: `a${s}`, spaceId: `s${s}`, orgId: 'o' } });
      events.push({
        type: 'ContainerStarted',
        v: 2,
        data: { containerId: `c-${s}`, appId: `app-${s}`, instanceIndex: 0, cellId: 'cell-1', ip: `10.255.1.${2 + s}`, lifecycle: 'running' },
      });
    }
    for (let g = 0; g < GROUPS; g++) {
      events.push({
        type: 'SecurityGroupCreated',
        v: 1,
        data: {
          groupId: groupId(g),
          name: `group-${g}`,
          rules: rulesOf(g),
          globallyEnabled: { running: false, staging: false },
          runningSpaces: [spaceOf(g)],
          stagingSpaces: [],
        },
      });
    }
    fold(events);
    // The agent's state changes entry by entry (its feed's replica replaces only the entries a delta names): the
    // derived state is handed over the same way, unchanged entries keeping their objects.
    let held: CellState | undefined;
    const state = (): CellState => {
      const next = deriveCellState(m, 'cell-1');
      if (held) {
        for (const section of SECTIONS) {
          const was = held[section] as Record<string, unknown>;
          const now = next[section] as Record<string, unknown>;
          for (const key of Object.keys(now)) if (was[key] !== undefined && canonicalJson(was[key]) === canonicalJson(now[key])) now[key] = was[key];
        }
      }
      return (held = next);
    };
    const subnets = ['10.255.1.0/24'];
    const plan = planEgress(state(), subnets);
    const rules = [...plan.groups.values()].reduce((n, g) => n + g.rules.length, 0);
    progress(`cell: ${plan.groups.size} groups, ${rules} rules, ${plan.bindings.size} containers`);
    const nft = (text: string) => run('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], text);
    const table = renderEgressTable(plan, '10.255.0.0/16', 'deny');

    // whole loads: the agent's enforcer (from its state: plan, render, nft) and a bare nft -f of the same text
    const agentWhole: number[] = [];
    const bareWhole: number[] = [];
    for (let r = 0; r < RUNS; r++) {
      await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'netfold_egress']).catch(() => undefined);
      const enforcer = new EgressEnforcer({ overlayCidr: '10.255.0.0/16', egressDefault: 'deny', driver: new NftEgressDriver(ns) });
      const s = state();
      let t0 = performance.now();
      await enforcer.converge(s, subnets);
      agentWhole.push(performance.now() - t0);
      await run('ip', ['netns', 'exec', ns, 'nft', 'delete', 'table', 'inet', 'netfold_egress']);
      t0 = performance.now();
      await nft(table);
      bareWhole.push(performance.now() - t0);
    }

    // changes through one enforcer, each next to a bare nft -f of the same transaction (idempotent: flush + refill,
    // add element), so the kernel and the enforcer stay in step
    const enforcer = new EgressEnforcer({ overlayCidr: '10.255.0.0/16', egressDefault: 'deny', driver: new NftEgressDriver(ns) });
    await enforcer.converge(state(), subnets);
    const timed = async (events: DomainEvent[]) => {
      const before = enforcer.applied!;
      fold(events);
      const s = state(); // the planner's work, not the agent's: not timed
      const t0 = performance.now();
      const how = await enforcer.converge(s, subnets);
      const agentMs = performance.now() - t0;
      if (how !== 'incremental') throw new Error(`expected an incremental change, got ${how}`);
      const text = renderEgressDiff(before, enforcer.applied!)!;
      const t1 = performance.now();
      await nft(text);
      return { agentMs, bareMs: performance.now() - t1, lines: text.split('\n').length - 1 };
    };
    const kinds: Record<string, { agent: number[]; bare: number[]; lines: number }> = {};
    const record = (kind: string, r: { agentMs: number; bareMs: number; lines: number }) => {
      const k = (kinds[kind] ??= { agent: [], bare: [], lines: r.lines });
      k.agent.push(r.agentMs);
      k.bare.push(r.bareMs);
    };
    for (let i = 0; i < CHANGES; i++) {
      const g = (i * 37) % GROUPS;
      record(
        "a group's rules changed",
        await timed([
          {
            type: 'SecurityGroupUpdated',
            v: 1,
            data: { groupId: groupId(g), name: `group-${g}`, rules: rulesOf(g, i + 1), globallyEnabled: { running: false, staging: false } },
          },
        ]),
      );
      record(
        'a group bound to one more space',
        await timed([{ type: 'SecurityGroupSpacesBound', v: 1, data: { groupId: groupId(g), lifecycle: 'running', spaceIds: [nextSpace(g)] } }]),
      );
      const s = i % SPACES;
      record(
        'a container started',
        await timed([
          {
            type: 'ContainerStarted',
            v: 2,
            data: { containerId: `n-${i}`, appId: `app-${s}`, instanceIndex: 1 + i, cellId: 'cell-1', ip: `10.255.1.${110 + (i % 140)}`, lifecycle: 'running' },
          },
        ]),
      );
      fold([{ type: 'ContainerStopped', v: 1, data: { containerId: `n-${i}`, appId: `app-${s}`, cellId: 'cell-1', wasRunning: true } }]);
      await enforcer.converge(state(), subnets);
    }
    const out: Record<string, unknown> = {
      cell: { groups: plan.groups.size, rules, containers: plan.bindings.size, tableBytes: table.length },
      'whole load, agent (ms, median)': median(agentWhole),
      'whole load, bare nft -f of the same text (ms, median)': median(bareWhole),
      'whole loads (agent / bare, ms)': { agent: agentWhole.map((x) => round(x)), bare: bareWhole.map((x) => round(x)) },
      'whole loads of the agent in this part': enforcer.loads.full,
    };
    for (const [kind, k] of Object.entries(kinds)) {
      out[`${kind}: agent (ms)`] = summary(k.agent);
      out[`${kind}: bare nft -f of the same ${k.lines}-line transaction (ms)`] = summary(k.bare);
    }
    return out;
  } finally {
    await run('ip', ['netns', 'del', ns]).catch(() => undefined);
  }
}

// ---- part 2: 1,000 cells, memory dataplane, real NATS -----------------------------------------------------------------

const SECRET = 'bench-secret-bench-secret-bench-secret';
const OVERLAY = '10.0.0.0/8';
const subnetOf = (k: number) => `10.${(k >> 8) & 255}.${k & 255}.0/24`;

async function scalePart(): Promise<Record<string, unknown>> {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-bench-'));
  const { server } = await startBenchServer(dir);
  const log = silentLogger();
  const bus = await connectBus({ servers: server.url, name: 'bench-egress', log });
  await ensureTopology(bus.jsm, defaultTopologyOptions, log);
  const children: ChildProcess[] = [];
  try {
    const deltaCells = new Map<number, Set<string>>();
    const deltaSub = bus.nc.subscribe('nf.cell.delta.*', {
      callback: (_e, msg) => {
        const d = msg.json<{ cellId: string; revision: number }>();
        let cells = deltaCells.get(d.revision);
        if (!cells) deltaCells.set(d.revision, (cells = new Set()));
        cells.add(d.cellId);
      },
    });
    const applied = new Map<string, number>();
    /** Per cell, when each higher revision was first reported applied: [revision, time]. */
    const appliedLog = new Map<string, [number, number][]>();
    const waiters = new Set<() => void>();
    const statusSub = bus.nc.subscribe(kvLayout.subject(CELL_STATUS_BUCKET, '>'), {
      callback: (_e, msg) => {
        const s = msg.json<{ cellId: string; revision: number }>();
        if (s.revision > (applied.get(s.cellId) ?? -1)) {
          applied.set(s.cellId, s.revision);
          let l = appliedLog.get(s.cellId);
          if (!l) appliedLog.set(s.cellId, (l = []));
          l.push([s.revision, performance.now()]);
        }
        for (const w of waiters) w();
      },
    });
    const appliedAt = (cellId: string, revision: number) => appliedLog.get(cellId)?.find(([r]) => r >= revision)?.[1] ?? NaN;
    const httpPort = await freePort();
    const baseEnv = { NATS_URL: server.url, NETFOLD_LOG_LEVEL: 'warn', NETFOLD_OVERLAY_CIDR: OVERLAY };
    progress(`scale: starting the writer, a planner and ${CELLS} agents (egress on, memory) in ${AGENT_PROCS} processes`);
    children.push(
      await startChild(
        'services/policy-writer/main.ts',
        { ...baseEnv, NETFOLD_LOG_LEVEL: 'info', NETFOLD_TOKEN_SECRET: SECRET, NETFOLD_HTTP_PORT: String(httpPort) },
        'policy-writer-started',
      ),
    );
    children.push(
      await startChild('services/topology-planner/main.ts', { ...baseEnv, NETFOLD_LOG_LEVEL: 'info', NETFOLD_METRICS_PORT: '0' }, 'planner-started'),
    );
    const per = Math.ceil(CELLS / AGENT_PROCS);
    const hosts = await Promise.all(
      Array.from({ length: AGENT_PROCS }, (_, a) =>
        startChild(
          'bench/scale-agents.ts',
          { ...baseEnv, BENCH_CELL_FROM: String(a * per), BENCH_CELL_TO: String(Math.min(CELLS, (a + 1) * per)), BENCH_EGRESS: '1' },
          'agents-started',
        ),
      ),
    );
    children.push(...hosts);

    const requester = new InboxRequester(bus.nc);
    const intake = async (command: (typeof intakeCommand)[keyof typeof intakeCommand], body: unknown): Promise<number> => {
      const msg = await requester.request(intakeSubject('bench', command), JSON.stringify(body), { timeoutMs: 60_000 });
      const r = msg.json<{ ok: boolean; revision?: number; error?: string }>();
      if (!r.ok) throw new Error(`${command}: ${r.error}`);
      return r.revision!;
    };
    const token = await mintToken(SECRET, { user: 'bench', scopes: ['network.admin'], spaces: [] }, 7200);
    const gateway = `http://127.0.0.1:${httpPort}`;
    const call = async (method: string, path: string, body: unknown): Promise<{ revision: number; body: any }> => {
      const res = await fetch(`${gateway}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      if (!res.ok) throw new Error(`${method} ${path}: HTTP ${res.status} ${text}`);
      return { revision: Number(res.headers.get('x-netfold-revision')), body: text ? JSON.parse(text) : null };
    };

    progress(`scale: loading ${CELLS} cells, ${SPACES * 10} apps in ${SPACES} spaces, ${CONTAINERS} containers, ${GROUPS} groups x ${RULES} rules`);
    await pool(CELLS, 64, async (k) => void (await intake(intakeCommand.registerCell, { cellId: `cell-${k}`, subnet: subnetOf(k) })));
    const APPS = SPACES * 10;
    await pool(
      APPS,
      64,
      async (i) => void (await intake(intakeCommand.registerApp, { appId: `app-${i}`, name: `a${i}`, spaceId: `s${i % SPACES}`, orgId: 'o' })),
    );
    await pool(CONTAINERS, 64, async (j) => {
      // container j on cell j % CELLS (addresses named: concurrent starts on one cell would race for the next free one)
      const k = j % CELLS;
      const host = 2 + Math.floor(j / CELLS);
      await intake(intakeCommand.startContainer, {
        containerId: `c-${j}`,
        appId: `app-${(j * 7) % APPS}`,
        instanceIndex: Math.floor(j / APPS),
        cellId: `cell-${k}`,
        ip: `10.${(k >> 8) & 255}.${k & 255}.${host}`,
      });
    });
    const guids: string[] = new Array(GROUPS);
    const tGroups = performance.now();
    await pool(GROUPS, 16, async (g) => {
      const r = await call('POST', '/v3/security_groups', {
        name: `group-${g}`,
        rules: rulesOf(g),
        relationships: { running_spaces: { data: [{ guid: spaceOf(g) }] } },
      });
      guids[g] = r.body.guid;
    });
    const groupsMs = performance.now() - tGroups;
    const last = (await bus.jsm.streams.info('NF_EVENTS')).state.last_seq;
    progress(`scale: waiting until revision ${last} is enforced on every cell`);
    const tEnforced = performance.now();
    while (!(await enforcementOf(bus, last)).enforced) {
      if (performance.now() - tEnforced > 600_000) throw new Error(`revision ${last} not enforced everywhere in 10 minutes`);
      await new Promise((r) => setTimeout(r, 250));
    }

    /** One change: from the request to every cell the planner sent a delta for reporting the revision applied. */
    const measure = async (method: string, path: string, body: unknown, expected?: string[]) => {
      const t0 = performance.now();
      const { revision } = await call(method, path, body);
      const acked = performance.now() - t0;
      // the planner's deltas for this revision: every expected cell's, or (none expected) until they stopped arriving
      await waitApplied(() => deltaCells.has(revision), waiters, 30_000, 5);
      if (expected) await waitApplied(() => expected.every((c) => deltaCells.get(revision)!.has(c)), waiters, 60_000, 5);
      let size = -1;
      while (size !== deltaCells.get(revision)!.size) {
        size = deltaCells.get(revision)!.size;
        await new Promise((r) => setTimeout(r, 30));
      }
      const cells = [...deltaCells.get(revision)!];
      await waitApplied(() => cells.every((c) => (applied.get(c) ?? -1) >= revision), waiters, 60_000);
      // done when the last affected cell reported it (not when this loop noticed)
      return { ms: Math.max(...cells.map((c) => appliedAt(c, revision))) - t0, acked, cells: cells.length };
    };
    const updates: { ms: number; acked: number; cells: number }[] = [];
    const binds: { ms: number; acked: number; cells: number }[] = [];
    boundSpaces.clear();
    for (let i = 0; i < SCALE_CHANGES; i++) {
      const g = (i * 37) % GROUPS;
      updates.push(await measure('PATCH', `/v3/security_groups/${guids[g]}`, { rules: rulesOf(g, i + 1) }));
      binds.push(await measure('POST', `/v3/security_groups/${guids[g]}/relationships/running_spaces`, { data: [{ guid: nextSpace(g) }] }));
    }
    // a globally enabled group: a change of its rules reaches every cell running a container
    const global = await call('POST', '/v3/security_groups', { name: 'global', rules: rulesOf(GROUPS), globally_enabled: { running: true } });
    const tGlobal = performance.now();
    while (!(await enforcementOf(bus, global.revision)).enforced) {
      if (performance.now() - tGlobal > 120_000) throw new Error('the global group was not enforced everywhere in 2 minutes');
      await new Promise((r) => setTimeout(r, 100));
    }
    const globals: { ms: number; acked: number; cells: number }[] = [];
    // every cell runs containers (container j is on cell j % CELLS): every cell is affected
    const everyCell = Array.from({ length: Math.min(CELLS, CONTAINERS) }, (_, k) => `cell-${k}`);
    for (let i = 0; i < GLOBAL_CHANGES; i++)
      globals.push(await measure('PATCH', `/v3/security_groups/${global.body.guid}`, { rules: rulesOf(GROUPS, i + 1) }, everyCell));
    deltaSub.unsubscribe();
    statusSub.unsubscribe();
    const cellsOf = (xs: { cells: number }[]) => summary(xs.map((x) => x.cells));
    return {
      sizes: { cells: CELLS, apps: APPS, spaces: SPACES, containers: CONTAINERS, groups: GROUPS, rulesPerGroup: RULES },
      'groups created through the gateway (groups/s)': Math.round((GROUPS / groupsMs) * 1000),
      "a group's rules changed → every affected cell applied (ms)": summary(updates.map((x) => x.ms)),
      "a group's rules changed: HTTP answer (ms)": summary(updates.map((x) => x.acked)),
      "a group's rules changed: affected cells": cellsOf(updates),
      'a group bound to one more space → every affected cell applied (ms)': summary(binds.map((x) => x.ms)),
      'a group bound to one more space: affected cells': cellsOf(binds),
      "a globally enabled group's rules changed → every affected cell applied (ms)": summary(globals.map((x) => x.ms)),
      "a globally enabled group's rules changed: affected cells": cellsOf(globals),
    };
  } finally {
    for (const c of children.reverse()) await stopChild(c);
    await bus.close();
    server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function waitApplied(done: () => boolean, waiters: Set<() => void>, timeoutMs: number, pollMs = 0): Promise<void> {
  if (done()) return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiters.delete(check);
      clearInterval(poll);
      reject(new Error('timed out waiting for the cells'));
    }, timeoutMs);
    const poll = pollMs > 0 ? setInterval(() => check(), pollMs) : undefined;
    function check() {
      if (!done()) return;
      clearTimeout(timer);
      clearInterval(poll);
      waiters.delete(check);
      resolve();
    }
    waiters.add(check);
  });
}

const load0 = loadavg();
const results: Record<string, unknown> = { machine: machine(), 'load average at start (1, 5, 15 min)': load0.map((x) => round(x, 2)) };
if (PART !== 'scale') {
  progress('cell part: one cell, nftables');
  results['one cell, nftables'] = await cellPart();
}
if (PART !== 'cell') {
  progress('scale part: 1,000 cells, memory dataplane');
  results['1,000 cells, memory dataplane'] = await scalePart();
}
results['load average at end (1, 5, 15 min)'] = loadavg().map((x) => round(x, 2));
console.log(JSON.stringify(results, null, 2));
process.exit(0);
