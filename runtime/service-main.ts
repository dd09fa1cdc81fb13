// What every standalone service's main.ts does, once: read flags and environment, build the root logger, connect
// to NATS (NATS_URL, comma-separated servers; unset: the local server on --nats-port; signed in with
// --nats-creds and over TLS with --nats-tls-* when set), make sure the streams exist (create them as an admin,
// check them as any other role: `topology-missing` when they do not), start the service, serve its metrics when
// it has no HTTP server of its own, and stop cleanly on SIGINT/SIGTERM (service, metrics, then NATS).
// A configuration refused at start-up (ConfigError, e.g. weak-token-secret) is reported as one line with its code
// on stderr, exit code 1, before anything connects (a missing stream the user may not create: the same, after).
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig, natsClientOf, natsServersOf, type Config, type NatsClientSettings } from './config.ts';
import { createRootLogger, type Logger } from './logger.ts';
import { clientAuthOf, connectBus, type Bus } from './nats.ts';
import { ensureTopology, defaultTopologyOptions } from './topology.ts';
import { stopOnSignals } from './lifecycle.ts';
import { Registry, serveMetrics } from './metrics.ts';
import { ConfigError } from './errors.ts';

export type ServiceContext = { config: Config; log: Logger; bus: Bus; metrics: Registry };

/** The settings this shared wiring reads (the service's own come from its `…ConfigOf`). */
export type ServiceWiring = {
  servers: string[];
  /** The credential file and TLS files this process connects with. */
  client: NatsClientSettings;
  /** Replicas of the streams it makes sure exist. */
  replicas: number;
  logLevel: string;
  shutdownTimeoutMs: number;
  /** `auto`, `pretty` or `json` (`--log-format`). */
  logFormat: string;
  /** Where its metrics are served; undefined for a service with an HTTP server of its own. */
  metrics: { host: string; port: number } | undefined;
};

export function serviceWiringOf(c: Config, defaultMetricsPort: number | undefined): ServiceWiring {
  return {
    servers: natsServersOf(c),
    client: natsClientOf(c),
    replicas: c.replicas,
    logLevel: c.logLevel,
    shutdownTimeoutMs: c.shutdownTimeoutMs,
    logFormat: c.logFormat,
    metrics: defaultMetricsPort === undefined ? undefined : { host: c.httpHost, port: c.metricsPort ?? defaultMetricsPort },
  };
}

export async function runService(
  name: string,
  start: (ctx: ServiceContext) => Promise<{ stop(): Promise<void> }>,
  opts: {
    metricsPort?: number;
    /** Checks that must pass before connecting (throw a ConfigError). */
    validate?: (config: Config) => void;
    /** Socket writes coalesced per event-loop turn (runtime/nats.ts): for a service that mostly sends (the writer). */
    coalesceWrites?: boolean;
  } = {},
): Promise<void> {
  const { values } = parseArgs({ options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }])) });
  let config: Config;
  let wiring: ServiceWiring;
  let auth: ReturnType<typeof clientAuthOf>;
  try {
    config = loadConfig(values);
    opts.validate?.(config);
    wiring = serviceWiringOf(config, opts.metricsPort);
    auth = clientAuthOf(wiring.client);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`netfold-${name}: ${err.message} (${err.code})\n`);
    process.exitCode = 1;
    return;
  }
  const log = createRootLogger({ level: wiring.logLevel, format: wiring.logFormat, name });
  const bus = await connectBus({ servers: wiring.servers, name: `netfold-${name}`, log, ...auth, coalesceWrites: opts.coalesceWrites === true });
  const metrics = new Registry();
  let service: { stop(): Promise<void> };
  try {
    await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: wiring.replicas }, log);
    service = await start({ config, log, bus, metrics });
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    process.stderr.write(`netfold-${name}: ${err.message} (${err.code})\n`);
    process.exitCode = 1;
    await bus.close();
    return;
  }
  const served = wiring.metrics === undefined ? undefined : await serveMetrics(metrics, wiring.metrics.host, wiring.metrics.port);
  if (served) log.info({ url: served.url }, 'metrics-serving');
  stopOnSignals(
    log,
    async () => {
      await service.stop();
      await served?.close();
      await bus.close();
    },
    wiring.shutdownTimeoutMs,
  );
}
