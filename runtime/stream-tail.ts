// A long-lived, in-order reader of a stream (or of one subject of it) that does not stall: every reader that follows
// a stream for the life of its process (the writer's and the planner's log followers, a cell agent's delta feed,
// the discovery records follower) reads through one of these.
//
// On a cluster a reader's consumer lives on one node. When that node dies, nats.js's ordered consumer notices only
// after two missed heartbeats, and with its defaults (30 s pulls, 15 s heartbeats) it was seen idle for 35–90 s
// before delivering again. So a tail (1) pulls with short, chosen timings, and (2) runs a watchdog: while its reader
// waits for a message, it asks the server every `checkMs` for the newest sequence the reader should see (the
// stream's last sequence, or the last message of its one subject); when that is past the last one delivered and
// nothing arrived for `stallMs`, it drops the consumer and creates a new one from the next sequence. A consumer that
// ends or fails is recreated the same way, with a backoff. Recovery is logged (`stream-tail-recovered`, with the
// reason) and counted (`netfold_stream_tail_recoveries_total{reader,reason}`). Messages at or below the last one
// delivered are never delivered again, so recreation is invisible to the reader.
//
// Consumers are created through the cluster's meta leader; when that node is the one lost, no consumer can be created
// until the meta group elects another (seen: 5–10 s, the writer's commands waiting on its fold all that time). A tail
// with `readDirectWhenStuck` reads on meanwhile with direct gets (any replica of the stream answers them) — also
// through the backoff after a creation that failed at once — one message at a time, or, behind on a whole stream,
// DIRECT_AHEAD by sequence at once, until a consumer can be made again.
import { DeliverPolicy, type Consumer, type ConsumerMessages, type OrderedConsumerOptions, type StoredMsg } from '@nats-io/jetstream';
import type { MsgHdrs } from '@nats-io/nats-core';
import type { Bus } from './nats.ts';
import type { Logger } from './logger.ts';
import type { Registry } from './metrics.ts';
import { isNoMessageFound } from './nats-adapter.ts';

export type StreamTailOptions = {
  stream: string;
  /** One subject, or a wildcard covering the whole stream (the watchdog then compares with the stream's end). */
  filter?: string;
  /** Where the first consumer starts: a stream sequence, or the last message of every subject (a KV watch). */
  start: { seq: number } | 'last-per-subject';
  /** Names the reader in logs and metrics. */
  reader: string;
  log: Logger;
  metrics?: Registry;
  /** Messages asked for per pull. */
  maxMessages?: number;
  /** How long one pull waits on the server (ms; nats.js's minimum is 1,000). */
  expiresMs?: number;
  /** Server heartbeat period while a pull waits (ms); two missed make nats.js re-check its consumer. */
  idleHeartbeatMs?: number;
  /** How long the reader may wait without a message while the server holds a newer one (ms). */
  stallMs?: number;
  /** How often the watchdog looks (ms). */
  checkMs?: number;
  /** While no consumer can be created, read with direct gets (the principal must be allowed `DIRECT.GET.<stream>`). */
  readDirectWhenStuck?: boolean;
};

/** What a tail delivers: a consumer's message, or one read with a direct get (`info.pending` then 1 or 0). */
export type TailMsg = {
  seq: number;
  subject: string;
  data: Uint8Array;
  headers?: MsgHdrs | undefined;
  info: { pending: number };
  json<T>(): T;
  string(): string;
};

export type TailRecoveryReason = 'stalled' | 'ended' | 'failed';

/** The timings of a reader that must notice a lost node within a couple of seconds. */
export const FAST_TAIL = { expiresMs: 5_000, idleHeartbeatMs: 1_000, stallMs: 1_500, checkMs: 500 } as const;
/**
 * Cell agents: a thousand of them may share a host (the benchmark's), so longer pulls and fewer probes. The idle
 * heartbeat stays at 1 s: when a pull goes unanswered, two missed heartbeats are what makes nats.js pull again, and
 * at 2.5 s those were the 5–6.6 s late applies of bench:scale's churn (docs/benchmarks.md, issue 16).
 */
export const AGENT_TAIL = { expiresMs: 10_000, idleHeartbeatMs: 1_000, stallMs: 2_000, checkMs: 1_000 } as const;

export class StreamTail implements AsyncIterable<TailMsg> {
  readonly #bus: Bus;
  readonly #o: StreamTailOptions;
  readonly #log: Logger;
  readonly #recoveries: ((reason: TailRecoveryReason) => void) | undefined;
  #messages: ConsumerMessages | undefined;
  #consumer: Consumer | undefined;
  /** Stalled looks in a row at a consumer that still answered (a busy server or reader): given more time, up to 3. */
  #patience = 0;
  #last = 0;
  #started = false;
  #stopped = false;
  /** When the reader last asked for a message and got none yet (undefined: it is busy with one). */
  #waitingSince: number | undefined;
  #lastDeliveryAt = Date.now();
  #closing: TailRecoveryReason | undefined;
  #watchdog: NodeJS.Timeout | undefined;
  #probing = false;
  /** Recreations since the last message delivered: the watchdog backs off while they do not help. */
  #fruitless = 0;
  #nextCheckAt = 0;
  /** When the watchdog last ran: a tick far later than planned means this process was blocked, not the server. */
  #lastTickAt = 0;
  /** Times the consumer was recreated. */
  recoveries = 0;
  /** Times nats.js itself reset the ordered consumer (a delivery-sequence gap) or missed heartbeats (and pulled again). */
  clientResets = 0;
  /** Messages delivered from direct gets while no consumer could be created. */
  readDirect = 0;
  /** Of those, the ones read ahead, several at once (a whole stream, behind). */
  readAhead = 0;
  #markOpened: () => void = () => undefined;
  /** Resolves once the first consumer exists on the server (the reader has started iterating). */
  readonly opened = new Promise<void>((resolve) => (this.#markOpened = resolve));

  constructor(bus: Bus, opts: StreamTailOptions) {
    this.#bus = bus;
    this.#o = opts;
    this.#log = opts.log.child({ component: 'stream-tail', reader: opts.reader, stream: opts.stream });
    if (opts.start !== 'last-per-subject') this.#last = opts.start.seq - 1;
    if (opts.metrics) {
      const c = opts.metrics.counter('netfold_stream_tail_recoveries_total', 'stream readers whose consumer was recreated (stalled, ended or failed)');
      this.#recoveries = (reason) => c.inc({ reader: opts.reader, reason });
    }
  }

  /** The stream sequence of the last message delivered (start − 1 before any). */
  get lastSeq(): number {
    return this.#last;
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<TailMsg> {
    this.#watchdog ??= setInterval(() => void this.#check(), this.#o.checkMs ?? FAST_TAIL.checkMs);
    this.#watchdog.unref();
    let failures = 0;
    try {
      while (!this.#stopped) {
        let messages: ConsumerMessages;
        const direct = this.#o.readDirectWhenStuck === true && this.#started;
        try {
          // A recreation may wait seconds for the meta leader, or fail at once while it is being elected (then tried
          // again after a backoff): a tail that may reads directly meanwhile, the backoff included.
          const backoff = Math.min(100 * 2 ** Math.min(failures + 1, 5), 2_000);
          messages = direct
            ? yield* this.#readWhile(
                this.#open().catch(async (err: unknown) => {
                  await delay(backoff);
                  throw err;
                }),
              )
            : await this.#open();
        } catch (err) {
          if (this.#stopped) return;
          failures += 1;
          this.#log.warn({ err, failures }, 'stream-tail-open-failed');
          if (!direct) await delay(Math.min(100 * 2 ** Math.min(failures, 5), 2_000));
          continue;
        }
        failures = 0;
        let reason: TailRecoveryReason = 'ended';
        try {
          this.#waitingSince = Date.now();
          for await (const m of messages) {
            if (m.seq <= this.#last) continue; // already delivered before a recreation
            this.#last = m.seq;
            this.#lastDeliveryAt = Date.now();
            this.#fruitless = 0;
            this.#patience = 0;
            this.#waitingSince = undefined;
            yield m;
            this.#waitingSince = Date.now();
          }
        } catch (err) {
          if (this.#stopped) return;
          reason = 'failed';
          this.#log.warn({ err }, 'stream-tail-consumer-failed');
        } finally {
          this.#waitingSince = undefined;
          if (this.#messages === messages) this.#messages = undefined;
          await closeQuietly(messages); // also when the reader left the loop (a break): the consumer must not go on pulling
          dropQuietly(this.#consumer);
        }
        if (this.#stopped) return;
        this.#recovered(this.#closing ?? reason);
        this.#closing = undefined;
      }
    } finally {
      clearInterval(this.#watchdog);
      this.#watchdog = undefined;
    }
  }

  async #open(): Promise<ConsumerMessages> {
    const opts: Partial<OrderedConsumerOptions> = this.#o.filter === undefined ? {} : { filter_subjects: this.#o.filter };
    if (!this.#started && this.#o.start === 'last-per-subject') opts.deliver_policy = DeliverPolicy.LastPerSubject;
    else {
      opts.deliver_policy = DeliverPolicy.StartSequence;
      opts.opt_start_seq = this.#last + 1;
    }
    const consumer = await this.#bus.js.consumers.get(this.#o.stream, opts);
    this.#consumer = consumer;
    const messages = await consumer.consume({
      max_messages: this.#o.maxMessages ?? 1024,
      expires: this.#o.expiresMs ?? FAST_TAIL.expiresMs,
      idle_heartbeat: this.#o.idleHeartbeatMs ?? FAST_TAIL.idleHeartbeatMs,
    });
    this.#watchClient(messages);
    this.#started = true;
    this.#markOpened();
    if (this.#stopped) {
      await closeQuietly(messages);
      dropQuietly(consumer);
      throw new Error('stopped');
    }
    this.#messages = messages;
    return messages;
  }

  /** Delivers what direct gets find after the last message delivered, until `opening` settles; then its outcome. */
  async *#readWhile(opening: Promise<ConsumerMessages>): AsyncGenerator<TailMsg, ConsumerMessages> {
    let outcome: { messages: ConsumerMessages } | { err: unknown } | undefined;
    const settled = opening.then(
      (messages) => (outcome = { messages }),
      (err: unknown) => (outcome = { err }),
    );
    let newest = 0;
    while (outcome === undefined && !this.#stopped) {
      let m: StoredMsg | null = null;
      try {
        m = await this.#bus.jsm.direct.getMessage(this.#o.stream, { seq: this.#last + 1, next_by_subj: this.#o.filter ?? '>' });
      } catch (err) {
        if (!isNoMessageFound(err)) this.#log.debug({ err }, 'stream-tail-direct-get-failed');
      }
      if (outcome !== undefined || this.#stopped) break;
      if (!m || m.seq <= this.#last) {
        newest = this.#last;
        await Promise.race([settled, delay(250)]); // caught up: look again in a moment
        continue;
      }
      if (m.seq > newest) newest = (await this.#newestSeq().catch(() => undefined)) ?? m.seq;
      this.#last = m.seq;
      this.#lastDeliveryAt = Date.now();
      this.readDirect += 1;
      yield directMsg(m, m.seq < newest ? 1 : 0);
      // Behind on a whole stream: the next ones by sequence, DIRECT_AHEAD at once, delivered together (one message per
      // round trip made a reader catching up fold — and a planner publish — one event at a time).
      if (this.#o.filter === undefined && newest > this.#last && outcome === undefined && !this.#stopped) {
        for (const next of await this.#readAhead(Math.min(DIRECT_AHEAD, newest - this.#last))) {
          if (outcome !== undefined || this.#stopped) break;
          this.#last = next.seq;
          this.readDirect += 1;
          this.readAhead += 1;
          yield directMsg(next, next.seq < newest ? 1 : 0);
        }
      }
    }
    await settled;
    if (outcome === undefined) throw new Error('stopped');
    if ('err' in outcome) throw outcome.err;
    return outcome.messages;
  }

  /** The `count` messages after the last delivered, by sequence, read at once; only the unbroken run from the first. */
  async #readAhead(count: number): Promise<StoredMsg[]> {
    const from = this.#last + 1;
    const got = await Promise.all(
      Array.from({ length: count }, (_, i) => this.#bus.jsm.direct.getMessage(this.#o.stream, { seq: from + i }).catch(() => null)),
    );
    const run: StoredMsg[] = [];
    for (const [i, m] of got.entries()) {
      if (!m || m.seq !== from + i) break; // (a gap or a failure: the loop goes on one message at a time)
      run.push(m);
    }
    return run;
  }

  /**
   * nats.js's own recoveries, said (info): it re-creates an ordered consumer on a delivery-sequence gap (dropping the
   * message) and pulls again after two missed idle heartbeats; the reader waits meanwhile. The second is what the
   * seconds-late applies in bench:scale's churn were (docs/benchmarks.md, "Performance goals").
   */
  #watchClient(messages: ConsumerMessages): void {
    void (async () => {
      for await (const n of messages.status()) {
        if (n.type !== 'reset' && n.type !== 'heartbeats_missed') continue;
        this.clientResets += 1;
        this.#log.info({ type: n.type, lastSeq: this.#last, idleMs: Date.now() - this.#lastDeliveryAt }, 'stream-tail-client-reset');
      }
    })().catch(() => undefined);
  }

  #recovered(reason: TailRecoveryReason): void {
    this.recoveries += 1;
    this.#recoveries?.(reason);
    this.#log.warn({ reason, lastSeq: this.#last, idleMs: Date.now() - this.#lastDeliveryAt }, 'stream-tail-recovered');
  }

  /** The watchdog: recreates the consumer when the reader waits while the server holds something newer. */
  async #check(): Promise<void> {
    const since = this.#waitingSince;
    const now = Date.now();
    const stallMs = this.#o.stallMs ?? FAST_TAIL.stallMs;
    const late = this.#lastTickAt > 0 && now - this.#lastTickAt > 2 * (this.#o.checkMs ?? FAST_TAIL.checkMs);
    this.#lastTickAt = now;
    // This process's event loop stood still (a burst of work: 250 agents of one host applying a bulk change at once,
    // seen blocking 6 s): what looks like silence is unread input. Judge again a stall period from now.
    if (late) this.#nextCheckAt = Math.max(this.#nextCheckAt, now + stallMs);
    if (this.#probing || this.#stopped || since === undefined || !this.#messages || now < this.#nextCheckAt) return;
    if (now - Math.max(since, this.#lastDeliveryAt) < stallMs) return;
    // Messages received and not yet taken by the reader: it is behind on its own work, the consumer delivers.
    if (this.#messages.getPending() > 0) return;
    this.#probing = true;
    try {
      const newest = await this.#newestSeq();
      if (newest === undefined || newest <= this.#last || this.#waitingSince === undefined) return;
      // A consumer whose server has delivered past what this reader has seen is alive: the reader (or the server)
      // is too busy, and recreating it would only add work (a thousand agents recreating theirs at once overloaded
      // the server further). It gets up to three more stall periods. One that delivered nothing new, or does not
      // answer within 500 ms, is recreated now.
      const delivered = this.#patience < 3 && this.#consumer ? ((await deliveredWithin(this.#consumer, 500)) ?? 0) : 0;
      if (delivered > this.#last) {
        if (this.#patience === 0) this.#log.info({ lastSeq: this.#last, delivered, newest, waitingMs: Date.now() - since }, 'stream-tail-waiting-on-delivered');
        this.#patience += 1;
        this.#nextCheckAt = Date.now() + (this.#o.stallMs ?? FAST_TAIL.stallMs);
        return;
      }
      this.#patience = 0;
      this.#fruitless += 1;
      // A recreation that delivered nothing (e.g. a wildcard filter narrower than the stream): back off up to 30 s.
      this.#nextCheckAt = Date.now() + Math.min(2 ** this.#fruitless * 250, 30_000);
      this.#closing = 'stalled';
      const messages = this.#messages;
      this.#messages = undefined;
      if (messages) await closeQuietly(messages);
    } catch {
      // the server cannot say right now (an election, the node gone): look again next time
    } finally {
      this.#probing = false;
    }
  }

  /** The newest sequence this reader should see, or undefined when the server cannot say. */
  async #newestSeq(): Promise<number | undefined> {
    const f = this.#o.filter;
    if (f !== undefined && !f.includes('*') && !f.includes('>')) {
      try {
        const m = await this.#bus.jsm.direct.getMessage(this.#o.stream, { last_by_subj: f });
        return m?.seq ?? 0;
      } catch (err) {
        if (isNoMessageFound(err)) return 0;
        throw err;
      }
    }
    return (await this.#bus.jsm.streams.info(this.#o.stream)).state.last_seq;
  }

  /** Ends the iteration (the reader's loop sees the end) and stops the watchdog. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#watchdog);
    this.#watchdog = undefined;
    const messages = this.#messages;
    this.#messages = undefined;
    if (messages) await closeQuietly(messages);
  }
}

/**
 * Closes a consumer's messages without waiting more than a moment: nats.js's close() of an ordered consumer whose
 * consume() has only just begun was seen never to resolve.
 */
async function closeQuietly(messages: ConsumerMessages): Promise<void> {
  const closing = messages.close().then(
    () => undefined,
    () => undefined,
  );
  await Promise.race([closing, delay(1_000)]);
}

/**
 * Deletes a consumer no one reads any more, without waiting: nats.js leaves a closed ordered consumer on the server
 * until its inactivity threshold (5 minutes), so every recreation and every reader that caught up and stopped (a cell
 * feed going live) would leave one behind.
 */
function dropQuietly(consumer: Consumer | undefined): void {
  consumer?.delete().catch(() => undefined);
}

/** The last stream sequence a consumer has delivered, if its info comes back within `ms`. */
async function deliveredWithin(consumer: Consumer, ms: number): Promise<number | undefined> {
  const info = consumer.info().then(
    (i) => i.delivered.stream_seq,
    () => undefined,
  );
  return Promise.race([info, delay(ms).then(() => undefined)]);
}

/** A message read with a direct get, shaped as a tail delivers it. */
function directMsg(m: StoredMsg, pending: number): TailMsg {
  return { seq: m.seq, subject: m.subject, data: m.data, headers: m.header, info: { pending }, json: <T>() => m.json<T>(), string: () => m.string() };
}

/** Messages a tail reading with direct gets asks for at once when it is behind (a whole stream only). */
const DIRECT_AHEAD = 64;

const delay = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms).unref());
