// `netfold up`: the all-in-one. Runs an embedded nats-server in the data dir (unless --nats-url points at an
// existing server or cluster), sets up the streams, starts the services built so far, and stops them cleanly on
// SIGINT/SIGTERM. Services so far: policy-writer (gateway + intake), topology-planner and discovery.
import { join } from 'node:path';
import { type Config, resolveTokenSecret } from '../runtime/config.ts';
import { createRootLogger } from '../runtime/logger.ts';
import { startNatsServer, type NatsServerProcess } from '../runtime/nats-server.ts';
import { connectBus } from '../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { stopOnSignals } from '../runtime/lifecycle.ts';
import { mintToken } from '../runtime/tokens.ts';
import { startPolicyWriter } from '../services/policy-writer/service.ts';
import { startPlanner, plannerConfigOf } from '../services/topology-planner/service.ts';
import { startDiscovery, discoveryConfigOf } from '../services/discovery/service.ts';
import { startCellAgent, defaultCellAgentConfig, type CellAgent } from '../services/cell-agent/agent.ts';
import { MemoryDataplane } from '../services/cell-agent/dataplane.ts';
import { Registry } from '../runtime/metrics.ts';
import { ConfigError } from '../runtime/errors.ts';
import { newId } from '../runtime/ids.ts';
import { nthSubnet } from '../projections/ipv4.ts';
import type { Writer } from '../services/policy-writer/writer.ts';
import { writePrivateFile } from '../runtime/private-file.ts';

export async function up(config: Config): Promise<void> {
  const log = createRootLogger({ level: config.logLevel, name: 'netfold' });
  // Before anything starts: a weak configured secret is refused (weak-token-secret) with nothing left running.
  const tokenSecret = resolveTokenSecret(config, true);
  let embedded: NatsServerProcess | undefined;
  if (!config.natsUrl) {
    embedded = await startNatsServer({ storeDir: join(config.dataDir, 'jetstream'), port: config.natsPort });
    log.info({ url: embedded.url, storeDir: join(config.dataDir, 'jetstream') }, 'embedded-nats-started');
  }
  const natsUrl = config.natsUrl ?? embedded!.url;
  const bus = await connectBus({ servers: natsUrl.split(','), name: 'netfold-up', log });
  await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: config.replicas }, log);
  const metrics = new Registry(); // one registry for every service in this process, served at the gateway's /metrics
  const writer = await startPolicyWriter({ bus, log, config: { ...config, tokenSecret }, metrics });
  const planner = await startPlanner({ bus, log, metrics, config: plannerConfigOf(config) });

  const discovery = await startDiscovery({ bus, log, config: discoveryConfigOf(config), metrics });
  // Simulated cells: agents with the in-memory dataplane (no root needed), so the whole story runs on one machine.
  const agents: CellAgent[] = [];
  for (let i = 1; i <= config.simulateCells; i++) {
    await registerSimulatedCell(writer.writer, config.overlayCidr, i, config.simulateCells);
    agents.push(
      await startCellAgent({
        bus,
        log,
        config: { ...defaultCellAgentConfig, cellId: `sim-cell-${i}`, overlayCidr: config.overlayCidr, replicas: config.replicas },
        dataplane: new MemoryDataplane(config.overlayCidr),
        metrics,
      }),
    );
  }
  const adminTokenFile = join(config.dataDir, 'admin.token');
  // Re-minted at every start, living as long as the gateway allows (--token-max-ttl); always mode 0600.
  const adminToken = await mintToken(tokenSecret, { user: 'admin', scopes: ['network.admin'], spaces: [] }, config.tokenMaxTtl);
  writePrivateFile(adminTokenFile, adminToken + '\n');

  process.stderr.write(
    [
      '',
      'netfold is up.',
      `  NATS:          ${natsUrl}${embedded ? ' (embedded, data in ' + join(config.dataDir, 'jetstream') + ')' : ''}`,
      `  policy API:    ${writer.url}/networking/v1/external/policies`,
      `  planner:       ${config.plannerId}, per-cell state on nf.cell.snap.<cell> / nf.cell.delta.<cell>`,
      `  DNS:           ${config.dnsHost}:${discovery.dnsPort} (udp+tcp), zone ${config.domain}; lookup ${discovery.httpUrl}/v1/registration/<name>`,
      `  cells:         ${config.simulateCells} simulated (sim-cell-1..${config.simulateCells}, memory dataplane; --simulate-cells N)`,
      `  metrics:       ${writer.url}/metrics (Prometheus text, every service of this process)`,
      `  admin token:   ${adminTokenFile} (valid ${config.tokenMaxTtl} s; re-minted at every start)`,
      '',
      `  try: curl -H "Authorization: Bearer $(cat ${adminTokenFile})" ${writer.url}/networking/v1/external/policies`,
      '  tour: npx netfold demo      stop with Ctrl-C',
      '',
    ].join('\n') + '\n',
  );

  stopOnSignals(log, async () => {
    await writer.stop();
    for (const a of agents) await a.stop();
    await discovery.stop();
    await planner.stop();
    await bus.close();
    await embedded?.stop();
  });
}

/**
 * Simulated cell `sim-cell-i` gets the i-th /24 of the overlay (sim-cell-1: 10.255.1.0/24 by default), smaller
 * ranges when more cells than /24s are asked for. Registering again is a no-op.
 */
async function registerSimulatedCell(writer: Writer, overlayCidr: string, i: number, count: number): Promise<void> {
  let bits = 24;
  while (bits < 30 && nthSubnet(overlayCidr, bits, count) === undefined) bits++;
  const subnet = nthSubnet(overlayCidr, bits, i);
  if (!subnet) throw new ConfigError(`--overlay-cidr ${overlayCidr} has no room for ${count} simulated cells`);
  await writer.cell({ type: 'RegisterCell', data: { cellId: `sim-cell-${i}`, subnet } }, { actor: 'system:netfold-up', correlationId: newId() });
}
