// One process hosting many cell agents for `npm run bench:scale`: each agent is the production agent
// (services/cell-agent/agent.ts) with its own cell feed (its own JetStream consumer, or its own poll), on the memory
// dataplane. On an open server agents share this process's NATS connections (BENCH_AGENT_CONNS of them, round robin;
// 0: one per agent). On a secured one (BENCH_CREDS_DIR set) each agent signs in on its own connection as its cell's
// `agent_<cell>` principal, with that credential file from the directory: its permissions cover its own cell only.
//
// Env: NATS_URL, BENCH_CELL_FROM / BENCH_CELL_TO (cells cell-<from> … cell-<to - 1>), BENCH_POLL_MS (0 = follow the
// stream), BENCH_AGENT_CONNS (4), BENCH_CREDS_DIR, NETFOLD_OVERLAY_CIDR, BENCH_EGRESS (1: egress rules too). Logs
// `agents-started` once every agent has applied its first state; SIGTERM stops them all.
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { connectBus, type Bus } from '../runtime/nats.ts';
import { createRootLogger } from '../runtime/logger.ts';
import { stopOnSignals } from '../runtime/lifecycle.ts';
import { startCellAgent, defaultCellAgentConfig, type CellAgent } from '../services/cell-agent/agent.ts';
import { MemoryDataplane } from '../services/cell-agent/dataplane.ts';
import { EgressEnforcer, MemoryEgressDriver } from '../services/cell-agent/egress.ts';
import { credentialFileOf, principalName, readCredentialFile } from '../runtime/authz.ts';
import { envNumber, pool } from './lib.ts';

const log = createRootLogger({ name: 'bench-agents', level: process.env.NETFOLD_LOG_LEVEL ?? 'warn' });
const from = envNumber('BENCH_CELL_FROM', 0);
const to = envNumber('BENCH_CELL_TO', 10);
const pollIntervalMs = envNumber('BENCH_POLL_MS', 0);
const overlayCidr = process.env.NETFOLD_OVERLAY_CIDR ?? '10.0.0.0/8';
const credsDir = process.env.BENCH_CREDS_DIR;
const conns = envNumber('BENCH_AGENT_CONNS', 4);
/** BENCH_EGRESS=1 (bench:egress): each agent also enforces egress rules, on the memory driver. */
const egress = process.env.BENCH_EGRESS === '1';
const url = process.env.NATS_URL;
if (!url) throw new Error('NATS_URL is required');
const servers = url.split(',');

const cellOf = (i: number) => `cell-${from + i}`;
const shared = credsDir === undefined && conns > 0;
const buses: Bus[] = [];
if (shared) for (let i = 0; i < conns; i++) buses.push(await connectBus({ servers, name: `bench-agents-${from}-${i}`, log }));
else {
  // One per agent, all opened before any agent starts and 4 at a time: signing the server's nonce with an nkey takes
  // ~15 ms of CPU in nats.js, and a client that has not answered within nats-server's authentication timeout (2 s) is
  // cut off (`Authentication Timeout`, which connectBus takes for refused credentials). 32 at a time beside starting
  // agents, on 2 busy cores, hit it.
  const own = new Array<Bus>(to - from);
  await pool(to - from, 4, async (i) => {
    const cellId = cellOf(i);
    const credential = credsDir === undefined ? undefined : readCredentialFile(credentialFileOf(credsDir, principalName({ role: 'agent', cellId })));
    own[i] = await connectBus({ servers, name: `bench-agent-${cellId}`, log, ...(credential && { credential }) });
  });
  buses.push(...own);
}
const agents: CellAgent[] = [];
await pool(to - from, 32, async (i) => {
  const cellId = cellOf(i);
  agents.push(
    await startCellAgent({
      bus: buses[shared ? i % conns : i]!,
      log,
      config: { ...defaultCellAgentConfig, cellId, overlayCidr, pollIntervalMs },
      dataplane: new MemoryDataplane(overlayCidr),
      ...(egress && { egress: new EgressEnforcer({ overlayCidr, egressDefault: 'deny', driver: new MemoryEgressDriver() }) }),
    }),
  );
});
// `info` is forced through whatever the level: the parent waits for this line.
log.level = 'info';
log.info({ agents: agents.length, from, to, pollIntervalMs }, 'agents-started');
log.level = process.env.NETFOLD_LOG_LEVEL ?? 'warn';

// Where a change waits seconds on a cell that got its delta at once: this process's event loop. Said when blocked.
const loopDelay = monitorEventLoopDelay({ resolution: 20 });
loopDelay.enable();
const loopTimer = setInterval(() => {
  const maxMs = Math.round(loopDelay.max / 1e6);
  if (maxMs >= 500) log.warn({ maxMs, p99Ms: Math.round(loopDelay.percentile(99) / 1e6) }, 'agents-event-loop-blocked');
  loopDelay.reset();
}, 2000);

stopOnSignals(log, async () => {
  clearInterval(loopTimer);
  await pool(agents.length, 64, (i) => agents[i]!.stop());
  await pool(buses.length, 64, (i) => buses[i]!.close());
});
