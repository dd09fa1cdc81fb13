// The DNS server: UDP and TCP on one port, answering with the pure `answer` (dns.ts). UDP responses are
// rate-limited per source (rate-limit.ts), decided after the answer is built and before it is sent; TCP, where the
// source address is proven by the handshake, is not. Counts answers by response code, unreadable queries dropped
// and rate-limited responses, as stats and as metrics.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket as TcpSocket } from 'node:net';
import type { Logger } from '../../runtime/logger.ts';
import type { Registry } from '../../runtime/metrics.ts';
import { type DnsOptions, type Resolve, answer, truncated } from './dns.ts';
import { type RateLimitOptions, ResponseRateLimiter } from './rate-limit.ts';

/** The most a TCP connection may have buffered (one whole message and its length prefix). */
export const MAX_TCP_BUFFER = 65_537;
/** An idle TCP connection is closed after this. */
const TCP_IDLE_MS = 10_000;

/** Splits DNS-over-TCP bytes into whole messages (each after a two-byte length) and what is left of the next. */
export function takeFrames(buf: Buffer): { frames: Buffer[]; rest: Buffer } {
  const frames: Buffer[] = [];
  while (buf.length >= 2) {
    const len = buf.readUInt16BE(0);
    if (buf.length < 2 + len) break;
    frames.push(buf.subarray(2, 2 + len));
    buf = buf.subarray(2 + len);
  }
  return { frames, rest: buf };
}

/** A message with its two-byte length prefix, for TCP. */
export function framed(bytes: Buffer): Buffer {
  const out = Buffer.alloc(2 + bytes.length);
  out.writeUInt16BE(bytes.length, 0);
  bytes.copy(out, 2);
  return out;
}

export type DnsStats = { answers: Record<string, number>; dropped: number; rateLimited: { dropped: number; slipped: number } };

export type DnsServer = { port: number; stats: DnsStats; stop(): Promise<void> };

export type DnsServerOptions = {
  host: string;
  /** 0: any free port (the same one for UDP and TCP). */
  port: number;
  resolve: Resolve;
  answers: DnsOptions;
  rateLimit: RateLimitOptions;
  metrics: Registry;
  log: Logger;
};

/** Binds UDP, then TCP on the same port, and answers both. */
export async function startDnsServer(opts: DnsServerOptions): Promise<DnsServer> {
  const { resolve, log } = opts;
  const stats: DnsStats = { answers: {}, dropped: 0, rateLimited: { dropped: 0, slipped: 0 } };
  const limiter = new ResponseRateLimiter(opts.rateLimit);
  const mQueries = opts.metrics.counter('netfold_dns_queries_total', 'DNS queries answered, by transport and response code');
  const mDropped = opts.metrics.counter('netfold_dns_dropped_total', 'DNS packets dropped as unreadable');
  const mRateLimited = opts.metrics.counter(
    'netfold_dns_rate_limited_total',
    'UDP responses held back by the per-source rate limit, by action (dropped, or slipped: answered truncated)',
  );
  const count = (rcode: string, transport: 'udp' | 'tcp') => {
    stats.answers[rcode] = (stats.answers[rcode] ?? 0) + 1;
    mQueries.inc({ transport, rcode });
  };
  const unreadable = () => {
    stats.dropped += 1;
    mDropped.inc();
  };

  const onUdp = (udp: UdpSocket) => (msg: Buffer, rinfo: { port: number; address: string }) => {
    try {
      const r = answer(msg, resolve, opts.answers, 'udp');
      if (!r) return unreadable();
      const verdict = limiter.check(rinfo.address);
      if (verdict === 'answer') {
        count(r.rcode, 'udp');
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

  const sockets = new Set<TcpSocket>();
  const onTcp = (sock: TcpSocket) => {
    sockets.add(sock);
    sock.once('close', () => sockets.delete(sock));
    let buf: Buffer = Buffer.alloc(0);
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('data', (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      if (buf.length > MAX_TCP_BUFFER) return sock.destroy();
      const { frames, rest } = takeFrames(buf);
      buf = rest;
      for (const msg of frames) {
        const r = answer(Buffer.from(msg), resolve, opts.answers, 'tcp');
        if (!r) {
          unreadable();
          continue;
        }
        count(r.rcode, 'tcp');
        sock.write(framed(r.bytes));
      }
    });
  };

  /** With port 0, a port free for UDP may be taken for TCP: try another. */
  const bindBoth = async (): Promise<{ udp: UdpSocket; tcp: Server; port: number }> => {
    for (let attempt = 1; ; attempt++) {
      const udp = createSocket('udp4');
      udp.on('message', onUdp(udp));
      await new Promise<void>((res, rej) => {
        udp.once('error', rej);
        udp.bind(opts.port, opts.host, () => res());
      });
      udp.on('error', (err) => log.error({ err }, 'dns-udp-error'));
      const port = udp.address().port;
      const tcp = createServer(onTcp);
      try {
        await new Promise<void>((res, rej) => {
          tcp.once('error', rej);
          tcp.listen(port, opts.host, () => res());
        });
        return { udp, tcp, port };
      } catch (err) {
        await new Promise<void>((r) => udp.close(() => r()));
        if (opts.port !== 0 || attempt >= 10) throw err;
      }
    }
  };
  const { udp, tcp, port } = await bindBoth();

  return {
    port,
    stats,
    async stop() {
      await new Promise<void>((r) => udp.close(() => r()));
      for (const sock of sockets) sock.destroy();
      await new Promise<void>((r) => tcp.close(() => r()));
    },
  };
}
