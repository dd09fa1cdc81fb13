// The rest of the system around a gateway, for tests: a planner and cell agents on the memory dataplane, each on
// its own connection signed in with its own role (planner, `agent_<cell>`), torn down at the end (agents first). The
// buckets they use are the admin's to create: a gateway (or `nats.connect()`) first.
import type { Test } from 'tap';
import type { NatsFixture } from './nats.ts';
import type { Registry } from '../../runtime/metrics.ts';
import { startPlanner, defaultPlannerConfig, type Planner } from '../../services/topology-planner/service.ts';
import { startCellAgent, defaultCellAgentConfig, type CellAgent, type CellAgentConfig } from '../../services/cell-agent/agent.ts';
import { MemoryDataplane } from '../../services/cell-agent/dataplane.ts';
import { dict } from '../../projections/dict.ts';

export type Stack = {
  planner: Planner;
  agents: Record<string, CellAgent>;
  planes: Record<string, MemoryDataplane>;
  /** Starts (or restarts) a cell's agent; its memory dataplane survives restarts, like a kernel table. */
  startAgent(cellId: string): Promise<CellAgent>;
  stopAgent(cellId: string): Promise<void>;
};

export async function startStack(
  t: Test,
  nats: NatsFixture,
  cells: string[],
  opts: { metrics?: Registry; agent?: Partial<CellAgentConfig> } = {},
): Promise<Stack> {
  const metrics = opts.metrics ? { metrics: opts.metrics } : {};
  await nats.connect('stack-topology'); // the admin: topology and buckets in place before the services start
  const planner = await startPlanner({ bus: await nats.connectAs('planner'), log: nats.log, config: { ...defaultPlannerConfig, heartbeatMs: 100 }, ...metrics });
  const stack: Stack = {
    planner,
    agents: dict(), // keyed by cell ids: prototype-free, like every record keyed by an outside id
    planes: dict(),
    async startAgent(cellId) {
      stack.planes[cellId] ??= new MemoryDataplane('10.255.0.0/16');
      const agent = await startCellAgent({
        bus: await nats.connectAs(`agent_${cellId}`),
        log: nats.log,
        config: { ...defaultCellAgentConfig, cellId, ...opts.agent },
        dataplane: stack.planes[cellId]!,
        ...metrics,
      });
      stack.agents[cellId] = agent;
      return agent;
    },
    async stopAgent(cellId) {
      await stack.agents[cellId]?.stop();
      delete stack.agents[cellId];
    },
  };
  t.teardown(async () => {
    for (const cellId of Object.keys(stack.agents)) await stack.stopAgent(cellId);
    await planner.stop();
  });
  for (const cellId of cells) await stack.startAgent(cellId);
  return stack;
}
