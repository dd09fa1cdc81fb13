// `netfold up`: the all-in-one. Runs an embedded nats-server in the data dir (unless --nats-url points at an
// existing server or cluster), sets up the streams, starts the services built so far, and stops them cleanly on
// SIGINT/SIGTERM: policy-writer (gateway + intake), topology-planner, discovery and simulated cell agents. Each
// service gets its settings from the same `…ConfigOf` mapping its standalone main.ts uses (`upPlan`).
// The embedded server is secured: one nkey credential per principal is generated once into <data-dir>/nats/ (0600
// files; the CLI signs in with them), the server's authorization block is written beside them, no anonymous
// connection is accepted, the admin sets up the streams and buckets, and each service connects with its own role.
// Against an existing server (--nats-url) every service shares one connection, signed in with --nats-creds if given.
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { type Config, type NatsClientSettings, natsClientOf, natsServersOf, resolveTokenSecret } from '../runtime/config.ts';
import { createRootLogger, releaseHeldLogs } from '../runtime/logger.ts';
import { startNatsServer, type NatsServerProcess } from '../runtime/nats-server.ts';
import { clientAuthOf, connectBus, type Bus } from '../runtime/nats.ts';
import { ensureBuckets, ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { stopOnSignals } from '../runtime/lifecycle.ts';
import { mintToken } from '../runtime/tokens.ts';
import { startPolicyWriter, policyWriterConfigOf, type PolicyWriterConfig } from '../services/policy-writer/service.ts';
import { startPlanner, plannerConfigOf, type PlannerConfig } from '../services/topology-planner/service.ts';
import { startDiscovery, discoveryConfigOf, type DiscoveryConfig } from '../services/discovery/service.ts';
import { startCellAgent, type CellAgent, type CellAgentConfig } from '../services/cell-agent/agent.ts';
import { cellAgentConfigOf, createDataplane, createEgress, dataplaneConfigOf, type DataplaneConfig } from '../services/cell-agent/config.ts';
import { Registry } from '../runtime/metrics.ts';
import { ConfigError } from '../runtime/errors.ts';
import { newId } from '../runtime/ids.ts';
import { nthSubnet } from '../projections/ipv4.ts';
import { writePrivateFile } from '../runtime/private-file.ts';
import { authorizationBlock, ensureCredentialFiles, principalName, type Credential, type Principal } from '../runtime/authz.ts';
import type { Logger } from '../runtime/logger.ts';
import type { Writer } from '../services/policy-writer/writer.ts';
import { demoData } from './demo.ts';

/** What `netfold up` starts, with which settings: everything it reads of the configuration. */
export type UpPlan = {
  /** An existing server (`--nats-url`), or the embedded one to run, secured with the credentials kept in `credentialsDir`. */
  nats: { servers: string[] } | { embedded: { storeDir: string; port: number }; credentialsDir: string };
  /** How to sign in to an existing server (`--nats-creds`, `--nats-tls-*`); the embedded one uses its own credentials. */
  client: NatsClientSettings;
  /** Replicas of every stream. */
  replicas: number;
  logLevel: string;
  shutdownTimeoutMs: number;
  /** `auto`, `pretty` or `json` (`--log-format`). */
  logFormat: string;
  /** `seed`: the demo's apps, containers and policy go into a fresh log, so the console has something to show. */
  demoData: 'seed' | 'none';
  writer: PolicyWriterConfig;
  planner: PlannerConfig;
  discovery: DiscoveryConfig;
  /** Simulated cells: registered with their range, served by an agent with the memory dataplane. */
  cells: { cellId: string; subnet: string; agent: CellAgentConfig; dataplane: DataplaneConfig }[];
  adminToken: { file: string; ttlSeconds: number };
};

export function upPlan(config: Config, tokenSecret: string): UpPlan {
  const cells: UpPlan['cells'] = [];
  for (let i = 1; i <= config.simulateCells; i++) {
    const cellId = `sim-cell-${i}`;
    const subnet = simulatedCellSubnet(config.overlayCidr, i, config.simulateCells);
    // A simulated cell is a standalone agent with --cell-id sim-cell-i --cell-subnet <its range> --dataplane memory
    // --network-driver none (it has no kernel to program).
    const agentSettings: Config = { ...config, cellId, cellSubnet: subnet, dataplane: 'memory', netns: undefined, networkDriver: 'none' };
    cells.push({ cellId, subnet, agent: cellAgentConfigOf(agentSettings), dataplane: dataplaneConfigOf(agentSettings) });
  }
  return {
    nats: config.natsUrl
      ? { servers: natsServersOf(config) }
      : { embedded: { storeDir: join(config.dataDir, 'jetstream'), port: config.natsPort }, credentialsDir: natsCredentialsDir(config.dataDir) },
    client: natsClientOf(config),
    replicas: config.replicas,
    logLevel: config.logLevel,
    shutdownTimeoutMs: config.shutdownTimeoutMs,
    demoData: demoDataOf(config.demoData),
    logFormat: config.logFormat,
    writer: policyWriterConfigOf(config, tokenSecret),
    planner: plannerConfigOf(config),
    discovery: discoveryConfigOf(config),
    cells,
    adminToken: { file: join(config.dataDir, 'admin.token'), ttlSeconds: config.tokenMaxTtl },
  };
}

export async function up(config: Config): Promise<void> {
  // Before anything starts: a weak configured secret is refused (weak-token-secret) with nothing left running.
  const tokenSecret = resolveTokenSecret(config, true);
  const plan = upPlan(config, tokenSecret);
  // On a terminal the start-up lines wait until the banner is out: the banner is what a newcomer reads first.
  const log = createRootLogger({ level: plan.logLevel, format: plan.logFormat, name: 'netfold', holdPretty: true });
  try {
    await start(config, plan, tokenSecret, log);
  } finally {
    releaseHeldLogs(log);
  }
}

async function start(config: Config, plan: UpPlan, tokenSecret: string, log: Logger): Promise<void> {
  let embedded: NatsServerProcess | undefined;
  let busOf: (p: Principal) => Promise<Bus>;
  const buses: Bus[] = [];
  if ('embedded' in plan.nats) {
    const credentials = secureEmbeddedServer(plan.nats.credentialsDir, upPrincipals(plan), log);
    embedded = await startNatsServer({ ...plan.nats.embedded, configFile: serverConfigOf(plan.nats.credentialsDir) });
    log.info({ url: embedded.url, storeDir: plan.nats.embedded.storeDir }, 'embedded-nats-started');
    const servers = [embedded.url];
    busOf = async (p) => {
      const credential = credentials.get(principalName(p))!;
      const bus = await connectBus({ servers, name: `netfold-up-${credential.name}`, log, credential });
      buses.push(bus);
      return bus;
    };
    if (plan.client.credsFile !== undefined) log.warn({ credsFile: plan.client.credsFile }, 'nats-creds-ignored-for-embedded-server');
  } else {
    const shared = await connectBus({ servers: plan.nats.servers, name: 'netfold-up', log, ...clientAuthOf(plan.client) });
    buses.push(shared);
    busOf = async () => shared;
  }
  const servers = 'servers' in plan.nats ? plan.nats.servers : [embedded!.url];
  const admin = await busOf({ role: 'admin' });
  await ensureTopology(admin.jsm, { ...defaultTopologyOptions, replicas: plan.replicas }, log);
  if (embedded) await ensureBuckets(admin.js, { replicas: plan.replicas, plannerMemberTtlMs: plan.planner.memberTtlMs });
  const metrics = new Registry(); // one registry for every service in this process, served at the gateway's /metrics
  const writer = await startPolicyWriter({ bus: await busOf({ role: 'writer' }), log, config: plan.writer, metrics });
  const planner = await startPlanner({ bus: await busOf({ role: 'planner' }), log, metrics, config: plan.planner });

  const discovery = await startDiscovery({ bus: await busOf({ role: 'discovery' }), log, config: plan.discovery, metrics });
  // Simulated cells: agents with the in-memory dataplane (no root needed), so the whole story runs on one machine.
  const agents: CellAgent[] = [];
  for (const cell of plan.cells) {
    // Registering again is a no-op.
    await writer.writer.cell(
      { type: 'RegisterCell', data: { cellId: cell.cellId, subnet: cell.subnet } },
      { actor: 'system:netfold-up', correlationId: newId() },
    );
    const bus = await busOf({ role: 'agent', cellId: cell.cellId });
    const egress = createEgress(cell.dataplane);
    agents.push(await startCellAgent({ bus, log, config: cell.agent, dataplane: createDataplane(cell.dataplane), egress, metrics }));
  }
  if (plan.demoData === 'seed') await seedDemoData(writer.writer, plan.cells, log);
  const adminTokenFile = plan.adminToken.file;
  // Re-minted at every start, living as long as the gateway allows (--token-max-ttl); always mode 0600.
  const adminToken = await mintToken(tokenSecret, { user: 'admin', scopes: ['network.admin'], spaces: [] }, plan.adminToken.ttlSeconds);
  writePrivateFile(adminTokenFile, adminToken + '\n');

  process.stderr.write(
    [
      '',
      'netfold is up.',
      `  console:       ${writer.url}/ui (sign in with the admin token below)`,
      `  NATS:          ${servers.join(',')}${embedded ? ' (embedded, data in ' + join(config.dataDir, 'jetstream') + ')' : ''}`,
      ...('credentialsDir' in plan.nats ? [`  NATS users:    ${plan.nats.credentialsDir} (a credential per role, 0600; anonymous connections refused)`] : []),
      `  policy API:    ${writer.url}/networking/v1/external/policies`,
      `  planner:       ${plan.planner.plannerId}, per-cell state on nf.cell.snap.<cell> / nf.cell.delta.<cell>`,
      `  DNS:           ${plan.discovery.dnsHost}:${discovery.dnsPort} (udp+tcp), zone ${plan.discovery.zone}; ` +
        `lookup ${discovery.httpUrl}/v1/registration/<name>`,
      ...(plan.demoData === 'seed' ? ["  demo data:     the demo's apps, containers and policy in a fresh log (--demo-data none: start empty)"] : []),
      `  cells:         ${plan.cells.length} simulated (sim-cell-1..${plan.cells.length}, memory dataplane; --simulate-cells N)`,
      `  metrics:       ${writer.url}/metrics (Prometheus text, every service of this process)`,
      `  API contract:  ${writer.url}/openapi.json (OpenAPI 3.1, every route of the gateway)`,
      `  admin token:   ${adminTokenFile} (valid ${plan.adminToken.ttlSeconds} s; re-minted at every start)`,
      '',
      `  try: curl -H "Authorization: Bearer $(cat ${adminTokenFile})" ${writer.url}/networking/v1/external/policies`,
      '  tour: npx netfold demo      policy as code: npx netfold export -f policies.yaml; npx netfold apply -f policies.yaml --dry-run',
      '  stop with Ctrl-C',
      '',
    ].join('\n') + '\n',
  );
  releaseHeldLogs(log);

  stopOnSignals(
    log,
    async () => {
      await writer.stop();
      for (const a of agents) await a.stop();
      await discovery.stop();
      await planner.stop();
      for (const bus of buses.reverse()) await bus.close();
      await embedded?.stop();
    },
    plan.shutdownTimeoutMs,
  );
}

function demoDataOf(v: string): 'seed' | 'none' {
  if (v === 'seed' || v === 'none') return v;
  throw new ConfigError(`--demo-data must be seed or none, got ${JSON.stringify(v)}`, 'invalid-demo-data');
}

/**
 * A fresh log (no app registered yet) gets the demo's apps, containers and policy, decided and appended by the
 * writer like any command (audited as `system:netfold-up`): the console then shows a graph and cells at first sight.
 * `netfold demo` makes the same commands, so it still runs afterwards and changes nothing. A log with apps is left
 * alone, so a restart adds nothing.
 */
async function seedDemoData(writer: Writer, cells: UpPlan['cells'], log: Logger): Promise<void> {
  if (Object.keys(writer.model.apps).length > 0 || cells.length === 0) return;
  const d = demoData(cells);
  const meta = { actor: 'system:netfold-up', correlationId: newId() };
  for (const app of d.apps) await writer.app({ type: 'RegisterApp', data: app }, meta);
  for (const c of d.containers) await writer.container({ type: 'StartContainer', data: c }, meta);
  const r = await writer.policies(
    [{ type: 'CreatePolicies', data: { sourceAppId: d.policy.sourceAppId, policies: d.policy.rules } }],
    { admin: true, spaces: [] },
    meta,
  );
  log.info({ apps: d.apps.length, containers: d.containers.length, policies: d.policy.rules.length, revision: r.revision }, 'demo-data-seeded');
}

/** Where `netfold up` keeps the embedded server's credentials and config (the CLI looks there too). */
export const natsCredentialsDir = (dataDir: string): string => join(dataDir, 'nats');
const serverConfigOf = (credentialsDir: string) => join(credentialsDir, 'server.conf');

/** Who signs in to the embedded server: the admin, each service's role, the operator and platform users of the CLI. */
function upPrincipals(plan: UpPlan): Principal[] {
  return [
    { role: 'admin' },
    { role: 'writer' },
    { role: 'planner' },
    { role: 'discovery' },
    { role: 'operator' },
    { role: 'platform', id: 'cli' },
    { role: 'platform', id: 'demo' },
    ...plan.cells.map((c): Principal => ({ role: 'agent', cellId: c.cellId })),
  ];
}

/** The credentials (kept, or generated for new principals) and the server's config, rewritten when it changes. */
function secureEmbeddedServer(dir: string, principals: Principal[], log: Logger): Map<string, Credential> {
  const { credentials, created } = ensureCredentialFiles(dir, principals);
  if (created.length > 0) log.info({ dir, created }, 'nats-credentials-created');
  const file = serverConfigOf(dir);
  const conf = authorizationBlock(credentials);
  if (!existsSync(file) || readFileSync(file, 'utf8') !== conf) {
    writePrivateFile(file, conf);
    log.info({ file, users: credentials.length }, 'nats-server-config-written');
  }
  return new Map(credentials.map((c) => [c.name, c]));
}

/**
 * Simulated cell `sim-cell-i` gets the i-th /24 of the overlay (sim-cell-1: 10.255.1.0/24 by default), smaller
 * ranges when more cells than /24s are asked for.
 */
function simulatedCellSubnet(overlayCidr: string, i: number, count: number): string {
  let bits = 24;
  while (bits < 30 && nthSubnet(overlayCidr, bits, count) === undefined) bits++;
  const subnet = nthSubnet(overlayCidr, bits, i);
  if (!subnet) throw new ConfigError(`--overlay-cidr ${overlayCidr} has no room for ${count} simulated cells`);
  return subnet;
}
