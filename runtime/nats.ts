// One way to connect to NATS for every service: reconnects for ever, logs connection state changes, and (for a
// process that asks: the policy-writer) writes to the socket at most once per turn of the event loop.
import { errors as natsErrors, nkeyAuthenticator, type NatsConnection } from '@nats-io/nats-core';
import { NatsConnectionImpl, setTransportFactory } from '@nats-io/nats-core/internal';
import { NodeTransport, nodeResolveHost } from '@nats-io/transport-node/lib/node_transport.js';
import type { NodeConnectionOptions } from '@nats-io/transport-node';
import { jetstream, jetstreamManager, type JetStreamClient, type JetStreamManager } from '@nats-io/jetstream';
import type { Logger } from './logger.ts';
import { NetfoldError, UnavailableError } from './errors.ts';
import type { NatsClientSettings } from './config.ts';
import { readCredentialFile } from './authz.ts';

export type { NatsConnection } from '@nats-io/nats-core';

export type Bus = {
  nc: NatsConnection;
  js: JetStreamClient;
  jsm: JetStreamManager;
  close(): Promise<void>;
};

export type ConnectOptions = {
  servers: string | string[];
  name: string;
  log: Logger;
  /** How long to keep trying the first connection (ms). */
  connectTimeoutMs?: number;
  /** Timeout of JetStream API calls and publishes (ms). */
  apiTimeoutMs?: number;
  /** On a secured server: the nkey seed to sign in with and the inbox prefix the user may subscribe to (runtime/authz.ts). */
  credential?: { seed: string; inboxPrefix: string };
  /** TLS to the server (nats.js's `tls`: CA, client certificate and key files). */
  tls?: { caFile?: string; certFile?: string; keyFile?: string };
  /** Write what a turn of the event loop sends at once (CoalescingTransport): for a process that mostly sends. */
  coalesceWrites?: boolean;
};

/** What `--nats-creds` and `--nats-tls-*` add to the connect options: the credential file read, the TLS files. */
export function clientAuthOf(settings: NatsClientSettings): Pick<ConnectOptions, 'credential' | 'tls'> {
  return {
    ...(settings.credsFile !== undefined && { credential: readCredentialFile(settings.credsFile) }),
    ...(settings.tls && { tls: settings.tls }),
  };
}

/**
 * nats.js's Node transport, writing what a turn of the event loop sends in one system call. The client flushes its
 * outbound buffer on a microtask, so a process answering many messages at once (the writer: an append per command,
 * then a reply) made one `write` per few messages — 15% of the writer's CPU under load (docs/benchmarks.md,
 * "Ingest"). Here the socket is corked at the first send of a turn and uncorked by setImmediate: the sends of that
 * turn leave together (one writev), at most one turn later. Only for a process that sends far more than it reads:
 * in one that reads a burst (1,000 cell agents in four processes taking a 54 MB settle), a turn lasts seconds and
 * its pull requests waited with it — consumers looked stalled and were recreated (bench:scale, 24 → 76 s to enforce).
 */
class CoalescingTransport extends NodeTransport {
  #corked = false;

  override send(frame: Uint8Array): void {
    const socket = this.socket;
    if (socket && !this.#corked && !socket.destroyed) {
      this.#corked = true;
      socket.cork();
      setImmediate(() => {
        this.#corked = false;
        socket.uncork();
      });
    }
    super.send(frame);
  }
}

/**
 * nats.js's `connect` for Node, with the coalescing transport when asked. (The factory is the library's global, read
 * at every (re)connect: in a process mixing both kinds, a reconnect takes the kind of the latest connect.)
 */
function connect(opts: NodeConnectionOptions, coalesceWrites: boolean): Promise<NatsConnection> {
  setTransportFactory({ factory: () => (coalesceWrites ? new CoalescingTransport() : new NodeTransport()), dnsResolveFn: nodeResolveHost });
  return NatsConnectionImpl.connect(opts);
}

export async function connectBus(opts: ConnectOptions): Promise<Bus> {
  const log = opts.log.child({ component: 'nats' });
  const deadline = Date.now() + (opts.connectTimeoutMs ?? 15000);
  let nc: NatsConnection | undefined;
  let lastErr: unknown;
  while (!nc && Date.now() < deadline) {
    try {
      nc = await connect(
        {
          servers: opts.servers,
          name: opts.name,
          maxReconnectAttempts: -1,
          reconnectTimeWait: 250,
          pingInterval: 10_000,
          ...(opts.credential && {
            authenticator: nkeyAuthenticator(new TextEncoder().encode(opts.credential.seed)),
            inboxPrefix: opts.credential.inboxPrefix,
          }),
          ...(opts.tls && { tls: opts.tls }),
        },
        opts.coalesceWrites === true,
      );
    } catch (err) {
      lastErr = err;
      // refused credentials (or none where the server requires some) stay refused: no point trying for the deadline
      if (err instanceof natsErrors.AuthorizationError) {
        throw new NetfoldError(`NATS at ${String(opts.servers)} refused the connection's credentials`, 'nats-unauthorized', 401, false, err);
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
  if (!nc) throw new UnavailableError(`could not connect to NATS at ${String(opts.servers)}`, lastErr);
  const conn = nc;
  log.info({ server: conn.getServer() }, 'nats-connected');
  void (async () => {
    for await (const s of conn.status()) {
      if (s.type === 'disconnect' || s.type === 'reconnect' || s.type === 'error') {
        log.warn({ status: s.type }, 'nats-status');
      }
    }
  })().catch(() => undefined);
  const timeout = opts.apiTimeoutMs ?? 5000;
  const js = jetstream(conn, { timeout });
  const jsm = await jetstreamManager(conn, { timeout, checkAPI: false });
  return {
    nc: conn,
    js,
    jsm,
    async close() {
      if (conn.isClosed()) return;
      try {
        await conn.drain();
      } catch {
        await conn.close();
      }
    },
  };
}
