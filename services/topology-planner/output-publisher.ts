// The planner's outputs onto the cell streams, fenced: every output is published with the expected last sequence
// of its subject (what this planner last stored there, or found there), one at a time per subject. Two planners can
// believe they own one cell for a moment (a planner cut off from the bus is declared dead and its cells taken over,
// and it goes on publishing what it had folded once it is back); without the fence their outputs interleave, and the
// last message of the cell's subject — what readers, restarts and the enforcement answer take as the cell's latest
// plan — may be an older revision than one stored before it (seen in the chaos test: a take-over snapshot and link at
// 221, then the old owner's deltas 166…220 after them, and its own 221 dropped as a duplicate of the msg id).
//
// With the fence an output lands only directly after what its planner knows to be there. When the subject moved
// (WrongExpectedSequenceError), the planner reads its last message: if that plan is as new as the output or newer,
// the output is superseded (dropped, and everything of the cell up to that revision with it: the cell's head is
// raised); if it is older, the output is published after it. So a subject's last message always carries the newest
// revision stored there. A reader whose chain this breaks (a delta following a revision it never saw) finds a gap
// and reads the cell's state from its owner (services/cell-agent/feed.ts).
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { StreamPublisher, WrongExpectedSequenceError } from '../../runtime/nats-adapter.ts';
import { UnavailableError } from '../../runtime/errors.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, type PlannerOutput, outputMessage, outputSubject } from '../../projections/cell-stream.ts';
import { isAlreadyPlanned, lastStoredOn } from './published.ts';

export type PublishOutcome = 'sent' | 'resent' | 'suppressed' | 'superseded';

export class OutputPublisher {
  readonly stats = { deltas: 0, snapshots: 0, suppressed: 0, superseded: 0 };
  #counter: { inc(labels: { kind: string }): void } | undefined;
  readonly #bus: Bus;
  readonly #log: Logger;
  readonly #publishers: Record<PlannerOutput['kind'], StreamPublisher>;
  /** Per cell, the newest revision its subjects are known to hold: outputs at or below it are not sent. */
  readonly #heads: Map<string, number>;
  /** Per subject, the stream sequence of its last message as this planner knows it (absent: none). */
  readonly #lastSeq: Map<string, number>;
  /** Per subject, the publish in progress: the next waits for it. */
  readonly #busy = new Map<string, Promise<unknown>>();
  #closed = false;

  /**
   * `heads` and `lastSeq`: what the cell streams held when the planner started (published.ts, `publishedHeads`);
   * both are kept up to date from then on.
   */
  constructor(bus: Bus, heads: ReadonlyMap<string, number>, lastSeq: ReadonlyMap<string, number>, log: Logger) {
    this.#bus = bus;
    this.#log = log;
    this.#heads = new Map(heads);
    this.#lastSeq = new Map(lastSeq);
    this.#publishers = { delta: new StreamPublisher(bus.nc, CELL_DELTAS_STREAM), snapshot: new StreamPublisher(bus.nc, CELL_SNAPSHOTS_STREAM) };
  }

  countInto(counter: { inc(labels: { kind: string }): void }): void {
    this.#counter = counter;
  }

  /**
   * Publishes one output after the previous one on its subject, sending it again for as long as the stream is
   * unavailable (an output is never dropped while the planner runs, unless a newer plan of its cell is stored).
   * `resent`: it went out more than once; `superseded`: the subject holds a plan as new or newer.
   */
  async publish(o: PlannerOutput): Promise<PublishOutcome> {
    const subject = outputSubject(o);
    const before = this.#busy.get(subject);
    const mine = (before ?? Promise.resolve()).then(() => this.#publishFenced(o));
    const settled = mine.catch(() => undefined);
    this.#busy.set(subject, settled);
    try {
      return await mine;
    } finally {
      if (this.#busy.get(subject) === settled) this.#busy.delete(subject);
    }
  }

  async #publishFenced(o: PlannerOutput): Promise<PublishOutcome> {
    const { subject, msgId, body } = outputMessage(o);
    let resent = false;
    let conflicts = 0;
    for (;;) {
      if (isAlreadyPlanned(o, this.#heads.get(o.cellId))) {
        this.stats.suppressed += 1;
        return 'suppressed';
      }
      const expectedSubjectSeq = this.#lastSeq.get(subject) ?? 0;
      try {
        const { attempts, seq, duplicate } = await this.#publishers[o.kind].publish(subject, body, { msgId, expectedSubjectSeq });
        resent ||= attempts > 1;
        // a duplicate is answered with the original's sequence: stored before (by this planner, or another)
        if (seq > expectedSubjectSeq) this.#lastSeq.set(subject, seq);
        if (resent) this.#log.warn({ cell: o.cellId, kind: o.kind, revision: o.revision, seq, duplicate, attempts }, 'planner-publish-resent');
        break;
      } catch (err) {
        if (err instanceof WrongExpectedSequenceError && !this.#closed) {
          // (a subject someone keeps writing: take turns rather than spin)
          if (++conflicts > 2) await new Promise((r) => setTimeout(r, Math.min(50 * conflicts, 1000)));
          // another planner wrote the subject: publish after its message if this output is newer, else drop it
          const last = await withNatsRetry(`the last ${o.kind} of ${o.cellId}`, () => lastStoredOn(this.#bus, o.kind, o.cellId), { deadlineMs: 15_000 });
          this.#lastSeq.set(subject, last?.seq ?? 0);
          // (a message there that is not a plan — garbage, a forgery — is no newer plan: published after it)
          if (last && last.revision !== null && last.revision >= o.revision) {
            this.#heads.set(o.cellId, Math.max(this.#heads.get(o.cellId) ?? 0, last.revision));
            this.stats.superseded += 1;
            this.#log.warn({ cell: o.cellId, kind: o.kind, revision: o.revision, stored: last.revision }, 'planner-output-superseded');
            return 'superseded';
          }
          this.#log.warn({ cell: o.cellId, kind: o.kind, revision: o.revision, stored: last?.revision ?? null }, 'planner-output-fenced');
          continue;
        }
        if (!(err instanceof UnavailableError) || this.#closed) throw err;
        resent = true;
        this.#log.warn({ err, cell: o.cellId, kind: o.kind, revision: o.revision }, 'planner-publish-retrying');
      }
    }
    if (o.kind === 'delta') this.stats.deltas += 1;
    else this.stats.snapshots += 1;
    this.#counter?.inc({ kind: o.kind });
    return resent ? 'resent' : 'sent';
  }

  /** Outputs that cannot be published from now on fail instead of being sent again (the planner is stopping). */
  close(): void {
    this.#closed = true;
  }
}
