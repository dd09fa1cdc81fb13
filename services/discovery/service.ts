// The discovery service: keeps the agents' records (a KV watch, not a poll), expires silent cells, and answers DNS
// over UDP and TCP and an HTTP lookup for tools. UDP responses are rate-limited per source (rate-limit.ts); TCP,
// where the source address is proven by the handshake, is not.
import { createSocket, type Socket } from 'node:dgram';
import { createServer, type Server } from 'node:net';
import Fastify from 'fastify';
import { Kvm, type KvWatchEntry } from '@nats-io/kv';
import type { Bus } from '../../runtime/nats.ts';
import type { Config } from '../../runtime/config.ts';
import type { Logger } from '../../runtime/logger.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { DISCOVERY_BUCKET } from '../../runtime/subjects.ts';
import { parseDiscoveryRecord } from '../../projections/discovery-record.ts';
import { DEFAULT_DOMAIN } from '../../projections/cell.ts';
import { DiscoveryIndex, type ExpiryState } from './records.ts';
import { DEFAULT_MAX_ANSWERS, answer, truncated } from './dns.ts';
import { ResponseRateLimiter, defaultRateLimit } from './rate-limit.ts';
import { CONTENT_TYPE, Registry } from '../../runtime/metrics.ts';

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
  stats: { answers: Record<string, number>; dropped: number; expired: number; rateLimited: { dropped: number; slipped: number } };
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
  const index = new DiscoveryIndex(cfg.expiryMs);
  const stats = { answers: {} as Record<string, number>, dropped: 0, expired: 0, rateLimited: { dropped: 0, slipped: 0 } };
  const expiry: ExpiryState = { connected: true, pausedUntil: 0 };

  // ---- records: watch the bucket ----
  const kv = await withNatsRetry('discovery bucket', () => new Kvm(deps.bus.js).create(DISCOVERY_BUCKET, { history: 1, replicas: cfg.replicas }));
  const watcher = await kv.watch();
  const initial = (await kv.status()).values;
  let caughtUp: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  if (initial === 0) caughtUp();
  const watching = (async () => {
    for await (const e of watcher as AsyncIterable<KvWatchEntry>) {
      if (e.operation === 'PUT') {
        const names = parseDiscoveryRecord(e.value);
        if (names) index.put(e.key, names, now());
        else log.warn({ cell: e.key }, 'discovery-record-invalid');
      } else {
        index.remove(e.key);
      }
      if (e.delta === 0 || e.isUpdate) caughtUp(); // the initial contents are in
    }
  })().catch((err: unknown) => log.error({ err }, 'discovery-watch-failed'));
  await ready;

  // ---- expiry, paused while disconnected and for one threshold after reconnecting ----
  void (async () => {
    for await (const s of deps.bus.nc.status()) {
      if (s.type === 'disconnect') expiry.connected = false;
      if (s.type === 'reconnect') {
        expiry.connected = true;
        expiry.pausedUntil = now() + cfg.expiryMs;
        log.info({ pausedUntil: new Date(expiry.pausedUntil).toISOString() }, 'discovery-expiry-paused');
      }
    }
  })().catch(() => undefined);
  const expireNow = () => {
    const dropped = index.expire(now(), expiry);
    if (dropped.length > 0) {
      stats.expired += dropped.length;
      log.info({ cells: dropped }, 'discovery-records-expired');
    }
    return dropped;
  };
  const pruner = setInterval(expireNow, Math.max(50, Math.min(1000, Math.floor(cfg.expiryMs / 4))));

  const resolve = (fqdn: string) => index.lookup(fqdn);
  const opts = { zone: cfg.zone, ttl: cfg.ttl, random: Math.random, maxAnswers: cfg.maxAnswers };
  const limiter = new ResponseRateLimiter({ ratePerSecond: cfg.rateLimit, burst: cfg.rateLimitBurst, slip: cfg.rateLimitSlip, maxSources: cfg.rateLimitSources, now });
  const metrics = deps.metrics ?? new Registry();
  const mQueries = metrics.counter('netfold_dns_queries_total', 'DNS queries answered, by transport and response code');
  const mDropped = metrics.counter('netfold_dns_dropped_total', 'DNS packets dropped as unreadable');
  const mRateLimited = metrics.counter('netfold_dns_rate_limited_total', 'UDP responses held back by the per-source rate limit, by action (dropped, or slipped: answered truncated)');
  metrics.onCollect(() => metrics.gauge('netfold_discovery_cells', 'cells whose records are live').set({}, index.cells));
  const count = (rcode: string, transport: 'udp' | 'tcp' = 'udp') => {
    stats.answers[rcode] = (stats.answers[rcode] ?? 0) + 1;
    mQueries.inc({ transport, rcode });
  };

  // ---- DNS over UDP and TCP on one port ----
  const onUdp = (udp: Socket) => (msg: Buffer, rinfo: { port: number; address: string }) => {
    try {
      const r = answer(msg, resolve, opts, 'udp');
      if (!r) {
        stats.dropped += 1;
        mDropped.inc();
        return;
      }
      const verdict = limiter.check(rinfo.address);
      if (verdict === 'answer') {
        count(r.rcode);
        udp.send(r.bytes, rinfo.port, rinfo.address);
        return;
      }
      const tc = verdict === 'slip' ? truncated(msg) : null;
      if (tc) {
        stats.rateLimited.slipped += 1;
        mRateLimited.inc({ action: 'slipped' });
        udp.send(tc, rinfo.port, rinfo.address);
      } else {
        stats.rateLimited.dropped += 1;
        mRateLimited.inc({ action: 'dropped' });
      }
    } catch (err) {
      stats.dropped += 1;
      log.warn({ err }, 'dns-udp-failed');
    }
  };
  const sockets = new Set<import('node:net').Socket>();
  const onTcp = (sock: import('node:net').Socket) => {
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
    let buf = Buffer.alloc(0);
    sock.setTimeout(10_000, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > 65_537) return sock.destroy();
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (buf.length < 2 + len) break;
        const msg = buf.subarray(2, 2 + len);
        buf = buf.subarray(2 + len);
        const r = answer(Buffer.from(msg), resolve, opts, 'tcp');
        if (!r) {
          stats.dropped += 1;
          mDropped.inc();
          continue;
        }
        count(r.rcode, 'tcp');
        const out = Buffer.alloc(2 + r.bytes.length);
        out.writeUInt16BE(r.bytes.length, 0);
        r.bytes.copy(out, 2);
        sock.write(out);
      }
    });
  };
  /** Binds UDP, then TCP on the same port; with port 0, a port free for UDP may be taken for TCP: try another. */
  const bindBoth = async (): Promise<{ udp: Socket; tcp: Server; port: number }> => {
    for (let attempt = 1; ; attempt++) {
      const udp = createSocket('udp4');
      udp.on('message', onUdp(udp));
      await new Promise<void>((res, rej) => {
        udp.once('error', rej);
        udp.bind(cfg.dnsPort, cfg.dnsHost, () => res());
      });
      udp.on('error', (err) => log.error({ err }, 'dns-udp-error'));
      const port = udp.address().port;
      const tcp = createServer(onTcp);
      try {
        await new Promise<void>((res, rej) => {
          tcp.once('error', rej);
          tcp.listen(port, cfg.dnsHost, () => res());
        });
        return { udp, tcp, port };
      } catch (err) {
        await new Promise<void>((r) => udp.close(() => r()));
        if (cfg.dnsPort !== 0 || attempt >= 10) throw err;
      }
    }
  };
  const { udp, tcp, port: dnsPort } = await bindBoth();

  // ---- HTTP lookup ----
  const http = Fastify({ logger: false });
  http.get('/healthz', async () => ({ ok: true, cells: index.cells }));
  http.get('/metrics', async (_req, reply) => reply.type(CONTENT_TYPE).send(metrics.render()));
  http.get('/v1/registration/:name', async (req, reply) => {
    const raw = String((req.params as { name: string }).name).toLowerCase().replace(/\.$/, '');
    const fqdn = raw === cfg.zone || raw.endsWith(`.${cfg.zone}`) ? raw : `${raw}.${cfg.zone}`;
    const hosts = index.lookup(fqdn).map((h) => ({ ip_address: h.ip, cell_id: h.cellId }));
    if (hosts.length === 0) return reply.status(404).send({ code: 'not-found', error: `no instances of ${fqdn}` });
    return { name: fqdn, hosts };
  });
  const httpUrl = await http.listen({ host: cfg.httpHost, port: cfg.httpPort });
  log.info(
    { dns: `${cfg.dnsHost}:${dnsPort}`, http: httpUrl, zone: cfg.zone, cells: index.cells, maxAnswers: cfg.maxAnswers, rateLimit: cfg.rateLimit, rateLimitBurst: cfg.rateLimitBurst, rateLimitSlip: cfg.rateLimitSlip },
    'discovery-started',
  );

  return {
    index,
    dnsPort,
    httpUrl,
    stats,
    expireNow,
    expiry,
    async stop() {
      clearInterval(pruner);
      watcher.stop();
      await watching;
      await new Promise<void>((r) => udp.close(() => r()));
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((r) => tcp.close(() => r()));
      await http.close();
      log.info('discovery-stopped');
    },
  };
}
