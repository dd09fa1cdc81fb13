// Request/reply over one shared inbox subscription: publish with a reply subject `<inbox>.<token>` and match the
// answer by token. Per request this costs one publish and a map entry, where nc.request (and js.publish, built on
// it) also builds error objects and a subscription entry per call; with many requests in flight that difference
// was most of the client's CPU. Used for event-log appends and by the benchmarks' load generators.
import { createInbox, type Msg, type MsgHdrs, type NatsConnection, type Subscription } from '@nats-io/nats-core';

/** No answer within the timeout. The request may or may not have been acted on. */
export class RequestTimeout extends Error {
  constructor(subject: string, ms: number) {
    super(`no answer on ${subject} within ${ms} ms`);
    this.name = 'RequestTimeout';
  }
}

/**
 * The connection was lost and re-established while the request waited: its answer, if one was sent, went to the
 * old connection. Waiting out the timeout would only add seconds to a node's failure; the caller may send it again
 * at once (a RequestTimeout: the request may or may not have been acted on).
 */
export class RequestInterrupted extends RequestTimeout {
  constructor(subject: string) {
    super(subject, 0);
    this.message = `the connection was re-established while waiting for an answer on ${subject}`;
    this.name = 'RequestInterrupted';
  }
}

type Pending = { subject: string; resolve: (m: Msg) => void; reject: (e: Error) => void; timer: NodeJS.Timeout };

export class InboxRequester {
  readonly #nc: NatsConnection;
  readonly #prefix: string;
  readonly #pending = new Map<string, Pending>();
  #sub: Subscription | undefined;
  #next = 0;

  constructor(nc: NatsConnection) {
    this.#nc = nc;
    this.#prefix = createInbox(inboxPrefixOf(nc));
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  /** Every request waiting when the connection comes back is answered with RequestInterrupted. */
  async #watchReconnects(): Promise<void> {
    for await (const s of this.#nc.status()) {
      if (s.type !== 'reconnect') continue;
      for (const [token, p] of this.#pending) {
        this.#pending.delete(token);
        clearTimeout(p.timer);
        p.reject(new RequestInterrupted(p.subject));
      }
    }
  }

  /**
   * `keepWaiting`, asked each time `timeoutMs` passes without an answer: true waits another `timeoutMs` (the other
   * side is known to be alive and working through what was sent before), false gives up with RequestTimeout.
   */
  request(subject: string, payload: string | Uint8Array, opts: { headers?: MsgHdrs; timeoutMs: number; keepWaiting?: () => boolean }): Promise<Msg> {
    if (!this.#sub) void this.#watchReconnects();
    this.#sub ??= this.#nc.subscribe(`${this.#prefix}.*`, {
      callback: (_err, msg) => {
        const token = msg.subject.slice(this.#prefix.length + 1);
        const p = this.#pending.get(token);
        if (!p) return; // answered after its timeout; the caller has moved on
        this.#pending.delete(token);
        clearTimeout(p.timer);
        p.resolve(msg);
      },
    });
    const token = (this.#next++).toString(36);
    return new Promise<Msg>((resolve, reject) => {
      const expire = () => {
        const p = this.#pending.get(token);
        if (!p) return;
        if (opts.keepWaiting?.()) {
          p.timer = setTimeout(later, opts.timeoutMs);
          return;
        }
        this.#pending.delete(token);
        reject(new RequestTimeout(subject, opts.timeoutMs));
      };
      // Decided after the loop's I/O: when the process was busy for longer than the timeout (a long computation), the
      // answer may be waiting in the socket, and timers run before it is read.
      const later = () => void setImmediate(expire);
      const timer = setTimeout(later, opts.timeoutMs);
      this.#pending.set(token, { subject, resolve, reject, timer });
      try {
        this.#nc.publish(subject, payload, opts.headers ? { reply: `${this.#prefix}.${token}`, headers: opts.headers } : { reply: `${this.#prefix}.${token}` });
      } catch (err) {
        this.#pending.delete(token);
        clearTimeout(timer);
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    });
  }
}

/**
 * The connection's inbox prefix (`_INBOX` unless set): a user on a secured server may subscribe only under its own
 * (runtime/authz.ts). nats.js keeps it in the connection's options, which its public type does not show.
 */
function inboxPrefixOf(nc: NatsConnection): string | undefined {
  return (nc as unknown as { options?: { inboxPrefix?: string } }).options?.inboxPrefix;
}
