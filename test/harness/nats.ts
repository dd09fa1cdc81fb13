// Test harness: a real nats-server with JetStream per test file (server-chosen port, temporary store dir), secured
// by default (issue "Trust on the bus": nothing passes only because the bus is open): nkey users with the roles'
// permissions (runtime/authz.ts). `connect()` is the admin, who creates the topology and the buckets (as
// `netfold up` does); `connectAs(name)` signs in as one principal. The fixed principals exist at server start; an
// agent (`agent_<cell>`) or platform (`platform_<id>`) principal is added on first use by rewriting the config and
// reloading the server (SIGHUP, then its "Reloaded server configuration" line). `{ open: true }` (no
// authorization) only where a test truly needs an open bus, with a comment why. Teardown in reverse order through
// tap's t.teardown.
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { startNatsServer, type NatsServerProcess } from '../../runtime/nats-server.ts';
import { connectBus, type Bus } from '../../runtime/nats.ts';
import { ensureTopology, ensureBuckets, defaultTopologyOptions } from '../../runtime/topology.ts';
import { createRootLogger, silentLogger, type Logger } from '../../runtime/logger.ts';
import { authorizationBlock, createCredentials, credentialFileOf, principalName, type Credential, type Principal } from '../../runtime/authz.ts';
import { writePrivateFile } from '../../runtime/private-file.ts';

export type NatsFixture = {
  server: NatsServerProcess;
  storeDir: string;
  log: Logger;
  /** True unless started with `{ open: true }`. */
  secured: boolean;
  /** A new admin connection with the topology and buckets in place; closed at teardown. */
  connect(name?: string): Promise<Bus>;
  /** Restart the server on the same port and store (after stop or kill). */
  restart(): Promise<NatsServerProcess>;
  /** Secured servers only: the credentials of every principal so far (admin included), by name. */
  credentials: ReadonlyMap<string, Credential>;
  /**
   * A new connection signed in as the named principal (no topology call; on an open server, just a connection);
   * `agent_<cell>` and `platform_<id>` are added to the server on first use. Closed at teardown.
   */
  connectAs(name: string): Promise<Bus>;
  /**
   * Writes the credential file of a principal where the CLI looks with `NETFOLD_DATA_DIR` = storeDir (`<dir>/nats/`,
   * as `netfold up` keeps them) and returns its path (for `NATS_CREDS`).
   */
  credsFile(name: string): Promise<string>;
};

/** The principals every secured test server has from the start. */
const FIXED: Principal[] = [
  { role: 'admin' },
  { role: 'writer' },
  { role: 'planner' },
  { role: 'discovery' },
  { role: 'operator' },
  ...['test', 'harness', 'cc', 'cli', 'demo'].map((id) => ({ role: 'platform' as const, id })),
];

const RELOADED = /Reloaded server configuration/g;

function principalOfName(name: string): Principal | undefined {
  const m = /^(agent|platform)_(.+)$/.exec(name);
  if (!m) return undefined;
  return m[1] === 'agent' ? { role: 'agent', cellId: m[2]! } : { role: 'platform', id: m[2]! };
}

export async function startNats(
  t: Test,
  opts: { open?: boolean; secured?: Principal[]; plannerMemberTtlMs?: number; host?: string } = {},
): Promise<NatsFixture> {
  const storeDir = mkdtempSync(join(tmpdir(), 'netfold-test-'));
  const secured = !opts.open;
  const wanted = [...FIXED, ...(opts.secured ?? [])].filter((p, i, all) => all.findIndex((q) => principalName(q) === principalName(p)) === i);
  const creds = secured ? createCredentials(wanted) : [];
  const credentials = new Map(creds.map((c) => [c.name, c]));
  const configFile = secured ? join(storeDir, 'nats-server.conf') : undefined;
  // JetStream in the file too: reloading a config without it (the `-js` flag alone) shuts JetStream down
  const jetstream = `jetstream { store_dir: ${JSON.stringify(storeDir)} }\n`;
  const writeConfig = () => configFile && writePrivateFile(configFile, jetstream + authorizationBlock([...credentials.values()]));
  writeConfig();
  const serverOpts = { storeDir, ...(configFile && { configFile, jetstreamInConfig: true }), ...(opts.host && { host: opts.host }) };
  // NETFOLD_TEST_LOG=debug shows the services' logs while debugging a test.
  const log = process.env.NETFOLD_TEST_LOG ? createRootLogger({ level: process.env.NETFOLD_TEST_LOG }) : silentLogger();
  let server = await startNatsServer(serverOpts);
  const buses: Bus[] = [];
  const open = async (name: string, credential?: Credential) => {
    const bus = await connectBus({ servers: server.url, name, log, ...(credential && { credential }) });
    buses.push(bus);
    return bus;
  };
  // one reload at a time: each waits for its own "Reloaded" line
  let adding: Promise<unknown> = Promise.resolve();
  const addPrincipal = (name: string): Promise<Credential> => {
    const next = adding.then(async () => {
      const existing = credentials.get(name);
      if (existing) return existing;
      const principal = principalOfName(name);
      if (!principal) throw new Error(`no principal ${name} on this server`);
      const [credential] = createCredentials([principal]);
      credentials.set(name, credential!);
      const reloads = () => server.output().match(RELOADED)?.length ?? 0;
      const before = reloads();
      writeConfig();
      process.kill(server.pid, 'SIGHUP');
      await eventually(() => (reloads() > before ? true : undefined), 10_000, `nats-server reload adding ${name}`);
      return credential!;
    });
    adding = next.catch(() => undefined);
    return next;
  };
  const credentialOf = async (name: string) => credentials.get(name) ?? addPrincipal(name);
  let buckets: Promise<void> | undefined;
  const fixture: NatsFixture = {
    get server() {
      return server;
    },
    storeDir,
    log,
    secured,
    credentials,
    async connect(name = 'test') {
      const bus = await open(name, credentials.get(principalName({ role: 'admin' })));
      await ensureTopology(bus.jsm, defaultTopologyOptions, log);
      if (secured) {
        // the services may not create their buckets on a secured bus: the admin does first, as `netfold up` does
        buckets ??= ensureBuckets(bus.js, { replicas: 1, plannerMemberTtlMs: opts.plannerMemberTtlMs ?? 5000 });
        await buckets;
      }
      return bus;
    },
    async connectAs(name) {
      if (!secured) return open(name);
      return open(name, await credentialOf(name));
    },
    async credsFile(name) {
      if (!secured) throw new Error('an open server has no credentials');
      const c = await credentialOf(name);
      const file = credentialFileOf(join(storeDir, 'nats'), c.name);
      mkdirSync(join(storeDir, 'nats'), { recursive: true });
      writePrivateFile(file, JSON.stringify({ name: c.name, seed: c.seed, inboxPrefix: c.inboxPrefix }));
      return file;
    },
    async restart() {
      server = await startNatsServer({ ...serverOpts, port: server.port });
      return server;
    },
  };
  t.teardown(async () => {
    for (const bus of buses.reverse()) await bus.close().catch(() => undefined);
    await server.stop();
    rmSync(storeDir, { recursive: true, force: true });
  });
  return fixture;
}

/** Polls `check` until it returns a value other than undefined; for progress that has no event to wait on. */
export async function eventually<T>(check: () => Promise<T | undefined> | T | undefined, timeoutMs = 10_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}
