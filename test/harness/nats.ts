// Test harness: a real nats-server with JetStream per test file (server-chosen port, temporary store dir),
// a connected bus with the netfold topology, and teardown in reverse order through tap's t.teardown.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { startNatsServer, type NatsServerProcess } from '../../runtime/nats-server.ts';
import { connectBus, type Bus } from '../../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../../runtime/topology.ts';
import { createRootLogger, silentLogger, type Logger } from '../../runtime/logger.ts';

export type NatsFixture = {
  server: NatsServerProcess;
  storeDir: string;
  log: Logger;
  /** A new connection with the topology in place; closed at teardown. */
  connect(name?: string): Promise<Bus>;
  /** Restart the server on the same port and store (after stop or kill). */
  restart(): Promise<NatsServerProcess>;
};

export async function startNats(t: Test): Promise<NatsFixture> {
  const storeDir = mkdtempSync(join(tmpdir(), 'netfold-test-'));
  // NETFOLD_TEST_LOG=debug shows the services' logs while debugging a test.
  const log = process.env.NETFOLD_TEST_LOG ? createRootLogger({ level: process.env.NETFOLD_TEST_LOG }) : silentLogger();
  let server = await startNatsServer({ storeDir });
  const buses: Bus[] = [];
  const fixture: NatsFixture = {
    get server() {
      return server;
    },
    storeDir,
    log,
    async connect(name = 'test') {
      const bus = await connectBus({ servers: server.url, name, log });
      buses.push(bus);
      await ensureTopology(bus.jsm, defaultTopologyOptions, log);
      return bus;
    },
    async restart() {
      server = await startNatsServer({ storeDir, port: server.port });
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
