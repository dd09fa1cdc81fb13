// Expiry of silent cells (Cloud Foundry's soft state): a cell not heard of for the threshold has its records
// dropped — but never while this service is disconnected from NATS, nor during one threshold after it reconnects,
// so a bus outage does not empty DNS.
//   ExpiryPolicy  pure: connection events and the clock in, "may cells expire now?" out
//   startExpiry   the part that runs it: follows the connection's status, checks periodically, counts and logs
import type { Logger } from '../../runtime/logger.ts';
import type { DiscoveryIndex } from './records.ts';

export type ExpiryState = { readonly connected: boolean; /** No expiry before this time (set to reconnect + threshold). */ readonly pausedUntil: number };

/** When silent cells may expire, from the connection's events and the clock (both passed in). */
export class ExpiryPolicy implements ExpiryState {
  #connected = true;
  #pausedUntil = 0;

  constructor(private readonly thresholdMs: number) {}

  get connected(): boolean {
    return this.#connected;
  }

  get pausedUntil(): number {
    return this.#pausedUntil;
  }

  /** The connection was lost: nothing expires until it is back and one threshold has passed. */
  disconnected(): void {
    this.#connected = false;
  }

  /** The connection is back at `now`: returns the time until which expiry stays paused. */
  reconnected(now: number): number {
    this.#connected = true;
    this.#pausedUntil = now + this.thresholdMs;
    return this.#pausedUntil;
  }

  mayExpire(now: number): boolean {
    return this.#connected && now >= this.#pausedUntil;
  }
}

/** A connection status event as nats.js reports them (`nc.status()`); only the type is read. */
export type ConnectionStatus = { type: string };

export type Expiry = {
  /** Runs the expiry check now (it also runs periodically); returns the cells dropped. */
  expireNow(): string[];
  readonly state: ExpiryState;
  /** Cells dropped so far. */
  readonly expired: number;
  stop(): void;
};

/** How often the periodic check runs: a quarter of the threshold, between 50 ms and 1 s. */
export const expiryCheckIntervalOf = (thresholdMs: number) => Math.max(50, Math.min(1000, Math.floor(thresholdMs / 4)));

/** Expires the index's silent cells periodically and on demand, paused as the policy says. */
export function startExpiry(opts: {
  index: DiscoveryIndex;
  thresholdMs: number;
  statuses: AsyncIterable<ConnectionStatus>;
  now: () => number;
  log: Logger;
}): Expiry {
  const { index, now, log } = opts;
  const policy = new ExpiryPolicy(opts.thresholdMs);
  let expired = 0;
  void (async () => {
    for await (const s of opts.statuses) {
      if (s.type === 'disconnect') policy.disconnected();
      if (s.type === 'reconnect') {
        const pausedUntil = policy.reconnected(now());
        log.info({ pausedUntil: new Date(pausedUntil).toISOString() }, 'discovery-expiry-paused');
      }
    }
  })().catch(() => undefined);
  const expireNow = () => {
    const at = now();
    if (!policy.mayExpire(at)) return [];
    const dropped = index.expire(at);
    if (dropped.length > 0) {
      expired += dropped.length;
      log.info({ cells: dropped }, 'discovery-records-expired');
    }
    return dropped;
  };
  const timer = setInterval(expireNow, expiryCheckIntervalOf(opts.thresholdMs));
  return {
    expireNow,
    state: policy,
    get expired() {
      return expired;
    },
    stop: () => clearInterval(timer),
  };
}
