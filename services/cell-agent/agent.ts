// The cell agent: follows its cell's desired state (CellFeed), turns it into rules and applies them through a
// dataplane only when they change; repairs drift; reports what it applied (status KV) and publishes its
// containers' discovery names (discovery KV, re-put on every heartbeat). Stopping leaves the rules in place.
//
// Fail closed across restarts: every load is stamped with the revision and hash of the state it enforces (kept in
// the table itself). A (re)started agent that finds a table keeps it, loading nothing and repairing nothing, until
// its feed holds a verified state (from the planner, hash checked) at least as new as that stamp — or exactly the
// stamped one. Only a dataplane with nothing loaded gets the initial (empty, default-deny) rules right away.
//
// startCellAgent only wires the parts, each owning its state: the feed (feed.ts), the converger (converger.ts: view
// → rules → dataplane, the adoption rule of adoption.ts, drift repair, what is enforced), the status reporter
// (status.ts), the discovery publisher (discovery-publisher.ts) and the ready gate (ready-gate.ts).
import { Kvm } from '@nats-io/kv';
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { CellFeed, PollingCellFeed, type DesiredStateFeed } from './feed.ts';
import { bucketOptions, createOrOpenBucket } from '../../runtime/topology.ts';
import { BucketWriter } from '../../runtime/buckets.ts';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET } from '../../runtime/subjects.ts';
import type { Dataplane } from './dataplane.ts';
import { Registry } from '../../runtime/metrics.ts';
import { Converger } from './converger.ts';
import type { EgressEnforcer } from './egress.ts';
import { type CellStatus, StatusReporter } from './status.ts';
import { DiscoveryPublisher } from './discovery-publisher.ts';
import { ReadyGate } from './ready-gate.ts';
import { CellNetwork } from './network.ts';
import { DEFAULT_VXLAN, type NetworkDriverKind, type VxlanOptions, createNetworkDriver } from './network-drivers.ts';

export type { CellStatus } from './status.ts';

export type CellAgentConfig = {
  cellId: string;
  overlayCidr: string;
  driftIntervalMs: number;
  heartbeatMs: number;
  replicas: number;
  /** 0: follow the planner's per-cell stream (netfold). > 0: pull the whole state this often (the Cloud Foundry model, a baseline). */
  pollIntervalMs: number;
  /**
   * CIDRs of this cell's container range (`--cell-subnet`), validated inside the overlay: every address in them is
   * denied from the overlay unless allowed. Empty: unknown, only the known local containers are guarded (warned once).
   */
  subnets: string[];
  /**
   * The network driver (`--network-driver`, network-drivers.ts) with its VXLAN settings, the underlay address this
   * host is configured with (`--underlay-address`) and the namespace it programs (`--netns`, as the dataplane).
   */
  network: { driver: NetworkDriverKind; vxlan: VxlanOptions; underlay: string | undefined; netns: string | undefined };
};

export const defaultCellAgentConfig: Omit<CellAgentConfig, 'cellId'> = {
  overlayCidr: '10.255.0.0/16',
  driftIntervalMs: 500,
  heartbeatMs: 5000,
  replicas: 1,
  pollIntervalMs: 0,
  subnets: [],
  network: { driver: 'none', vxlan: DEFAULT_VXLAN, underlay: undefined, netns: undefined },
};

export type CellAgent = {
  feed: DesiredStateFeed;
  status(): CellStatus | undefined;
  /** Resolves once the applied revision is at least `revision`. */
  waitApplied(revision: number, timeoutMs?: number): Promise<void>;
  /** Checks for drift now (also done every driftIntervalMs); true when something was repaired. */
  checkDrift(): Promise<boolean>;
  /** Reconciles the network driver's kernel state now (also done on every topology change and every driftIntervalMs). */
  checkNetwork(): Promise<number>;
  stop(): Promise<void>;
};

/** Makes sure the status and discovery buckets exist (agents then write to them with BucketWriter). */
async function createBuckets(bus: Bus, replicas: number): Promise<void> {
  const kvm = new Kvm(bus.js);
  await createOrOpenBucket(CELL_STATUS_BUCKET, () => kvm.create(CELL_STATUS_BUCKET, bucketOptions.cellStatus(replicas)));
  await createOrOpenBucket(DISCOVERY_BUCKET, () => kvm.create(DISCOVERY_BUCKET, bucketOptions.discovery(replicas)));
}

export async function startCellAgent(deps: {
  bus: Bus;
  log: Logger;
  config: CellAgentConfig;
  dataplane: Dataplane;
  /** Egress rules (application security groups) in the table `inet netfold_egress`; absent: not enforced. */
  egress?: EgressEnforcer;
  metrics?: Registry;
}): Promise<CellAgent> {
  const { config: cfg, dataplane } = deps;
  const log = deps.log.child({ service: 'cell-agent', cell: cfg.cellId });
  await createBuckets(deps.bus, cfg.replicas);
  const metrics = deps.metrics ?? new Registry();
  const feed: DesiredStateFeed =
    cfg.pollIntervalMs > 0 ? new PollingCellFeed(deps.bus, cfg.cellId, log, cfg.pollIntervalMs) : new CellFeed(deps.bus, cfg.cellId, log, metrics);
  const reporter = new StatusReporter({ cellId: cfg.cellId, dataplane: dataplane.kind, writer: new BucketWriter(deps.bus.nc, CELL_STATUS_BUCKET), log });
  const discovery = new DiscoveryPublisher({
    cellId: cfg.cellId,
    names: () => feed.view.state.names,
    writer: new BucketWriter(deps.bus.nc, DISCOVERY_BUCKET),
    log,
    heartbeatMs: cfg.heartbeatMs,
  });
  const converger = new Converger({
    cellId: cfg.cellId,
    overlayCidr: cfg.overlayCidr,
    subnets: cfg.subnets,
    driftIntervalMs: cfg.driftIntervalMs,
    dataplane,
    ...(deps.egress && { egress: deps.egress }),
    found: await dataplane.found(),
    feed,
    log,
    metrics,
    passed: (pass) => reporter.passed(pass),
    applied: (view) => discovery.applied(view),
    repaired: (repairs) => reporter.repaired(repairs),
  });
  const ready = new ReadyGate(deps.bus.nc, cfg.cellId, converger.enforced);
  const { network: n } = cfg;
  const network = new CellNetwork({
    cellId: cfg.cellId,
    overlayCidr: cfg.overlayCidr,
    driver: createNetworkDriver(n.driver, n.netns ? { netns: n.netns, vxlan: n.vxlan } : { vxlan: n.vxlan }),
    underlay: n.underlay,
    driftIntervalMs: cfg.driftIntervalMs,
    view: () => feed.view,
    log,
    report: (status) => void reporter.network(status),
  });

  feed.onChange(converger.schedule);
  feed.onChange(network.schedule);
  feed.onRefused((refusals) => void reporter.refused(refusals));
  await feed.start();
  await converger.start();
  discovery.start();
  network.start();
  log.info({ revision: feed.view.revision, dataplane: dataplane.kind, pollIntervalMs: cfg.pollIntervalMs }, 'cell-agent-started');

  return {
    feed,
    status: (): CellStatus | undefined => reporter.status,
    waitApplied: (revision, timeoutMs = 10_000) =>
      converger.enforced.until((a) => a.revision >= revision, timeoutMs, `cell ${cfg.cellId} applied revision ${revision}`),
    checkDrift: () => converger.checkDrift(),
    checkNetwork: () => network.reconcile(),
    async stop() {
      const converged = converger.stop(); // no pass starts from here on
      ready.stop();
      discovery.stop();
      await network.stop(); // the routes and tunnels stay in place, like the rules
      await feed.stop();
      await converged;
      log.info('cell-agent-stopped'); // the rules stay in place: containers keep their policy while we are away
    },
  };
}
