// The discovery service: keeps the agents' records (a KV watch, not a poll), expires silent cells, and answers DNS
// over UDP and TCP and an HTTP lookup for tools. `startDiscovery` only wires its parts, each owning its state:
//   follower.ts    the records follower: the discovery bucket watched into the index (records.ts)
//   expiry.ts      the expiry policy (pure: paused while disconnected and one threshold after) and its periodic check
//   dns-server.ts  UDP and TCP on one port, the per-source UDP rate limit (rate-limit.ts), answers from dns.ts
//   http.ts        the HTTP lookup, /healthz and /metrics
import type { Bus } from '../../runtime/nats.ts';
import type { Config } from '../../runtime/config.ts';
import type { Logger } from '../../runtime/logger.ts';
import { DEFAULT_DOMAIN } from '../../projections/cell.ts';
import { DiscoveryIndex } from './records.ts';
import { DEFAULT_MAX_ANSWERS } from './dns.ts';
import { defaultRateLimit } from './rate-limit.ts';
import { Registry } from '../../runtime/metrics.ts';
import { followRecords } from './follower.ts';
import { type ExpiryState, startExpiry } from './expiry.ts';
import { type DnsStats, startDnsServer } from './dns-server.ts';
import { startHttpLookup } from './http.ts';

export type DiscoveryConfig = {
  zone: string;
  ttl: number;
  dnsHost: string;
  dnsPort: number;
  httpHost: string;
  httpPort: number;
  /** A cell not heard of for this long has its records dropped (Cloud Foundry: 180 s). */
  expiryMs: number;
  replicas: number;
  /** Most A records in one answer (a random selection). */
  maxAnswers: number;
  /** UDP responses per second per source address (0: unlimited), the burst, and 1 in `slip` over-limit answered TC. */
  rateLimit: number;
  rateLimitBurst: number;
  rateLimitSlip: number;
  /** Most source addresses the rate limiter tracks at once. */
  rateLimitSources: number;
};

export const defaultDiscoveryConfig: DiscoveryConfig = {
  zone: DEFAULT_DOMAIN,
  ttl: 0,
  dnsHost: '127.0.0.1',
  dnsPort: 8053,
  httpHost: '127.0.0.1',
  httpPort: 8054,
  expiryMs: 180_000,
  replicas: 1,
  maxAnswers: DEFAULT_MAX_ANSWERS,
  rateLimit: defaultRateLimit.ratePerSecond,
  rateLimitBurst: defaultRateLimit.burst,
  rateLimitSlip: defaultRateLimit.slip,
  rateLimitSources: defaultRateLimit.maxSources,
};

export type Discovery = {
  index: DiscoveryIndex;
  dnsPort: number;
  httpUrl: string;
  /** Answers by response code, queries dropped as unreadable, records expired, UDP responses rate-limited. */
  stats: Readonly<DnsStats> & { readonly expired: number };
  /** Runs the expiry check now (it also runs periodically); returns the cells dropped. */
  expireNow(): string[];
  /** Whether NATS is connected and until when expiry is paused. */
  expiry: ExpiryState;
  stop(): Promise<void>;
};

/** The discovery settings of the shared configuration. */
export function discoveryConfigOf(c: Config): DiscoveryConfig {
  return {
    zone: c.domain,
    ttl: c.dnsTtl,
    dnsHost: c.dnsHost,
    dnsPort: c.dnsPort,
    httpHost: c.httpHost,
    httpPort: c.discoveryHttpPort,
    expiryMs: c.discoveryExpiryMs,
    replicas: c.replicas,
    maxAnswers: c.dnsMaxAnswers,
    rateLimit: c.dnsRateLimit,
    rateLimitBurst: c.dnsRateLimitBurst,
    rateLimitSlip: c.dnsRateLimitSlip,
    rateLimitSources: defaultRateLimit.maxSources,
  };
}

export async function startDiscovery(deps: { bus: Bus; log: Logger; config: DiscoveryConfig; now?: () => number; metrics?: Registry }): Promise<Discovery> {
  const cfg = deps.config;
  const now = deps.now ?? (() => Date.now());
  const log = deps.log.child({ service: 'discovery' });
  const metrics = deps.metrics ?? new Registry();
  const index = new DiscoveryIndex(cfg.expiryMs);

  const records = await followRecords({ bus: deps.bus, index, replicas: cfg.replicas, now, log: log.child({ component: 'records' }), metrics });
  const expiry = startExpiry({ index, thresholdMs: cfg.expiryMs, statuses: deps.bus.nc.status(), now, log: log.child({ component: 'expiry' }) });
  const dns = await startDnsServer({
    host: cfg.dnsHost,
    port: cfg.dnsPort,
    resolve: (fqdn) => index.lookup(fqdn),
    answers: { zone: cfg.zone, ttl: cfg.ttl, random: Math.random, maxAnswers: cfg.maxAnswers },
    rateLimit: { ratePerSecond: cfg.rateLimit, burst: cfg.rateLimitBurst, slip: cfg.rateLimitSlip, maxSources: cfg.rateLimitSources, now },
    metrics,
    log: log.child({ component: 'dns' }),
  });
  metrics.onCollect(() => metrics.gauge('netfold_discovery_cells', 'cells whose records are live').set({}, index.cells));
  const http = await startHttpLookup({ index, zone: cfg.zone, metrics, host: cfg.httpHost, port: cfg.httpPort });
  log.info(
    {
      dns: `${cfg.dnsHost}:${dns.port}`,
      http: http.url,
      zone: cfg.zone,
      cells: index.cells,
      maxAnswers: cfg.maxAnswers,
      rateLimit: cfg.rateLimit,
      rateLimitBurst: cfg.rateLimitBurst,
      rateLimitSlip: cfg.rateLimitSlip,
    },
    'discovery-started',
  );

  return {
    index,
    dnsPort: dns.port,
    httpUrl: http.url,
    stats: statsOf(dns.stats, expiry),
    expireNow: expiry.expireNow,
    expiry: expiry.state,
    async stop() {
      expiry.stop();
      await records.stop();
      await dns.stop();
      await http.stop();
      log.info('discovery-stopped');
    },
  };
}

/** The parts' counters seen as one (live: each read goes to the part that owns the count). */
function statsOf(dns: DnsStats, expiry: { readonly expired: number }): Discovery['stats'] {
  return {
    answers: dns.answers,
    rateLimited: dns.rateLimited,
    get dropped() {
      return dns.dropped;
    },
    get expired() {
      return expiry.expired;
    },
  };
}
