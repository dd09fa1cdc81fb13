// What the fixture recorders share: a throwaway nats-server with the streams, the real policy-writer (gateway and
// intake) on it with the default settings and any free port, tokens signed with its secret, and at the end the
// whole event stream written as JSON lines ({ seq, subject, event }) to stdout, everything stopped and removed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNatsServer } from '../runtime/nats-server.ts';
import { connectBus } from '../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { silentLogger } from '../runtime/logger.ts';
import { EventLog } from '../runtime/event-log.ts';
import { type Principal, mintToken } from '../runtime/tokens.ts';
import { policyWriterConfigOf, startPolicyWriter } from '../services/policy-writer/service.ts';
import { loadConfig } from '../runtime/config.ts';

export async function startRecorder() {
  const dir = mkdtempSync(join(tmpdir(), 'netfold-fixture-'));
  const server = await startNatsServer({ storeDir: dir });
  const log = silentLogger();
  const bus = await connectBus({ servers: server.url, name: 'fixture', log });
  await ensureTopology(bus.jsm, defaultTopologyOptions, log);
  const secret = 'fixture-secret-fixture-secret-fixture';
  const writer = await startPolicyWriter({ bus, log, config: policyWriterConfigOf(loadConfig({ 'http-port': '0' }, {}), secret) });
  return {
    bus,
    writer,
    /** A bearer token of the recorder's gateway, valid 10 minutes. */
    token: (p: Principal) => mintToken(secret, p, 600),
    /** Writes the log to stdout, then stops and removes everything. */
    async finish(): Promise<void> {
      for await (const rec of new EventLog(bus).read(1)) process.stdout.write(JSON.stringify(rec) + '\n');
      await writer.stop();
      await bus.close();
      await server.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
