// Standalone cell agent: wiring only. Needs NATS_URL and --cell-id; --dataplane nftables (default, needs root),
// memory or render (dry run: prints each ruleset it would load); --netns to program a network namespace.
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig } from '../../runtime/config.ts';
import { ConfigError } from '../../runtime/errors.ts';
import { createRootLogger } from '../../runtime/logger.ts';
import { connectBus } from '../../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../../runtime/topology.ts';
import { stopOnSignals } from '../../runtime/lifecycle.ts';
import { Registry, serveMetrics } from '../../runtime/metrics.ts';
import { startCellAgent, defaultCellAgentConfig } from './agent.ts';
import { type Dataplane, MemoryDataplane, NftDataplane, RenderDataplane } from './dataplane.ts';

const { values } = parseArgs({ options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }])) });
const config = loadConfig(values);
if (!config.cellId) throw new ConfigError('--cell-id / NETFOLD_CELL_ID is required');
const log = createRootLogger({ level: config.logLevel, name: 'cell-agent' });
const dataplane: Dataplane =
  config.dataplane === 'memory'
    ? new MemoryDataplane(config.overlayCidr)
    : config.dataplane === 'render'
      ? new RenderDataplane(config.overlayCidr, (text) => process.stderr.write(text))
      : new NftDataplane(config.netns ? { overlayCidr: config.overlayCidr, netns: config.netns } : { overlayCidr: config.overlayCidr });
const bus = await connectBus({ servers: (config.natsUrl ?? 'nats://127.0.0.1:4222').split(','), name: `netfold-agent-${config.cellId}`, log });
await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: config.replicas }, log);
const metrics = new Registry();
const agent = await startCellAgent({
  bus,
  log,
  dataplane,
  metrics,
  config: { ...defaultCellAgentConfig, cellId: config.cellId, overlayCidr: config.overlayCidr, driftIntervalMs: config.driftIntervalMs, replicas: config.replicas },
});
const served = await serveMetrics(metrics, config.httpHost, config.metricsPort ?? 9471);
log.info({ url: served.url }, 'metrics-serving');
stopOnSignals(log, async () => {
  await served.close();
  await agent.stop(); // the rules stay in place
  await bus.close();
});
