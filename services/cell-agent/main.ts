// Standalone cell agent: wiring only. Needs NATS_URL and --cell-id; --dataplane nftables (default, needs root),
// memory or render (dry run: prints each ruleset it would load); --netns to program a network namespace; metrics on
// --metrics-port (9471); --poll-interval-ms > 0 pulls the whole state on that period instead of following the
// planner's stream (the Cloud Foundry model, for baselines); --cell-subnet: this cell's container range(s), comma
// list of CIDRs inside the overlay (denied from the overlay unless allowed, known containers or not). Stopping leaves
// the rules in place.
import { runService } from '../../runtime/service-main.ts';
import { ConfigError } from '../../runtime/errors.ts';
import { startCellAgent, defaultCellAgentConfig } from './agent.ts';
import { InvalidRuleError, parseCellSubnets } from './rules.ts';
import { type Dataplane, MemoryDataplane, NftDataplane, RenderDataplane } from './dataplane.ts';

await runService(
  'cell-agent',
  ({ config, log, bus, metrics }) => {
    if (!config.cellId) throw new ConfigError('--cell-id / NETFOLD_CELL_ID is required');
    let subnets: string[];
    try {
      subnets = parseCellSubnets(config.cellSubnet, config.overlayCidr);
    } catch (err) {
      throw err instanceof InvalidRuleError ? new ConfigError(`--cell-subnet / NETFOLD_CELL_SUBNET: ${err.message}`) : err;
    }
    const dataplane: Dataplane =
      config.dataplane === 'memory'
        ? new MemoryDataplane(config.overlayCidr)
        : config.dataplane === 'render'
          ? new RenderDataplane(config.overlayCidr, (text) => process.stderr.write(text))
          : new NftDataplane(config.netns ? { overlayCidr: config.overlayCidr, netns: config.netns } : { overlayCidr: config.overlayCidr });
    return startCellAgent({
      bus,
      log,
      dataplane,
      metrics,
      config: { ...defaultCellAgentConfig, cellId: config.cellId, overlayCidr: config.overlayCidr, driftIntervalMs: config.driftIntervalMs, replicas: config.replicas, pollIntervalMs: config.pollIntervalMs, subnets },
    });
  },
  { metricsPort: 9471 },
);
