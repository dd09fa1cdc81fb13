// Test harness: a real nats-server with JetStream per test file (server-chosen port, temporary store dir),
// a connected bus with the netfold topology, and teardown in reverse order through tap's t.teardown. With
// `secured`, the server requires nkey users with the roles' permissions (runtime/authz.ts): `connect()` is then
// the admin (who creates the topology) and `connectAs(name)` signs in as one principal.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { startNatsServer, type NatsServerProcess } from '../../runtime/nats-server.ts';
import { connectBus, type Bus } from '../../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../../runtime/topology.ts';
import { createRootLogger, silentLogger, type Logger } from '../../runtime/logger.ts';
import { authorizationBlock, createCredentials, principalName, type Credential, type Principal } from '../../runtime/authz.ts';
import { writePrivateFile } from '../../runtime/private-file.ts';

export type NatsFixture = {
  server: NatsServerProcess;
  storeDir: string;
  log: Logger;
  /** A new connection with the topology in place; closed at teardown. */
  connect(name?: string): Promise<Bus>;
  /** Restart the server on the same port and store (after stop or kill). */
  restart(): Promise<NatsServerProcess>;
  /** Secured servers only: the credentials of every principal (admin included), by name. */
  credentials: ReadonlyMap<string, Credential>;
  /** Secured servers only: a new connection signed in as the named principal (no topology call); closed at teardown. */
  connectAs(name: string): Promise<Bus>;
};

export async function startNats(t: Test, opts: { secured?: Principal[] } = {}): Promise<NatsFixture> {
  const storeDir = mkdtempSync(join(tmpdir(), 'netfold-test-'));
  const creds = opts.secured ? createCredentials([{ role: 'admin' }, ...opts.secured]) : [];
  const credentials = new Map(creds.map((c) => [c.name, c]));
  const configFile = opts.secured ? join(storeDir, 'nats-server.conf') : undefined;
  if (configFile) writePrivateFile(configFile, authorizationBlock(creds));
  const serverOpts = { storeDir, ...(configFile && { configFile }) };
  // NETFOLD_TEST_LOG=debug shows the services' logs while debugging a test.
  const log = process.env.NETFOLD_TEST_LOG ? createRootLogger({ level: process.env.NETFOLD_TEST_LOG }) : silentLogger();
  let server = await startNatsServer(serverOpts);
  const buses: Bus[] = [];
  const open = async (name: string, credential?: Credential) => {
    const bus = await connectBus({ servers: server.url, name, log, ...(credential && { credential }) });
    buses.push(bus);
    return bus;
  };
  const fixture: NatsFixture = {
    get server() {
      return server;
    },
    storeDir,
    log,
    credentials,
    async connect(name = 'test') {
      const bus = await open(name, credentials.get(principalName({ role: 'admin' })));
      await ensureTopology(bus.jsm, defaultTopologyOptions, log);
      return bus;
    },
    async connectAs(name) {
      const credential = credentials.get(name);
      if (!credential) throw new Error(`no principal ${name} on this server`);
      return open(name, credential);
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
