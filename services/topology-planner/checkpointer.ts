// The planner's checkpoints: when one is due (a pure rule, clock given), and where they are kept (an object store,
// one object per planner id). A checkpoint is taken between batches (the core is consistent there) and written by
// the output pump once every output before it is acknowledged.
import { Objm, type ObjectStore } from '@nats-io/obj';
import type { Bus } from '../../runtime/nats.ts';
import { withNatsRetry } from '../../runtime/retry.ts';
import { bucketOptions, createOrOpenBucket } from '../../runtime/topology.ts';
import { PLANNER_CHECKPOINT_BUCKET } from '../../runtime/subjects.ts';
import type { PlannerCheckpoint, PlannerCore } from './core.ts';
import type { PumpItem } from './output-pump.ts';

/** Decides when a checkpoint is due: something new folded, and `intervalMs` since the last one (or forced). */
export class Checkpointer {
  #lastAt: number;
  #lastSeq: number;

  constructor(
    private readonly core: Pick<PlannerCore, 'seq' | 'checkpoint' | 'stale'>,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {
    this.#lastAt = now();
    this.#lastSeq = core.seq;
  }

  /** The checkpoint to queue now, if one is due (never while the core is fast-forwarded and not settled). */
  due(force = false): PumpItem[] {
    const seq = this.core.seq;
    if (this.core.stale || seq <= this.#lastSeq || (!force && this.now() - this.#lastAt < this.intervalMs)) return [];
    this.#lastAt = this.now();
    this.#lastSeq = seq;
    return [{ checkpoint: { seq, json: JSON.stringify(this.core.checkpoint()) } }];
  }
}

/** The object store of one planner's checkpoint. */
export class CheckpointStore {
  private constructor(
    private readonly objects: ObjectStore,
    private readonly name: string,
  ) {}

  static async open(bus: Bus, plannerId: string, replicas: number): Promise<CheckpointStore> {
    const objects = await createOrOpenBucket(PLANNER_CHECKPOINT_BUCKET, () =>
      new Objm(bus.js).create(PLANNER_CHECKPOINT_BUCKET, bucketOptions.plannerCheckpoint(replicas)),
    );
    return new CheckpointStore(objects, `planner-${plannerId}`);
  }

  /** The stored checkpoint; null when there is none or it is of an older format (the log is replayed instead). */
  async load(): Promise<PlannerCheckpoint | null> {
    const blob = await withNatsRetry('planner checkpoint read', () => this.objects.getBlob(this.name));
    if (!blob) return null;
    let cp: unknown;
    try {
      cp = JSON.parse(new TextDecoder().decode(blob));
    } catch {
      return null; // not ours: start from the log
    }
    return isCheckpoint(cp) ? cp : null;
  }

  write(json: string): Promise<void> {
    return withNatsRetry('planner checkpoint', async () => {
      await this.objects.putBlob({ name: this.name }, new TextEncoder().encode(json));
    });
  }
}

function isCheckpoint(v: unknown): v is PlannerCheckpoint {
  if (typeof v !== 'object' || v === null) return false;
  const c = v as Partial<PlannerCheckpoint>;
  if (c.v !== 2 || !Number.isSafeInteger(c.seq) || typeof c.cells !== 'object' || c.cells === null) return false;
  return Object.values(c.cells).every((t) => typeof t === 'object' && t !== null && Number.isSafeInteger(t.revision) && Number.isSafeInteger(t.sinceSnapshot));
}
