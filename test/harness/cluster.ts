// Test harness: a real 3-node nats-server cluster (issue "Availability under faults"), secured like the single-node
// harness (test/harness/nats.ts): nkey users with the roles' permissions (runtime/authz.ts), `connect()` as the
// admin (who creates the topology with R3 streams and the buckets with 3 replicas, as `netfold up --replicas 3`
// does), `connectAs(name)` as one principal, agent and platform principals added on first use by rewriting every
// node's config and reloading the nodes that are up (SIGHUP; a node that is down reads the new file when it
// restarts). Each node has its own ports (client, route, monitoring), chosen free at start and kept across
// restarts, its own config file and JetStream store dir: `kill(node)` is a SIGKILL, `restart(node)` brings it back
// on the same ports and store. The helpers name the servers holding what a fault targets: the JetStream meta
// leader (monitoring `/jsz`), a stream's leader and the server of a consumer (their info's `cluster.leader`).
// Used by test/chaos.test.ts and bench/chaos.ts; `stop()` kills every node and removes the temporary dirs.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsServer, type NatsServerProcess } from '../../runtime/nats-server.ts';
import { connectBus, type Bus } from '../../runtime/nats.ts';
import { ensureBuckets, ensureTopology, defaultTopologyOptions } from '../../runtime/topology.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { silentLogger, type Logger } from '../../runtime/logger.ts';
import { authorizationBlock, createCredentials, credentialFileOf, principalName, type Credential, type Principal } from '../../runtime/authz.ts';
import { writePrivateFile } from '../../runtime/private-file.ts';

export type ClusterNode = {
  /** The server's name (`n1`…): what `cluster.leader` and the monitoring endpoints call it. */
  readonly name: string;
  readonly url: string;
  readonly port: number;
  readonly routePort: number;
  readonly monitorPort: number;
  readonly storeDir: string;
  /** The running process; undefined while the node is down. */
  readonly process: NatsServerProcess | undefined;
};

export type ClusterFixture = {
  nodes: readonly ClusterNode[];
  /** Every node's client URL: what the services are given (they reconnect to whichever is up). */
  urls: string[];
  log: Logger;
  credentials: ReadonlyMap<string, Credential>;
  /** A new admin connection with the topology (R3) and the buckets in place; closed by `stop()`. */
  connect(name?: string): Promise<Bus>;
  /** A new connection signed in as the named principal (`agent_<cell>`, `platform_<id>` added on first use). */
  connectAs(name: string): Promise<Bus>;
  /** Writes the credential file of a principal under the cluster's temporary dir and returns its path (`NATS_CREDS`). */
  credsFile(name: string): Promise<string>;
  node(name: string): ClusterNode;
  /** SIGKILL one node (no-op when it is down). */
  kill(name: string): Promise<void>;
  /** Starts a node that was killed, on the same ports and store dir; resolves once it says it is ready. */
  restart(name: string): Promise<void>;
  /** The server name of the JetStream meta leader, from the monitoring endpoint of a node that is up. */
  metaLeader(): Promise<string>;
  /** The server name leading a stream's replicas (retried through elections). */
  streamLeader(stream: string): Promise<string>;
  /** Asks a stream's leader to step down; resolves with the new leader (another server). */
  stepDownStream(stream: string): Promise<string>;
  /** The names of a stream's consumers (retried through elections). */
  consumerNames(stream: string): Promise<string[]>;
  /** The server a consumer lives on (an R1 consumer) or that leads it; undefined when the consumer is gone. */
  consumerServer(stream: string, consumer: string): Promise<string | undefined>;
  /**
   * Waits until every node is up and healthy (`/healthz`: its JetStream assets are current) and every stream has a
   * leader and all its replicas current: before the next fault, so that a fault never takes the quorum away.
   */
  waitHealthy(timeoutMs?: number): Promise<void>;
  stop(): Promise<void>;
};

export type ClusterOptions = {
  size?: number;
  /** Extra principals at start (the fixed ones are those of the single-node harness). */
  secured?: Principal[];
  plannerMemberTtlMs?: number;
  log?: Logger;
};

const FIXED: Principal[] = [
  { role: 'admin' },
  { role: 'writer' },
  { role: 'planner' },
  { role: 'discovery' },
  { role: 'operator' },
  ...['test', 'harness', 'chaos', 'bench'].map((id) => ({ role: 'platform' as const, id })),
];

const RELOADED = /Reloaded server configuration/g;
const CLUSTER_NAME = 'netfold-test';

function principalOfName(name: string): Principal | undefined {
  const m = /^(agent|platform)_(.+)$/.exec(name);
  if (!m) return undefined;
  return m[1] === 'agent' ? { role: 'agent', cellId: m[2]! } : { role: 'platform', id: m[2]! };
}

/** `count` distinct ports free on 127.0.0.1 right now (all held open together, so no two are the same). */
async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  const ports: number[] = [];
  for (let i = 0; i < count; i++) {
    const srv = createServer();
    await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', () => resolve()));
    servers.push(srv);
    ports.push((srv.address() as { port: number }).port);
  }
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

async function until<T>(check: () => Promise<T | undefined>, timeoutMs: number, what: string): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v !== undefined) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${lastErr ? `: ${(lastErr as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export async function startCluster(opts: ClusterOptions = {}): Promise<ClusterFixture> {
  const size = opts.size ?? 3;
  const root = mkdtempSync(join(tmpdir(), 'netfold-cluster-'));
  const log = opts.log ?? silentLogger();
  const wanted = [...FIXED, ...(opts.secured ?? [])].filter((p, i, all) => all.findIndex((q) => principalName(q) === principalName(p)) === i);
  const credentials = new Map(createCredentials(wanted).map((c) => [c.name, c]));
  const ports = await freePorts(size * 3);
  type Node = { -readonly [K in keyof ClusterNode]: ClusterNode[K] } & { configFile: string };
  const nodes: Node[] = Array.from({ length: size }, (_, i) => ({
    name: `n${i + 1}`,
    port: ports[i]!,
    routePort: ports[size + i]!,
    monitorPort: ports[2 * size + i]!,
    url: `nats://127.0.0.1:${ports[i]!}`,
    storeDir: join(root, `n${i + 1}`),
    configFile: join(root, `n${i + 1}.conf`),
    process: undefined,
  }));
  const configOf = (n: Node) =>
    [
      `server_name: ${n.name}`,
      `http: "127.0.0.1:${n.monitorPort}"`,
      // JetStream in the file (not the -js flag): a reload that adds a principal keeps it
      `jetstream { store_dir: ${JSON.stringify(n.storeDir)} }`,
      `cluster {`,
      `  name: ${CLUSTER_NAME}`,
      `  listen: "127.0.0.1:${n.routePort}"`,
      `  routes: [${nodes
        .filter((o) => o !== n)
        .map((o) => JSON.stringify(`nats-route://127.0.0.1:${o.routePort}`))
        .join(', ')}]`,
      `}`,
      authorizationBlock([...credentials.values()]),
    ].join('\n');
  const writeConfigs = () => {
    for (const n of nodes) writePrivateFile(n.configFile, configOf(n));
  };
  writeConfigs();
  const launch = async (n: Node) => {
    n.process = await startNatsServer({ storeDir: n.storeDir, configFile: n.configFile, jetstreamInConfig: true, port: n.port, readyTimeoutMs: 30_000 });
  };
  const nodeOf = (name: string): Node => {
    const n = nodes.find((x) => x.name === name);
    if (!n) throw new Error(`no node ${name} in this cluster`);
    return n;
  };
  const buses: Bus[] = [];
  const urls = nodes.map((n) => n.url);
  const open = async (name: string, credential: Credential) => {
    const bus = await connectBus({ servers: urls, name, log, credential, connectTimeoutMs: 30_000 });
    buses.push(bus);
    return bus;
  };
  const stop = async () => {
    for (const bus of buses.reverse()) await bus.close().catch(() => undefined);
    await Promise.all(nodes.map((n) => n.process?.kill()));
    for (const n of nodes) n.process = undefined;
    rmSync(root, { recursive: true, force: true });
  };

  // one reload at a time: each waits for its own "Reloaded" line on every node that is up
  let adding: Promise<unknown> = Promise.resolve();
  const addPrincipal = (name: string): Promise<Credential> => {
    const next = adding.then(async () => {
      const existing = credentials.get(name);
      if (existing) return existing;
      const principal = principalOfName(name);
      if (!principal) throw new Error(`no principal ${name} in this cluster`);
      const [credential] = createCredentials([principal]);
      credentials.set(name, credential!);
      const up = nodes.filter((n) => n.process);
      const reloads = (n: Node) => n.process?.output().match(RELOADED)?.length ?? 0;
      const before = up.map(reloads);
      writeConfigs();
      for (const n of up) process.kill(n.process!.pid, 'SIGHUP');
      await until(async () => (up.every((n, i) => !n.process || reloads(n) > before[i]!) ? true : undefined), 10_000, `nodes reloaded adding ${name}`);
      return credential!;
    });
    adding = next.catch(() => undefined);
    return next;
  };
  const credentialOf = async (name: string) => credentials.get(name) ?? addPrincipal(name);

  type MetaCluster = { leader?: string; replicas?: { name: string; current: boolean }[] };
  let admin: Bus | undefined;
  let ready: Promise<void> | undefined;
  const jsonOf = async (n: Node, path: string): Promise<unknown> => {
    const res = await fetch(`http://127.0.0.1:${n.monitorPort}${path}`, { signal: AbortSignal.timeout(3000) });
    return res.json();
  };

  try {
    await Promise.all(nodes.map(launch));
    admin = await open('cluster-admin', credentials.get('admin')!);
  } catch (err) {
    await stop();
    throw err;
  }
  const adminBus = admin;

  const fixture: ClusterFixture = {
    nodes,
    urls,
    log,
    credentials,
    async connect(name = 'test') {
      const bus = await open(name, credentials.get('admin')!);
      ready ??= (async () => {
        // every node known to the meta group and current before R3 streams are placed ("no suitable peers" otherwise)
        await until(
          async () => {
            for (const n of nodes) {
              const meta = ((await jsonOf(n, '/jsz')) as { meta_cluster?: MetaCluster }).meta_cluster;
              const peers = meta?.replicas ?? [];
              if (meta?.leader === n.name) return peers.length === nodes.length - 1 && peers.every((r) => r.current) ? true : undefined;
            }
            return undefined;
          },
          60_000,
          'every node in the JetStream meta group',
        );
        const replicas = nodes.length;
        await withNatsRetry('topology', () => ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas }, log), { deadlineMs: 60_000 });
        const buckets = { replicas, plannerMemberTtlMs: opts.plannerMemberTtlMs ?? 5000 };
        await withNatsRetry('buckets', () => ensureBuckets(bus.js, buckets), { deadlineMs: 60_000 });
      })();
      await ready;
      return bus;
    },
    async connectAs(name) {
      return open(name, await credentialOf(name));
    },
    async credsFile(name) {
      const c = await credentialOf(name);
      const file = credentialFileOf(join(root, 'creds'), c.name);
      writePrivateFile(file, JSON.stringify({ name: c.name, seed: c.seed, inboxPrefix: c.inboxPrefix }));
      return file;
    },
    node: nodeOf,
    async kill(name) {
      const n = nodeOf(name);
      await n.process?.kill();
      n.process = undefined;
    },
    async restart(name) {
      const n = nodeOf(name);
      if (n.process) throw new Error(`node ${name} is running`);
      await launch(n);
    },
    metaLeader: () =>
      until(
        async () => {
          for (const n of nodes.filter((x) => x.process)) {
            const jsz = (await jsonOf(n, '/jsz').catch(() => undefined)) as { meta_cluster?: { leader?: string } } | undefined;
            if (jsz?.meta_cluster?.leader) return jsz.meta_cluster.leader;
          }
          return undefined;
        },
        30_000,
        'a JetStream meta leader',
      ),
    streamLeader: (stream) => until(async () => (await adminBus.jsm.streams.info(stream)).cluster?.leader || undefined, 30_000, `a leader of stream ${stream}`),
    async stepDownStream(stream) {
      const old = await fixture.streamLeader(stream);
      await withNatsRetry(`step down ${stream}`, () => adminBus.nc.request(`$JS.API.STREAM.LEADER.STEPDOWN.${stream}`, '', { timeout: 5000 }), {
        deadlineMs: 30_000,
      });
      return until(
        async () => {
          const leader = (await adminBus.jsm.streams.info(stream)).cluster?.leader;
          return leader && leader !== old ? leader : undefined;
        },
        30_000,
        `a new leader of ${stream}`,
      );
    },
    consumerNames: (stream) =>
      withNatsRetry(
        `consumers of ${stream}`,
        async () => {
          const names: string[] = [];
          for await (const c of adminBus.jsm.consumers.list(stream)) names.push(c.name);
          return names;
        },
        { deadlineMs: 30_000 },
      ),
    async consumerServer(stream, consumer) {
      const info = await withNatsRetry(`consumer ${consumer}`, () => adminBus.jsm.consumers.info(stream, consumer), { deadlineMs: 30_000 }).catch(
        () => undefined,
      );
      return info?.cluster?.leader || undefined;
    },
    async waitHealthy(timeoutMs = 120_000) {
      await until(
        async () => {
          if (nodes.some((n) => !n.process)) return undefined;
          for (const n of nodes) {
            const health = (await jsonOf(n, '/healthz')) as { status?: string };
            if (health.status !== 'ok') return undefined;
          }
          for await (const s of adminBus.jsm.streams.list()) {
            const c = s.cluster;
            if (!c?.leader || (c.replicas ?? []).length !== nodes.length - 1 || c.replicas!.some((r) => !r.current || r.offline)) return undefined;
          }
          return true;
        },
        timeoutMs,
        'every node healthy and every stream replica current',
      );
    },
    stop,
  };
  return fixture;
}
