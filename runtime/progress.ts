// Waiting on progress, never on sleep: callers wait until a watched value satisfies a condition; the owner of the
// value calls `advance` whenever it changes. Each wait has a timeout and rejects with a retryable error.
import { UnavailableError } from './errors.ts';

type Waiter<V> = { check: (v: V) => boolean; resolve: () => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

export class Progress<V> {
  #value: V;
  #waiters: Waiter<V>[] = [];

  constructor(initial: V) {
    this.#value = initial;
  }

  get value(): V {
    return this.#value;
  }

  /** Sets the value and wakes every waiter whose condition now holds. */
  advance(value: V): void {
    this.#value = value;
    if (this.#waiters.length === 0) return;
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.check(value)) return true;
      clearTimeout(w.timer);
      w.resolve();
      return false;
    });
  }

  /** Resolves once `check(value)` holds; rejects with UnavailableError after `timeoutMs`. */
  until(check: (v: V) => boolean, timeoutMs: number, what: string): Promise<void> {
    if (check(this.#value)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w.timer !== timer);
        reject(new UnavailableError(`${what} not reached within ${timeoutMs} ms`));
      }, timeoutMs);
      this.#waiters.push({ check, resolve, reject, timer });
    });
  }

  /** Rejects every pending wait (on stop). */
  cancelAll(reason: string): void {
    for (const w of this.#waiters) {
      clearTimeout(w.timer);
      w.reject(new UnavailableError(reason));
    }
    this.#waiters = [];
  }
}
