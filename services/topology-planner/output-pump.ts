// The planner's ordered output pipeline: outputs (deltas, snapshots), "published through" marks and checkpoints go
// into one queue in log order; outputs are published with up to `window` in flight; a mark advances
// `publishedThrough` once every output queued before it is acknowledged (marks never block publishing: waiting at
// each cost a round trip per batch); a checkpoint is written only once everything before it is acknowledged. When
// the queue is long, `drained()` tells the log follower to stop reading until it is half empty (backpressure).
// No NATS here: `publish` and `writeCheckpoint` are given, so the ordering rules are tested without a server.
import type { PlannerOutput } from '../../projections/cell-stream.ts';
import type { Logger } from '../../runtime/logger.ts';
import { Progress } from '../../runtime/progress.ts';

/**
 * `through` with `members`: the mark after a change of members (and the take-over outputs it caused); once it
 * passes, everything the planner owns under those members is published through it.
 */
export type PumpItem = { output: PlannerOutput } | { checkpoint: { seq: number; json: string } } | { through: number; members?: readonly string[] };

export type OutputPumpOptions = {
  /** Publishes one output; resolves once it is acknowledged. A rejection is logged, never ends the pump. */
  publish: (o: PlannerOutput) => Promise<void>;
  /** Stores a checkpoint; resolves once it is stored. */
  writeCheckpoint: (seq: number, json: string) => Promise<void>;
  /** Most outputs awaiting acknowledgement at once. */
  window: number;
  /** The revision published through at start (the checkpoint's). */
  from: number;
  /** Called whenever a mark passes (the planner announces it to readers of its progress), with a member mark's members. */
  onPublishedThrough?: (seq: number, members?: readonly string[]) => void;
  log: Logger;
  /** Queue length at which the follower is held back (read at each check: it may follow the number of cells). */
  highWater?: number | (() => number);
};

export class OutputPump {
  readonly #o: OutputPumpOptions;
  /** Items from `#head` on are queued (taken by index: `shift` on a queue of ~20,000 moved them all each time). */
  #queue: PumpItem[] = [];
  #head = 0;
  readonly #highWater: () => number;
  /** Highest event-log sequence whose outputs are all acknowledged. */
  readonly publishedThrough: Progress<number>;
  readonly stats = { checkpoints: 0, failed: 0 };
  #wake: (() => void) | undefined;
  #drainedWaiter: (() => void) | undefined;
  #stopping = false;
  readonly #done: Promise<void>;

  constructor(opts: OutputPumpOptions) {
    this.#o = opts;
    const highWater = opts.highWater ?? 20_000;
    this.#highWater = typeof highWater === 'number' ? () => highWater : highWater;
    this.publishedThrough = new Progress(opts.from);
    this.#done = this.#run();
  }

  get queued(): number {
    return this.#queue.length - this.#head;
  }

  enqueue(items: readonly PumpItem[]): void {
    if (items.length === 0) return;
    for (const item of items) this.#queue.push(item);
    this.#wake?.();
  }

  /** The next item queued, if any; the taken ones are dropped from the array now and then. */
  #take(): PumpItem | undefined {
    if (this.#head === this.#queue.length) {
      if (this.#head > 0) this.#queue = [];
      this.#head = 0;
      return undefined;
    }
    const item = this.#queue[this.#head]!;
    this.#queue[this.#head++] = undefined as unknown as PumpItem; // (no longer held)
    if (this.#head >= 4096 && this.#head * 2 >= this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  /** Undefined while the queue is short; otherwise resolves once it has drained to half the high-water mark. */
  drained(): Promise<void> | undefined {
    return this.queued < this.#highWater() ? undefined : new Promise<void>((resolve) => (this.#drainedWaiter = resolve));
  }

  async #run(): Promise<void> {
    const inFlight = new Set<Promise<void>>();
    let marks: Promise<void> = Promise.resolve();
    const settleAll = async () => {
      while (inFlight.size > 0) await Promise.race(inFlight);
      await marks;
    };
    for (;;) {
      const item = this.#take();
      if (this.#drainedWaiter && this.queued < this.#highWater() / 2) {
        this.#drainedWaiter();
        this.#drainedWaiter = undefined;
      }
      if (!item) {
        if (this.#stopping) break;
        await new Promise<void>((r) => (this.#wake = r));
        this.#wake = undefined;
        continue;
      }
      if ('output' in item) {
        const p = this.#o.publish(item.output).catch((err: unknown) => {
          this.stats.failed += 1;
          this.#o.log.error({ err, cell: item.output.cellId }, 'planner-publish-failed');
        });
        const tracked = p.finally(() => inFlight.delete(tracked));
        inFlight.add(tracked);
        if (inFlight.size >= this.#o.window) await Promise.race(inFlight);
      } else if ('through' in item) {
        // The chain keeps the marks in order: each waits for the outputs in flight when it was reached.
        const covering = [...inFlight];
        const { through, members } = item;
        marks = marks
          .then(() => Promise.all(covering))
          .then(() => {
            this.publishedThrough.advance(Math.max(this.publishedThrough.value, through));
            this.#o.onPublishedThrough?.(this.publishedThrough.value, members);
          });
      } else {
        await settleAll();
        const { seq, json } = item.checkpoint;
        await this.#o
          .writeCheckpoint(seq, json)
          .then(() => {
            this.stats.checkpoints += 1;
            this.#o.log.debug({ seq }, 'planner-checkpoint-written');
          })
          .catch((err: unknown) => this.#o.log.error({ err }, 'planner-checkpoint-failed'));
      }
    }
    await settleAll();
  }

  /** Publishes what is queued, then ends; waiters on `publishedThrough` are released. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wake?.();
    await this.#done;
    this.#drainedWaiter?.();
    this.publishedThrough.cancelAll('planner stopped');
  }
}
