// The cell agent's settings of the shared configuration: the agent's own (`cellAgentConfigOf`) and its dataplane's
// (`dataplaneConfigOf`), used by its standalone main.ts and by `netfold up`'s simulated cells alike.
import type { Config } from '../../runtime/config.ts';
import { ConfigError } from '../../runtime/errors.ts';
import { type CellAgentConfig, defaultCellAgentConfig } from './agent.ts';
import { type Dataplane, MemoryDataplane, NftDataplane, RenderDataplane } from './dataplane.ts';
import { InvalidRuleError, parseCellSubnets } from './rules.ts';
import { DEFAULT_VXLAN, type NetworkDriverKind } from './network-drivers.ts';
import { type EgressDefault, EgressEnforcer, MemoryEgressDriver, NftEgressDriver, RenderEgressDriver } from './egress.ts';

/** The agent settings; refused (ConfigError) without `--cell-id` or with a `--cell-subnet` outside the overlay. */
export function cellAgentConfigOf(c: Config): CellAgentConfig {
  if (!c.cellId) throw new ConfigError('--cell-id / NETFOLD_CELL_ID is required');
  let subnets: string[];
  try {
    subnets = parseCellSubnets(c.cellSubnet, c.overlayCidr);
  } catch (err) {
    throw err instanceof InvalidRuleError ? new ConfigError(`--cell-subnet / NETFOLD_CELL_SUBNET: ${err.message}`) : err;
  }
  return {
    ...defaultCellAgentConfig,
    cellId: c.cellId,
    overlayCidr: c.overlayCidr,
    driftIntervalMs: c.driftIntervalMs,
    pollIntervalMs: c.pollIntervalMs,
    replicas: c.replicas,
    subnets,
    network: {
      driver: c.networkDriver as NetworkDriverKind,
      vxlan: { ...DEFAULT_VXLAN, vni: c.vxlanVni, port: c.vxlanPort, mtu: c.vxlanMtu },
      underlay: c.underlayAddress,
      netns: c.netns,
    },
  };
}

export type DataplaneConfig = { kind: Dataplane['kind']; overlayCidr: string; netns: string | undefined; egressDefault: EgressDefault };

/** The dataplane settings: `--dataplane`, the overlay, (nftables only) `--netns`, and `--egress-default`. */
export function dataplaneConfigOf(c: Config): DataplaneConfig {
  return { kind: c.dataplane as Dataplane['kind'], overlayCidr: c.overlayCidr, netns: c.netns, egressDefault: c.egressDefault as EgressDefault };
}

/** The dataplane a config names; `render` prints each rule set it would load through `print`. */
export function createDataplane(d: DataplaneConfig, print: (text: string) => void = (text) => process.stderr.write(text)): Dataplane {
  if (d.kind === 'memory') return new MemoryDataplane(d.overlayCidr);
  if (d.kind === 'render') return new RenderDataplane(d.overlayCidr, print);
  return new NftDataplane(d.netns ? { overlayCidr: d.overlayCidr, netns: d.netns } : { overlayCidr: d.overlayCidr });
}

/** The egress enforcer for a dataplane config (same kind, same namespace) with `--egress-default`. */
export function createEgress(d: DataplaneConfig, print: (text: string) => void = (text) => process.stderr.write(text)): EgressEnforcer {
  const driver = d.kind === 'memory' ? new MemoryEgressDriver() : d.kind === 'render' ? new RenderEgressDriver(print) : new NftEgressDriver(d.netns);
  return new EgressEnforcer({ overlayCidr: d.overlayCidr, egressDefault: d.egressDefault, driver });
}
