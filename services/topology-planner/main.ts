// Standalone topology planner: wiring only. Needs a NATS server (NATS_URL).
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig } from '../../runtime/config.ts';
import { createRootLogger } from '../../runtime/logger.ts';
import { connectBus } from '../../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../../runtime/topology.ts';
import { stopOnSignals } from '../../runtime/lifecycle.ts';
import { Registry, serveMetrics } from '../../runtime/metrics.ts';
import { startPlanner, defaultPlannerConfig } from './service.ts';

const { values } = parseArgs({ options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }])) });
const config = loadConfig(values);
const log = createRootLogger({ level: config.logLevel, name: 'topology-planner' });
const bus = await connectBus({ servers: (config.natsUrl ?? 'nats://127.0.0.1:4222').split(','), name: `netfold-planner-${config.plannerId}`, log });
await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: config.replicas }, log);
const metrics = new Registry();
const planner = await startPlanner({
  bus,
  log,
  metrics,
  config: { ...defaultPlannerConfig, plannerId: config.plannerId, domain: config.domain, replicas: config.replicas, checkpointIntervalMs: config.checkpointIntervalMs },
});
const served = await serveMetrics(metrics, config.httpHost, config.metricsPort ?? 9470);
log.info({ url: served.url }, 'metrics-serving');
stopOnSignals(log, async () => {
  await served.close();
  await planner.stop();
  await bus.close();
});
