// Test harness for faults (issue "Availability under faults"): the whole system on a 3-node cluster
// (test/harness/cluster.ts), each service its own process signed in with its role — the policy-writer (HTTP gateway
// and NATS intake), planners, one cell agent per cell on the memory dataplane — plus a load through the real intake
// paths and the checks every fault must pass:
//   - ChaosLoad: container starts and stops over NATS intake, policy creates and deletes over HTTP, each with its own
//     request id (the events' correlation id) and retried with that same id until acknowledged. A retry of a command
//     the log already holds is decided again as a repeat and appends nothing (the deciders are idempotent, and an
//     append carries the aggregate's expected sequence), so "exactly once" is checkable: every acknowledged
//     command's request id names exactly one event of its type in the log.
//   - checkLog: reads the log back and counts lost and duplicated commands.
//   - convergenceOf: the log replayed (cli/operators.ts `replay`) agrees with the planners' latest output on every
//     cell, every agent has applied that hash, and the system's own answer says the log's last revision is enforced.
// Used by test/chaos.test.ts (correctness) and bench/chaos.ts (timings).
import { newId } from '../../runtime/ids.ts';
import type { Bus } from '../../runtime/nats.ts';
import { EventLog } from '../../runtime/event-log.ts';
import { mintToken } from '../../runtime/tokens.ts';
import { CELL_STATUS_BUCKET, EVENTS_STREAM, PLANNER_MEMBERS_BUCKET, intakeCommand, intakeSubject } from '../../runtime/subjects.ts';
import { isNoMessageFound, kvLayout } from '../../runtime/nats-adapter.ts';
import { latestPlanned } from '../../services/topology-planner/published.ts';
import type { IntakeReply } from '../../services/policy-writer/intake.ts';
import { enforcementOf, plannerProgress } from '../../services/topology-planner/enforcement.ts';
import { kvLatestEntries } from '../../runtime/buckets.ts';
import { replay } from '../../cli/operators.ts';
import { DEFAULT_DOMAIN } from '../../projections/cell.ts';
import { CELL_DELTAS_STREAM, EMPTY_CELL_HASH, cellSubject, revisionOf } from '../../projections/cell-stream.ts';
import { DeliverPolicy } from '@nats-io/jetstream';
import type { ClusterFixture } from './cluster.ts';
import { spawnService, type ServiceProcess } from './processes.ts';

const SECRET = 'chaos-secret-0123456789abcdef0123456789abcdef';
const CALLER = 'chaos';
const POLICIES = '/networking/v1/external/policies';

export type ChaosSystemOptions = {
  cells?: number;
  apps?: number;
  /** Planner ids, each its own process (default p1 and p2: one can take over the other's cells). */
  planners?: string[];
  logLevel?: string;
};

export type ChaosSystem = {
  cluster: ClusterFixture;
  /** An admin connection (reads the log, the buckets and the streams). */
  bus: Bus;
  /** The platform component's connection, for intake. */
  platform: Bus;
  httpUrl: string;
  token: string;
  cells: string[];
  apps: string[];
  writer: ServiceProcess;
  planners: Map<string, ServiceProcess>;
  agents: Map<string, ServiceProcess>;
  /** Every service process started so far, killed or not, with its log lines. */
  history: ServiceProcess[];
  startPlanner(id: string): Promise<ServiceProcess>;
  startAgent(cellId: string): Promise<ServiceProcess>;
  /** The server holding the writer's log consumer (its ordered consumer: the latest of the names it started with). */
  writerConsumerServer(): Promise<string | undefined>;
  stop(): Promise<void>;
};

const subnetOf = (k: number) => `10.255.${k}.0/24`;

/** Retries an intake command (same body, same request id) until answered with ok, or a non-retryable refusal. */
async function intakeUntilDone(platform: Bus, command: keyof typeof intakeCommand, body: object, deadlineMs = 120_000): Promise<IntakeReply> {
  const deadline = Date.now() + deadlineMs;
  for (let delay = 200; ; delay = Math.min(delay * 2, 2000)) {
    try {
      const msg = await platform.nc.request(intakeSubject(CALLER, intakeCommand[command]), JSON.stringify(body), { timeout: 15_000 });
      const reply = msg.json<IntakeReply>();
      if (reply.ok || !reply.retryable) return reply;
    } catch {
      // no answer (the writer waiting on NATS, or no responders): send again
    }
    if (Date.now() > deadline) throw new Error(`intake ${command} ${JSON.stringify(body)}: no answer within ${deadlineMs} ms`);
    await new Promise((r) => setTimeout(r, delay));
  }
}

export async function startChaosSystem(cluster: ClusterFixture, opts: ChaosSystemOptions = {}): Promise<ChaosSystem> {
  const cellCount = opts.cells ?? 3;
  const cells = Array.from({ length: cellCount }, (_, i) => `cell-${i + 1}`);
  const apps = Array.from({ length: opts.apps ?? 8 }, (_, i) => `app-${i}`);
  const bus = await cluster.connect('chaos-admin');
  const platform = await cluster.connectAs(`platform_${CALLER}`);
  const history: ServiceProcess[] = [];
  const base = { NATS_URL: cluster.urls.join(','), NETFOLD_REPLICAS: '3', NETFOLD_LOG_LEVEL: opts.logLevel ?? 'info', NETFOLD_METRICS_PORT: '0' };
  const started = (p: ServiceProcess) => {
    history.push(p);
    return p;
  };
  const planners = new Map<string, ServiceProcess>();
  const agents = new Map<string, ServiceProcess>();
  let writer: ServiceProcess | undefined;
  const stop = async () => {
    for (const p of [...agents.values(), ...planners.values()]) await p.stop();
    await writer?.stop();
    for (const p of history) await p.kill();
  };
  try {
    // the writer first, alone on the log: the consumer it creates is the only new one (its name prefix is kept
    // across the ordered consumer's resets)
    const before = new Set(await cluster.consumerNames(EVENTS_STREAM));
    const httpPort = await freeTcpPort();
    writer = started(
      await spawnService(
        'policy-writer',
        'services/policy-writer/main.ts',
        {
          ...base,
          NATS_CREDS: await cluster.credsFile('writer'),
          NETFOLD_HTTP_HOST: '127.0.0.1',
          NETFOLD_HTTP_PORT: String(httpPort),
          NETFOLD_TOKEN_SECRET: SECRET,
        },
        'policy-writer-started',
      ),
    );
    const mine = (await cluster.consumerNames(EVENTS_STREAM)).filter((n) => !before.has(n));
    if (mine.length !== 1) throw new Error(`expected one new consumer of ${EVENTS_STREAM} for the writer, found ${JSON.stringify(mine)}`);
    const writerPrefix = mine[0]!.slice(0, mine[0]!.lastIndexOf('_') + 1);

    for (const [k, cellId] of cells.entries()) {
      const r = await intakeUntilDone(platform, 'registerCell', { cellId, subnet: subnetOf(k + 1), requestId: `setup-${cellId}` });
      if (!r.ok) throw new Error(`registering ${cellId}: ${r.code}`);
    }
    for (const appId of apps) {
      const r = await intakeUntilDone(platform, 'registerApp', { appId, name: appId, spaceId: 's1', orgId: 'o1', requestId: `setup-${appId}` });
      if (!r.ok) throw new Error(`registering ${appId}: ${r.code}`);
    }

    const system: ChaosSystem = {
      cluster,
      bus,
      platform,
      httpUrl: `http://127.0.0.1:${httpPort}`,
      token: await mintToken(SECRET, { user: 'chaos', scopes: ['network.admin'], spaces: [] }, 3600 * 4),
      cells,
      apps,
      writer,
      planners,
      agents,
      history,
      async startPlanner(id) {
        const running = planners.get(id)?.child;
        if (running && running.exitCode === null && running.signalCode === null) throw new Error(`planner ${id} is running`);
        const env = { ...base, NATS_CREDS: await cluster.credsFile('planner'), NETFOLD_PLANNER_ID: id, NETFOLD_CHECKPOINT_INTERVAL_MS: '1000' };
        // generous: a planner's start folds the log with readers that may stall after a fault (issue 14)
        const p = started(await spawnService(`planner-${id}`, 'services/topology-planner/main.ts', env, 'planner-started', { readyTimeoutMs: 180_000 }));
        planners.set(id, p);
        return p;
      },
      async startAgent(cellId) {
        const k = cells.indexOf(cellId) + 1;
        const env = {
          ...base,
          NATS_CREDS: await cluster.credsFile(`agent_${cellId}`),
          NETFOLD_CELL_ID: cellId,
          NETFOLD_DATAPLANE: 'memory',
          NETFOLD_CELL_SUBNET: subnetOf(k),
          NETFOLD_DRIFT_INTERVAL_MS: '1000',
        };
        const p = started(await spawnService(`agent-${cellId}`, 'services/cell-agent/main.ts', env, 'cell-agent-started', { readyTimeoutMs: 120_000 }));
        agents.set(cellId, p);
        return p;
      },
      async writerConsumerServer() {
        const names = (await cluster.consumerNames(EVENTS_STREAM)).filter((n) => n.startsWith(writerPrefix));
        const latest = names.sort((a, b) => Number(a.slice(writerPrefix.length)) - Number(b.slice(writerPrefix.length))).pop();
        return latest ? cluster.consumerServer(EVENTS_STREAM, latest) : undefined;
      },
      stop,
    };
    for (const id of opts.planners ?? ['p1', 'p2']) await system.startPlanner(id);
    for (const cellId of cells) await system.startAgent(cellId);
    return system;
  } catch (err) {
    await stop();
    throw err;
  }
}

async function freeTcpPort(): Promise<number> {
  const { createServer } = await import('node:net');
  return new Promise((resolve) => {
    const srv = createServer();
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

// ---- the load ---------------------------------------------------------------------------------------------------

export type CommandKind = 'container-start' | 'container-stop' | 'policy-create' | 'policy-delete';

const EVENT_OF: Record<CommandKind, string> = {
  'container-start': 'ContainerStarted',
  'container-stop': 'ContainerStopped',
  'policy-create': 'PoliciesCreated',
  'policy-delete': 'PoliciesDeleted',
};

export type CommandRecord = {
  requestId: string;
  kind: CommandKind;
  /** When first sent, acknowledged (Date.now()), and the revision the answer named. */
  sentAt: number;
  ackedAt?: number;
  revision?: number;
  attempts: number;
  /** Why attempts failed (answer codes or errors), by count. */
  failures: Record<string, number>;
  /** Refused for good (should never happen under this load), or given up at the deadline. */
  gaveUp?: string;
};

type Container = { id: string; appId: string; cellId: string; ip: string; index: number };
type Policy = { src: string; dst: string; port: number };

/** A small deterministic generator (mulberry32), so every run sends the same commands. */
function seeded(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export type LoadOptions = {
  seed?: number;
  commandDeadlineMs?: number;
  runningPerCell?: number;
  policies?: number;
  /**
   * How long one attempt waits for its answer before the command is sent again (same request id, so stored once), as
   * a platform's client would: a request routed to a node that just died is never answered, and waiting long for it
   * only adds to the write gap. 3 s: above the writer's answer time under this load, below a JetStream election.
   */
  requestTimeoutMs?: number;
};

/**
 * Commands through the real intake paths, each retried with its request id until acknowledged (or the deadline).
 * A container is stopped only once its start is acknowledged, and its IP is reused only once its stop is; a policy
 * is deleted only once its create is acknowledged. Same seed, same commands in the same order.
 */
export class ChaosLoad {
  readonly commands: CommandRecord[] = [];
  /** One message per failure code, as answered (or thrown) the first time it was seen. */
  readonly failureSamples: Record<string, string> = {};
  inFlight = 0;
  readonly #sys: Pick<ChaosSystem, 'platform' | 'httpUrl' | 'token' | 'cells' | 'apps'>;
  readonly #rnd: () => number;
  readonly #o: Required<LoadOptions>;
  readonly #free = new Map<string, string[]>();
  readonly #running: Container[] = [];
  readonly #policies: Policy[] = [];
  #starting = 0;
  #next = 0;
  #port = 1000;
  readonly #instances = new Map<string, number>();
  readonly #settled = new Set<() => void>();

  constructor(sys: Pick<ChaosSystem, 'platform' | 'httpUrl' | 'token' | 'cells' | 'apps'>, opts: LoadOptions = {}) {
    this.#sys = sys;
    this.#o = { seed: 7, commandDeadlineMs: 300_000, runningPerCell: 40, policies: 60, requestTimeoutMs: 3_000, ...opts };
    this.#rnd = seeded(this.#o.seed);
    sys.cells.forEach((cellId, k) => {
      this.#free.set(
        cellId,
        Array.from({ length: 250 }, (_, h) => `10.255.${k + 1}.${h + 2}`),
      );
    });
  }

  get acked(): CommandRecord[] {
    return this.commands.filter((c) => c.ackedAt !== undefined);
  }

  get gaveUp(): CommandRecord[] {
    return this.commands.filter((c) => c.gaveUp !== undefined);
  }

  /** Chooses the next command (now, so the load's own state stays consistent) and sends it until done. */
  one(): Promise<void> {
    const pick = <T>(xs: T[]) => xs[Math.floor(this.#rnd() * xs.length)]!;
    const { cells, apps } = this.#sys;
    if (this.#rnd() < 0.7) {
      const wantStart = this.#running.length + this.#starting < this.#o.runningPerCell * cells.length || this.#running.length === 0;
      const cellId = pick(cells);
      const free = this.#free.get(cellId)!;
      if (wantStart && free.length > 0) {
        const appId = pick(apps);
        const index = this.#instances.get(appId) ?? 0;
        this.#instances.set(appId, index + 1);
        const c: Container = { id: `c-${this.#next}`, appId, cellId, ip: free.shift()!, index };
        this.#starting++;
        return this.#send(
          'container-start',
          (rid) => this.#intake('startContainer', { containerId: c.id, appId, cellId, instanceIndex: index, ip: c.ip, requestId: rid }),
          (ok) => {
            this.#starting--;
            if (ok) this.#running.push(c);
          },
        );
      }
      if (this.#running.length > 0) {
        const c = this.#running.splice(Math.floor(this.#rnd() * this.#running.length), 1)[0]!;
        return this.#send(
          'container-stop',
          (rid) => this.#intake('stopContainer', { containerId: c.id, requestId: rid }),
          (ok) => {
            if (ok) this.#free.get(c.cellId)!.push(c.ip);
          },
        );
      }
    }
    if (this.#policies.length > 0 && (this.#policies.length >= this.#o.policies || this.#rnd() < 0.3)) {
      const p = this.#policies.splice(Math.floor(this.#rnd() * this.#policies.length), 1)[0]!;
      return this.#send('policy-delete', (rid) => this.#http(`${POLICIES}/delete`, p, rid));
    }
    const src = pick(apps);
    const p: Policy = { src, dst: pick(apps.filter((a) => a !== src)), port: this.#port++ };
    return this.#send(
      'policy-create',
      (rid) => this.#http(POLICIES, p, rid),
      (ok) => ok && void this.#policies.push(p),
    );
  }

  /** Sends `count` commands with at most `concurrency` in flight; resolves when every one is done. */
  async runCount(count: number, concurrency: number, onAcked?: (acked: number) => void): Promise<void> {
    let left = count;
    const worker = async () => {
      while (left > 0) {
        left--;
        await this.one();
        onAcked?.(this.acked.length);
      }
    };
    await Promise.all(Array.from({ length: concurrency }, worker));
  }

  /**
   * Open loop: `perSecond` commands a second until `stop()` says so, never more than `maxInFlight` at once (a tick
   * that finds the backlog full sends nothing and is counted as dropped). Resolves when the loop ends (commands may
   * still be in flight: `settle()`).
   */
  async runRate(perSecond: number, stop: () => boolean, maxInFlight: number): Promise<{ sent: number; dropped: number }> {
    const t0 = performance.now();
    let due = 0;
    let sent = 0;
    let dropped = 0;
    while (!stop()) {
      const target = Math.floor(((performance.now() - t0) / 1000) * perSecond);
      while (due < target) {
        due++;
        if (this.inFlight >= maxInFlight) dropped++;
        else {
          sent++;
          void this.one();
        }
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    return { sent, dropped };
  }

  /** Resolves once no command is in flight. */
  settle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.#settled.add(resolve));
  }

  async #send(
    kind: CommandKind,
    attempt: (requestId: string) => Promise<{ ok: true; revision: number } | { ok: false; code: string; retryable: boolean; error?: string }>,
    done?: (ok: boolean) => void,
  ): Promise<void> {
    const rec: CommandRecord = { requestId: `chaos-${this.#next++}-${newId()}`, kind, sentAt: Date.now(), attempts: 0, failures: {} };
    this.commands.push(rec);
    this.inFlight++;
    const deadline = rec.sentAt + this.#o.commandDeadlineMs;
    try {
      for (let delay = 100; ; delay = Math.min(delay * 2, 2000)) {
        rec.attempts++;
        let r: Awaited<ReturnType<typeof attempt>>;
        try {
          r = await attempt(rec.requestId);
        } catch (err) {
          r = { ok: false, code: (err as Error).name || 'error', retryable: true, error: (err as Error).message };
        }
        if (r.ok) {
          rec.ackedAt = Date.now();
          rec.revision = r.revision;
          done?.(true);
          return;
        }
        rec.failures[r.code] = (rec.failures[r.code] ?? 0) + 1;
        this.failureSamples[r.code] ??= (r.error ?? '').slice(0, 300);
        if (!r.retryable || Date.now() + delay > deadline) {
          rec.gaveUp = r.retryable ? `deadline (${r.code})` : r.code;
          done?.(false);
          return;
        }
        await new Promise((res) => setTimeout(res, delay));
      }
    } finally {
      this.inFlight--;
      if (this.inFlight === 0) {
        for (const s of this.#settled) s();
        this.#settled.clear();
      }
    }
  }

  async #intake(command: keyof typeof intakeCommand, body: object) {
    const msg = await this.#sys.platform.nc.request(intakeSubject(CALLER, intakeCommand[command]), JSON.stringify(body), { timeout: this.#o.requestTimeoutMs });
    const r = msg.json<IntakeReply>();
    return r.ok ? { ok: true as const, revision: r.revision } : { ok: false as const, code: r.code, retryable: r.retryable, error: r.error };
  }

  async #http(path: string, p: Policy, requestId: string) {
    const body = { policies: [{ source: { id: p.src }, destination: { id: p.dst, protocol: 'tcp', ports: { start: p.port, end: p.port } } }] };
    const res = await fetch(this.#sys.httpUrl + path, {
      method: 'POST',
      headers: { authorization: `Bearer ${this.#sys.token}`, 'content-type': 'application/json', 'x-request-id': requestId },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(this.#o.requestTimeoutMs),
    });
    const json = (await res.json().catch(() => ({}))) as { revision?: number; code?: string; error?: string };
    if (res.status === 200 && typeof json.revision === 'number') return { ok: true as const, revision: json.revision };
    const retryable = res.status >= 500 || json.code === 'concurrency-conflict';
    return { ok: false as const, code: json.code ?? `http-${res.status}`, retryable, error: `HTTP ${res.status}: ${json.error ?? ''}` };
  }
}

// ---- checks -----------------------------------------------------------------------------------------------------

export type LogCheck = {
  events: number;
  acked: number;
  /** Acknowledged commands with no event of their type in the log. */
  lost: string[];
  /** Request ids with more than one event (acknowledged or not). */
  duplicated: string[];
};

/** Reads the whole log back and checks every acknowledged command is in it exactly once. */
export async function checkLog(bus: Bus, commands: readonly CommandRecord[]): Promise<LogCheck> {
  let lastErr: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      const byRequest = new Map<string, string[]>();
      let events = 0;
      for await (const r of new EventLog(bus).read(1)) {
        if (!('event' in r)) continue;
        events++;
        const id = r.event.correlationId;
        const list = byRequest.get(id);
        if (list) list.push(r.event.type);
        else byRequest.set(id, [r.event.type]);
      }
      const acked = commands.filter((c) => c.ackedAt !== undefined);
      return {
        events,
        acked: acked.length,
        lost: acked.filter((c) => !(byRequest.get(c.requestId) ?? []).includes(EVENT_OF[c.kind])).map((c) => c.requestId),
        duplicated: commands.filter((c) => (byRequest.get(c.requestId)?.length ?? 0) > 1).map((c) => c.requestId),
      };
    } catch (err) {
      lastErr = err;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  throw lastErr;
}

export type Convergence = {
  revision: number;
  enforced: boolean;
  replayOk: boolean;
  /** Per cell: the log replayed, the planners' latest output, the agent's applied state (hashes). */
  cells: { cellId: string; replayed: string; planned: string | null; applied: string | null }[];
  /** The readers behind the log's last revision: `planner <id>` (outputs not published through it), `cell <id>`. */
  behind: string[];
  ok: boolean;
};

/** One look: is every cell at the log's last revision, as replayed, planned and applied? */
export async function convergenceOf(bus: Bus, cells: readonly string[]): Promise<Convergence> {
  const revision = (await bus.jsm.streams.info(EVENTS_STREAM)).state.last_seq;
  const report = await replay(bus, undefined, DEFAULT_DOMAIN);
  const e = await enforcementOf(bus, revision);
  const mine = report.cells.filter((c) => cells.includes(c.cellId));
  const sameHash = (c: (typeof mine)[number]) => c.applied === c.replayed && (c.planned ?? EMPTY_CELL_HASH) === c.replayed;
  const applied = mine.length === cells.length && mine.every(sameHash);
  const behind = [
    ...e.plannersBehind.map((id) => `planner ${id}`),
    ...cells.filter((id) => !e.cells.find((c) => c.cellId === id)?.ok || !mine.find((c) => c.cellId === id && sameHash(c))).map((id) => `cell ${id}`),
  ];
  return {
    revision,
    enforced: e.enforced,
    replayOk: report.ok,
    cells: mine.map(({ cellId, replayed, planned, applied }) => ({ cellId, replayed, planned, applied })),
    behind,
    ok: e.enforced && report.ok && applied && report.revision === revision,
  };
}

/** What the readers have got to, read with direct and stream gets only (no consumer is created per look). */
export type Progress = { enforced: boolean; converged: boolean; behind: string[] };

async function kvValue(bus: Bus, bucket: string, key: string): Promise<Record<string, unknown> | undefined> {
  try {
    const m = await bus.jsm.streams.getMessage(kvLayout.stream(bucket), { last_by_subj: kvLayout.subject(bucket, key) });
    const op = m?.header?.get('KV-Operation');
    return !m || op === 'DEL' || op === 'PURGE' ? undefined : m.json<Record<string, unknown>>();
  } catch (err) {
    if (isNoMessageFound(err)) return undefined;
    throw err;
  }
}

/**
 * Where the readers are against `revision`, cheaply: each live planner's published-through mark (`planner <id>` behind
 * when below it), each cell's applied status against its latest plan (`cell <id>` behind when its applied revision is
 * below min(planned, revision), as the enforcement answer counts). `converged`: besides, every cell applied exactly
 * the planned hash. Polled often, so it must not create consumers (replay and the enforcement answer each create a
 * few ephemeral ones, which linger on the servers for minutes: a look every 250 ms made hundreds).
 */
export async function progressOf(bus: Bus, plannerIds: Iterable<string>, cells: readonly string[], revision: number): Promise<Progress> {
  // the enforcement answer's own rule for planners (a dead one is not waited for once its cells are taken over)
  const planners = await kvLatestEntries(bus, PLANNER_MEMBERS_BUCKET);
  const known = new Set(plannerIds);
  const { members, plannersBehind } = plannerProgress(planners, revision);
  const live = members.filter((id) => known.has(id)).length;
  const behind = plannersBehind.filter((id) => known.has(id)).map((id) => `planner ${id}`);
  let sameHash = true;
  for (const cellId of cells) {
    const planned = await latestPlanned(bus, cellId);
    const status = await kvValue(bus, CELL_STATUS_BUCKET, cellId);
    const applied = typeof status?.revision === 'number' ? status.revision : -1;
    if (applied < Math.min(planned?.revision ?? 0, revision)) behind.push(`cell ${cellId}`);
    if (status?.hash !== (planned?.hash ?? EMPTY_CELL_HASH) || applied < (planned?.revision ?? 0)) sameHash = false;
  }
  const enforced = live > 0 && behind.length === 0;
  return { enforced, converged: enforced && sameHash, behind };
}

export type Converged = {
  ms: number;
  last: Convergence | undefined;
  /** Per reader ever seen behind: when it was last seen behind (ms from the start of the wait). */
  lastBehindMs: Record<string, number>;
  /** Full checks made, and how many of them were abandoned after FULL_CHECK_MS (their own readers stalled). */
  fullChecks: { made: number; stalled: number };
  error?: string;
};

/** A full check (replay, enforcement answer) that has not answered in this long is abandoned and made again. */
const FULL_CHECK_MS = 30_000;

/**
 * Waits until `convergenceOf` holds; resolves with the time it took and the last full look (ok false at the
 * timeout). Looks cheaply (`progressOf`) every second and makes the full check only when the cheap look says
 * converged, at most every 5 s. The full check reads with ordered consumers, like the services' readers: one that
 * has not answered within FULL_CHECK_MS is left behind and a new one made, so a stalled check cannot hold the wait
 * past its timeout.
 */
export async function waitConverged(bus: Bus, plannerIds: Iterable<string>, cells: readonly string[], timeoutMs: number): Promise<Converged> {
  const t0 = Date.now();
  const planners = [...plannerIds]; // once: an iterator (a Map's keys) would be empty on the second look
  let last: Convergence | undefined;
  let error: string | undefined;
  let fullAt = 0;
  const fullChecks = { made: 0, stalled: 0 };
  const lastBehindMs: Record<string, number> = {};
  const full = async () => {
    fullChecks.made++;
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        fullChecks.stalled++;
        reject(new Error(`a full check did not answer within ${FULL_CHECK_MS} ms`));
      }, FULL_CHECK_MS);
    });
    try {
      return await Promise.race([convergenceOf(bus, cells), stalled]);
    } finally {
      clearTimeout(timer);
    }
  };
  for (;;) {
    try {
      const revision = (await bus.jsm.streams.info(EVENTS_STREAM)).state.last_seq;
      const p = await progressOf(bus, planners, cells, revision);
      for (const r of p.behind) lastBehindMs[r] = Date.now() - t0;
      error = undefined;
      if (p.converged && Date.now() - fullAt >= 5000) {
        fullAt = Date.now();
        last = await full();
        if (last.ok) return { ms: Date.now() - t0, last, lastBehindMs, fullChecks };
      }
    } catch (err) {
      error = (err as Error).message;
    }
    if (Date.now() - t0 > timeoutMs) {
      last = await full().catch(() => last);
      return { ms: Date.now() - t0, last, lastBehindMs, fullChecks, ...(error && { error }) };
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

/**
 * How many of a cell's retained deltas are stored after a delta of a higher revision (0 when they are in order): a
 * planner's re-sent publish stored after a later one.
 */
export async function deltasOutOfOrder(bus: Bus, cellId: string): Promise<{ deltas: number; outOfOrder: number; revisions: number[] }> {
  const info = await bus.jsm.streams.info(CELL_DELTAS_STREAM, { subjects_filter: cellSubject.delta(cellId) });
  const stored = info.state.subjects?.[cellSubject.delta(cellId)] ?? 0;
  const revisions: number[] = [];
  if (stored > 0) {
    const consumer = await bus.js.consumers.get(CELL_DELTAS_STREAM, { filter_subjects: cellSubject.delta(cellId), deliver_policy: DeliverPolicy.All });
    const messages = await consumer.consume();
    const guard = setTimeout(() => void messages.close(), 10_000);
    try {
      for await (const m of messages) {
        revisions.push(revisionOf(m.data)?.revision ?? -1);
        if (m.info.pending === 0 || revisions.length >= stored) break;
      }
    } finally {
      clearTimeout(guard);
      await messages.close();
    }
  }
  let high = 0;
  let outOfOrder = 0;
  for (const r of revisions) {
    if (r < high) outOfOrder++;
    high = Math.max(high, r);
  }
  return { deltas: revisions.length, outOfOrder, revisions };
}
/** Warnings and errors the services logged since `since` (ms), counted by process and message. */
export function warningsSince(history: readonly ServiceProcess[], since: number): Record<string, number> {
  const out: Record<string, number> = {};
  for (const p of history) {
    for (const s of p.seen) {
      if (s.at < since || (s.line.level ?? 0) < 40) continue;
      const key = `${p.name}: ${s.line.msg ?? '?'}`;
      out[key] = (out[key] ?? 0) + 1;
    }
  }
  return out;
}
