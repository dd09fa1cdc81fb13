// Standalone cell agent: wiring only. Needs NATS_URL and --cell-id; --dataplane nftables (default, needs root),
// memory or render (dry run: prints each ruleset it would load); --netns to program a network namespace; metrics on
// --metrics-port (9471); --poll-interval-ms > 0 pulls the whole state on that period instead of following the
// planner's stream (the Cloud Foundry model, for baselines); --cell-subnet: this cell's container range(s), comma
// list of CIDRs inside the overlay (denied from the overlay unless allowed, known containers or not). Stopping leaves
// the rules in place.
import { runService } from '../../runtime/service-main.ts';
import { startCellAgent } from './agent.ts';
import { cellAgentConfigOf, createDataplane, createEgress, dataplaneConfigOf } from './config.ts';

await runService(
  'cell-agent',
  ({ config, log, bus, metrics }) =>
    startCellAgent({
      bus,
      log,
      metrics,
      config: cellAgentConfigOf(config),
      dataplane: createDataplane(dataplaneConfigOf(config)),
      egress: createEgress(dataplaneConfigOf(config)),
    }),
  { metricsPort: 9471 },
);
