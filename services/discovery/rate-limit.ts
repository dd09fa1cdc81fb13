// Response rate limiting for DNS over UDP, after BIND's RRL: a token bucket per source address. Within the
// limit a query is answered; over it most are dropped and every `slip`-th is answered truncated and empty (TC), so a
// real resolver retries over TCP (which is not limited this way) while a spoofed victim gets nothing bigger than the
// query. The clock comes in (`now`), so tests control time.
//
// Memory is bounded: at most `maxSources` buckets, kept in least-recently-used order (a Map re-inserted on use).
// A bucket idle long enough to be full again is the same as no bucket, so idle ones are evicted first; when every
// bucket is busy the least recently used one goes.

export type RateLimitOptions = {
  /** Responses per second per source; 0 turns the limiter off. */
  ratePerSecond: number;
  /** Responses a source may get at once (the bucket's size). */
  burst: number;
  /** Every slip-th over-limit query is answered truncated (TC); 0: all dropped; 1: all truncated. */
  slip: number;
  /** Most sources tracked at once. */
  maxSources: number;
  now: () => number;
};

export type Verdict = 'answer' | 'slip' | 'drop';

type Bucket = { tokens: number; at: number; over: number };

export const defaultRateLimit = { ratePerSecond: 100, burst: 100, slip: 2, maxSources: 10_000 } as const;

export class ResponseRateLimiter {
  readonly #opts: RateLimitOptions;
  readonly #buckets = new Map<string, Bucket>();
  /** Milliseconds an empty bucket takes to be full again: idle that long, it can be forgotten. */
  readonly #refillMs: number;

  constructor(opts: RateLimitOptions) {
    this.#opts = opts;
    this.#refillMs = opts.ratePerSecond > 0 ? Math.ceil((opts.burst / opts.ratePerSecond) * 1000) : 0;
  }

  get enabled(): boolean {
    return this.#opts.ratePerSecond > 0;
  }

  /** Sources currently tracked. */
  get size(): number {
    return this.#buckets.size;
  }

  /** Decides what to do with one response to `source`, and counts it. */
  check(source: string): Verdict {
    if (!this.enabled) return 'answer';
    const now = this.#opts.now();
    this.#evictIdle(now);
    let b = this.#buckets.get(source);
    if (b) {
      this.#buckets.delete(source); // re-inserted below: the Map stays in least-recently-used order
      b.tokens = Math.min(this.#opts.burst, b.tokens + (Math.max(0, now - b.at) * this.#opts.ratePerSecond) / 1000);
      b.at = now;
    } else {
      if (this.#buckets.size >= this.#opts.maxSources) this.#buckets.delete(this.#buckets.keys().next().value!);
      b = { tokens: this.#opts.burst, at: now, over: 0 };
    }
    this.#buckets.set(source, b);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      b.over = 0;
      return 'answer';
    }
    b.over += 1;
    return this.#opts.slip > 0 && b.over % this.#opts.slip === 0 ? 'slip' : 'drop';
  }

  /** Drops the least recently used buckets that have been idle long enough to be full again. */
  #evictIdle(now: number): void {
    for (const [source, b] of this.#buckets) {
      if (now - b.at < this.#refillMs) return; // this one and every later one were used more recently
      this.#buckets.delete(source);
    }
  }
}
