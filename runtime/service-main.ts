// What every standalone service's main.ts does, once: read flags and environment, build the root logger, connect
// to NATS (NATS_URL, comma-separated servers; unset: the local server on --nats-port), make sure the streams exist,
// start the service, serve its metrics when it has no HTTP server of its own, and stop cleanly on SIGINT/SIGTERM
// (service, metrics, then NATS).
// A configuration refused at start-up (ConfigError, e.g. weak-token-secret) is reported as one line with its code
// on stderr, exit code 1, before anything connects.
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig, natsServersOf, type Config } from './config.ts';
import { createRootLogger, type Logger } from './logger.ts';
import { connectBus, type Bus } from './nats.ts';
import { ensureTopology, defaultTopologyOptions } from './topology.ts';
import { stopOnSignals } from './lifecycle.ts';
import { Registry, serveMetrics } from './metrics.ts';
import { ConfigError } from './errors.ts';

export type ServiceContext = { config: Config; log: Logger; bus: Bus; metrics: Registry };

/** The settings this shared wiring reads (the service's own come from its `…ConfigOf`). */
export type ServiceWiring = {
  servers: string[];
  /** Replicas of the streams it makes sure exist. */
  replicas: number;
  logLevel: string;
  /** Where its metrics are served; undefined for a service with an HTTP server of its own. */
  metrics: { host: string; port: number } | undefined;
};

export function serviceWiringOf(c: Config, defaultMetricsPort: number | undefined): ServiceWiring {
  return {
    servers: natsServersOf(c),
    replicas: c.replicas,
    logLevel: c.logLevel,
    metrics: defaultMetricsPort === undefined ? undefined : { host: c.httpHost, port: c.metricsPort ?? defaultMetricsPort },
  };
}

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
  const wiring = serviceWiringOf(config, opts.metricsPort);
  const log = createRootLogger({ level: wiring.logLevel, name });
  const bus = await connectBus({ servers: wiring.servers, name: `netfold-${name}`, log });
  await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: wiring.replicas }, log);
  const metrics = new Registry();
  const service = await start({ config, log, bus, metrics });
  const served = wiring.metrics === undefined ? undefined : await serveMetrics(metrics, wiring.metrics.host, wiring.metrics.port);
  if (served) log.info({ url: served.url }, 'metrics-serving');
  stopOnSignals(log, async () => {
    await service.stop();
    await served?.close();
    await bus.close();
  });
}
