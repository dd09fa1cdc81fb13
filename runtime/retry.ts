// Retrying NATS calls through the stalls of a cluster (a stream leader election takes 5-8 s; the client may report
// it as a timeout, "no responders" or "jetstream not enabled").
import { type NetfoldError, UnavailableError, toNetfoldError } from './errors.ts';
import { isTransientNatsError } from './nats-adapter.ts';

export { isTransientNatsError };

export type RetryOptions = { deadlineMs?: number; baseDelayMs?: number };

/** Runs `work` until it succeeds, fails with a non-transient error, or the deadline passes. */
export async function withNatsRetry<T>(what: string, work: () => Promise<T>, opts: RetryOptions = {}): Promise<T> {
  const deadline = Date.now() + (opts.deadlineMs ?? 30_000);
  let delay = opts.baseDelayMs ?? 100;
  for (;;) {
    try {
      return await work();
    } catch (err) {
      if (!isTransientNatsError(err)) throw err;
      if (Date.now() + delay > deadline) throw new UnavailableError(`${what}: NATS did not answer in time`, err);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 2000);
    }
  }
}

/** Maps anything thrown to a NetfoldError; NATS stalls become a retryable 503 `unavailable`. */
export function toServiceError(err: unknown): NetfoldError {
  if (isTransientNatsError(err)) return new UnavailableError('NATS did not answer in time; try again', err);
  return toNetfoldError(err);
}
