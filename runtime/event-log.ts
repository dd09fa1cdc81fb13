// The event log on JetStream: appending with per-subject optimistic concurrency, reading back in order, and
// following it into a pure fold (the model every service keeps in memory).
import { DeliverPolicy } from '@nats-io/jetstream';
import { StreamPublisher, type PublishOptions, isNoMessageFound } from './nats-adapter.ts';
import { type EventEnvelope, type RecordedEvent, parseEvent } from '../events/catalogue.ts';
import type { Bus } from './nats.ts';
import type { Logger } from './logger.ts';
import { EVENTS_STREAM } from './subjects.ts';
import { withNatsRetry } from './retry.ts';
import { Progress } from './progress.ts';
import { StreamTail, FAST_TAIL } from './stream-tail.ts';
import type { Registry } from './metrics.ts';

export type AppendOptions = {
  /** The sequence of the last event on this subject that the decision saw (0: none). */
  expectedSubjectSeq: number;
  /** How long to keep retrying a publish that got no answer (same Nats-Msg-Id, so it is stored at most once). */
  deadlineMs?: number;
};

export class EventLog {
  readonly #bus: Bus;
  readonly #stream: string;
  readonly #publisher: StreamPublisher;

  constructor(bus: Bus, stream = EVENTS_STREAM, opts: { ackTimeoutMs?: number } = {}) {
    this.#bus = bus;
    this.#stream = stream;
    this.#publisher = new StreamPublisher(bus.nc, stream, opts);
  }

  get stream(): string {
    return this.#stream;
  }

  /**
   * Appends one event with the aggregate's expected last sequence; returns its stream sequence (the revision).
   * Appends are plain publishes on one shared inbox (StreamPublisher): the path the design notes measured at
   * ~110k msgs/s here, where js.publish reaches ~20k. An unanswered publish is re-sent with the same msg id.
   */
  async append(subject: string, event: EventEnvelope, opts: AppendOptions): Promise<number> {
    const publish: PublishOptions = { msgId: event.id, expectedSubjectSeq: opts.expectedSubjectSeq };
    if (opts.deadlineMs !== undefined) publish.deadlineMs = opts.deadlineMs;
    const { seq } = await this.#publisher.publish(subject, JSON.stringify(event), publish);
    return seq;
  }

  /** The sequence of the last event on a subject, read from the server (0 when there is none). */
  async lastSubjectSeq(subject: string): Promise<number> {
    return withNatsRetry(
      `last sequence of ${subject}`,
      async () => {
        try {
          const m = await this.#bus.jsm.direct.getMessage(this.#stream, { last_by_subj: subject });
          return m ? m.seq : 0;
        } catch (err) {
          if (isNoMessageFound(err)) return 0;
          throw err;
        }
      },
      { deadlineMs: 15_000 },
    );
  }

  /** The stream's last sequence. */
  async lastSeq(): Promise<number> {
    const info = await withNatsRetry('stream info', () => this.#bus.jsm.streams.info(this.#stream), { deadlineMs: 15_000 });
    return info.state.last_seq;
  }

  /** Reads events in order from `fromSeq` up to `toSeq` (inclusive; default: the stream's end at the call). */
  async *read(fromSeq = 1, log?: Logger, toSeq?: number): AsyncGenerator<RecordedEvent | { seq: number; subject: string; invalid: string }> {
    const last = Math.min(toSeq ?? Infinity, await this.lastSeq());
    if (last < fromSeq) return;
    const consumer = await this.#bus.js.consumers.get(this.#stream, {
      deliver_policy: DeliverPolicy.StartSequence,
      opt_start_seq: fromSeq,
    });
    const messages = await consumer.consume({ max_messages: 4096 });
    const invalid = new InvalidReporter(log);
    try {
      for await (const m of messages) {
        const parsed = decode(m.seq, m.subject, m.data, invalid);
        yield parsed;
        if (m.seq >= last) break;
      }
    } finally {
      await messages.close();
    }
  }
}

/**
 * Says that log entries were skipped as not events, without flooding the log: the first LOGGED_INVALID of a reader
 * one line each, then one line per SUMMARY_EVERY more (`event-invalid-repeated`, with the count so far). A log
 * written full of garbage (a raw benchmark, an attacker with write access) would otherwise make a reader write one
 * line per entry — 100,000 lines in the planner's cold start over the 1M-event bench log.
 */
class InvalidReporter {
  static readonly LOGGED_INVALID = 100;
  static readonly SUMMARY_EVERY = 10_000;
  #count = 0;

  constructor(private readonly log: Logger | undefined) {}

  report(fields: { seq: number; subject: string; issues?: unknown }, msg: 'event-not-json' | 'event-invalid'): void {
    this.#count += 1;
    if (this.#count <= InvalidReporter.LOGGED_INVALID) this.log?.warn(fields, msg);
    else if (this.#count % InvalidReporter.SUMMARY_EVERY === 0) this.log?.warn({ seq: fields.seq, skipped: this.#count }, 'event-invalid-repeated');
  }
}

function decode(seq: number, subject: string, data: Uint8Array, invalid?: InvalidReporter): RecordedEvent | { seq: number; subject: string; invalid: string } {
  let raw: unknown;
  try {
    raw = JSON.parse(Buffer.from(data).toString('utf8'));
  } catch {
    invalid?.report({ seq, subject }, 'event-not-json');
    return { seq, subject, invalid: 'not JSON' };
  }
  const r = parseEvent(raw);
  if (!r.ok) {
    invalid?.report({ seq, subject, issues: r.issues.slice(0, 5) }, 'event-invalid');
    return { seq, subject, invalid: r.issues.map((i) => `${i.path}: ${i.message}`).join('; ') };
  }
  return { seq, subject, event: r.value };
}

/**
 * Folds the log from its start up to `toSeq` (default: its end at the call) into `state`, fold only, in batches of
 * 1,000 — the one way a process rebuilds a state from the log (the planner's restart, the operators' tools): an
 * entry that holds no valid event goes through `fold.skip`, exactly as the live follower does. `stopBefore` ends the
 * fold before a record (e.g. the first one after a point in time); `onProgress` sees the count folded.
 */
export async function foldLog<S>(
  eventLog: EventLog,
  fold: Pick<Fold<S>, 'apply' | 'skip'>,
  state: S,
  opts: { toSeq?: number; log?: Logger; stopBefore?: (rec: RecordedEvent) => boolean; onProgress?: (folded: number) => void } = {},
): Promise<S> {
  let batch: RecordedEvent[] = [];
  let folded = 0;
  const flush = () => {
    if (batch.length === 0) return;
    state = fold.apply(state, batch);
    folded += batch.length;
    batch = [];
    opts.onProgress?.(folded);
  };
  for await (const r of eventLog.read(1, opts.log, opts.toSeq)) {
    if (!('event' in r)) {
      flush();
      state = fold.skip(state, r.seq, r.subject, r.invalid);
      continue;
    }
    if (opts.stopBefore?.(r)) break;
    batch.push(r);
    if (batch.length >= 1000) flush();
  }
  flush();
  return state;
}

export type Fold<S> = {
  /** Makes the state to start from. */
  initial: () => S;
  /** Folds recorded events (in order) into the state. Pure. */
  apply(state: S, batch: readonly RecordedEvent[]): S;
  /** Moves the state past a log entry that holds no valid event (`error` says why). */
  skip(state: S, seq: number, subject: string, error: string): S;
  /** When set, awaited after each folded batch: the follower reads no further until it resolves (backpressure). */
  drained?: () => Promise<void> | undefined;
  seqOf(state: S): number;
};

/**
 * Follows the event log with an ordered consumer and keeps a fold of it in memory. `ready()` resolves once the
 * fold has caught up with the log as it was at start; `waitFor(seq)` resolves once a given revision is folded.
 */
export class LogFollower<S> {
  readonly #bus: Bus;
  readonly #fold: Fold<S>;
  readonly #log: Logger;
  readonly #stream: string;
  #state: S;
  readonly #metrics: Registry | undefined;
  #tail: StreamTail | undefined;
  /** The revision folded so far; starts at the initial state's (a planner resuming from a checkpoint is already there). */
  readonly #progress: Progress<number>;
  #loop: Promise<void> | undefined;
  #stopped = false;
  readonly #invalid: InvalidReporter;
  readonly #listeners = new Set<(state: S, batch: readonly RecordedEvent[]) => void>();

  constructor(bus: Bus, fold: Fold<S>, log: Logger, opts: { stream?: string; initialState?: S; metrics?: Registry } = {}) {
    this.#bus = bus;
    this.#metrics = opts.metrics;
    this.#fold = fold;
    this.#log = log.child({ component: 'log-follower' });
    this.#invalid = new InvalidReporter(this.#log);
    this.#stream = opts.stream ?? EVENTS_STREAM;
    this.#state = opts.initialState ?? fold.initial();
    this.#progress = new Progress(fold.seqOf(this.#state));
  }

  get state(): S {
    return this.#state;
  }

  get seq(): number {
    return this.#fold.seqOf(this.#state);
  }

  /** How many events the log held past the last one delivered, when it was delivered (0: caught up). */
  get behind(): number {
    return this.#behind;
  }

  #behind = 0;

  /** Called after every folded batch with the new state. */
  onFold(listener: (state: S, batch: readonly RecordedEvent[]) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Starts following; resolves when the state covers the log as it was when this was called. */
  async start(): Promise<void> {
    const info = await this.#bus.jsm.streams.info(this.#stream);
    const target = info.state.last_seq;
    this.#tail = new StreamTail(this.#bus, {
      stream: this.#stream,
      start: { seq: this.seq + 1 },
      reader: 'log-follower',
      readDirectWhenStuck: true, // the writer's commands wait on this fold
      log: this.#log,
      ...(this.#metrics && { metrics: this.#metrics }),
      maxMessages: 2048,
      ...FAST_TAIL,
    });
    this.#loop = this.#run(this.#tail);
    await this.#tail.opened; // started means reading: its consumer exists (also when the log is empty)
    await this.waitFor(target, 600_000);
    this.#log.info({ seq: this.seq }, 'log-follower-caught-up');
  }

  async #run(messages: StreamTail): Promise<void> {
    // A batch is what has arrived by the time the event loop turns (or 1000 events): messages delivered together
    // are folded together, and one arriving alone is folded at once. (Waiting for the consumer to report nothing
    // pending held events back for seconds while the log was being written steadily.)
    let batch: RecordedEvent[] = [];
    let scheduled: NodeJS.Immediate | undefined;
    const flushNow = () => {
      if (scheduled) clearImmediate(scheduled);
      scheduled = undefined;
      const b = batch;
      batch = [];
      this.#flush(b);
    };
    try {
      for await (const m of messages) {
        if (batch.length === 0) {
          const wait = this.#fold.drained?.();
          if (wait) await wait;
        }
        const rec = decode(m.seq, m.subject, m.data, this.#invalid);
        if ('invalid' in rec) {
          flushNow();
          this.#state = this.#fold.skip(this.#state, rec.seq, rec.subject, rec.invalid);
          this.#wake();
          continue;
        }
        batch.push(rec);
        this.#behind = m.info.pending;
        if (m.info.pending === 0 || batch.length >= 1000) flushNow();
        else scheduled ??= setImmediate(flushNow);
      }
      flushNow();
    } catch (err) {
      if (scheduled) clearImmediate(scheduled);
      if (!this.#stopped) this.#log.error({ err }, 'log-follower-failed');
    }
  }

  #flush(batch: RecordedEvent[]): void {
    if (batch.length === 0) return;
    this.#state = this.#fold.apply(this.#state, batch);
    for (const l of this.#listeners) {
      try {
        l(this.#state, batch);
      } catch (err) {
        this.#log.error({ err }, 'log-follower-listener-failed');
      }
    }
    this.#wake();
  }

  #wake(): void {
    this.#progress.advance(this.seq);
  }

  /** Resolves once the fold covers `seq`; rejects with UnavailableError after `timeoutMs`. */
  waitFor(seq: number, timeoutMs = 10_000): Promise<void> {
    return this.#progress.until((at) => at >= seq, timeoutMs, `the model at revision ${seq} (now ${this.seq})`);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#progress.cancelAll('log follower stopped');
    await this.#tail?.stop();
    await this.#loop;
  }
}
