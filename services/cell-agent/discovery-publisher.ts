// The discovery publisher: the cell's discovery record (KV `netfold-discovery`, key = cell; shape and building in
// projections/discovery-record.ts) put after an apply that may have changed the names — before the converger
// announces the revision, so "applied" includes the names — and re-put every heartbeat, so a reader can tell the
// agent is alive. A put that fails is logged, never thrown: the next apply or heartbeat puts it again.
import type { Logger } from '../../runtime/logger.ts';
import type { CellState } from '../../projections/cell.ts';
import { discoveryRecordOf } from '../../projections/discovery-record.ts';
import type { CellView } from './feed.ts';

/** Where the record goes: a `BucketWriter` on the discovery bucket. */
export type DiscoveryWriter = { put(key: string, value: string): Promise<unknown> };

export class DiscoveryPublisher {
  readonly #cellId: string;
  readonly #names: () => CellState['names'];
  readonly #writer: DiscoveryWriter;
  readonly #log: Logger;
  readonly #heartbeatMs: number;
  readonly #now: () => Date;
  /** The feed's `namesSeq` last published after an apply: unchanged names need no put (the heartbeat re-puts them). */
  #publishedSeq = -1;
  #heartbeat: NodeJS.Timeout | undefined;

  /** `names`: the names to publish now (the feed's current state, read at each put). */
  constructor(opts: { cellId: string; names: () => CellState['names']; writer: DiscoveryWriter; log: Logger; heartbeatMs: number; now?: () => Date }) {
    this.#cellId = opts.cellId;
    this.#names = opts.names;
    this.#writer = opts.writer;
    this.#log = opts.log.child({ component: 'discovery-publisher' });
    this.#heartbeatMs = opts.heartbeatMs;
    this.#now = opts.now ?? (() => new Date());
  }

  /** After a successful apply of `view`, before its revision is announced: puts the record if the names may have changed. */
  async applied(view: Pick<CellView, 'namesSeq'>): Promise<void> {
    if (view.namesSeq === this.#publishedSeq) return;
    await this.publish();
    this.#publishedSeq = view.namesSeq;
  }

  /** Puts the record now (what every heartbeat does). */
  publish(): Promise<unknown> {
    const record = discoveryRecordOf(this.#cellId, this.#now(), this.#names());
    return this.#writer.put(this.#cellId, JSON.stringify(record)).catch((err: unknown) => this.#log.warn({ err }, 'discovery-put-failed'));
  }

  /** Starts the heartbeat. */
  start(): void {
    this.#heartbeat = setInterval(() => void this.publish(), this.#heartbeatMs);
  }

  stop(): void {
    clearInterval(this.#heartbeat);
  }
}
