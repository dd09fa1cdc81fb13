// What every standalone service's main.ts does, once: read flags and environment, build the root logger, connect
// to NATS (NATS_URL, comma-separated servers), make sure the streams exist, start the service, serve its metrics
// when it has no HTTP server of its own, and stop cleanly on SIGINT/SIGTERM (service, metrics, then NATS).
// A configuration refused at start-up (ConfigError, e.g. weak-token-secret) is reported as one line with its code
// on stderr, exit code 1, before anything connects.
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig, type Config } from './config.ts';
import { createRootLogger, type Logger } from './logger.ts';
import { connectBus, type Bus } from './nats.ts';
import { ensureTopology, defaultTopologyOptions } from './topology.ts';
import { stopOnSignals } from './lifecycle.ts';
import { Registry, serveMetrics } from './metrics.ts';
import { ConfigError } from './errors.ts';

export type ServiceContext = { config: Config; log: Logger; bus: Bus; metrics: Registry };

export async function runService(
  name: string,
  start: (ctx: ServiceContext) => Promise<{ stop(): Promise<void> }>,
  opts: { metricsPort?: number; /** Checks that must pass before connecting (throw a ConfigError). */ validate?: (config: Config) => void } = {},
): Promise<void> {
  const { values } = parseArgs({ options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }])) });
  let config: Config;
  try {
    config = loadConfig(values);
    opts.validate?.(config);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`netfold-${name}: ${err.message} (${err.code})\n`);
    process.exitCode = 1;
    return;
  }
  const log = createRootLogger({ level: config.logLevel, name });
  const bus = await connectBus({ servers: (config.natsUrl ?? 'nats://127.0.0.1:4222').split(','), name: `netfold-${name}`, log });
  await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: config.replicas }, log);
  const metrics = new Registry();
  const service = await start({ config, log, bus, metrics });
  const served = opts.metricsPort === undefined ? undefined : await serveMetrics(metrics, config.httpHost, config.metricsPort ?? opts.metricsPort);
  if (served) log.info({ url: served.url }, 'metrics-serving');
  stopOnSignals(log, async () => {
    await service.stop();
    await served?.close();
    await bus.close();
  });
}
