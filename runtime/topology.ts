// JetStream topology as code: every stream netfold uses, created or updated idempotently at start-up.
import { DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import type { Logger } from './logger.ts';
import { EVENTS_STREAM, EVENT_SUBJECTS } from './subjects.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, cellSubject } from '../projections/cell-stream.ts';
import { withNatsRetry } from './retry.ts';
import { isStreamNotFound } from './nats-adapter.ts';

export type TopologyOptions = {
  /** Stream replicas: 1 on the embedded server, 3 on a real cluster. */
  replicas: number;
  /** Window in which a repeated Nats-Msg-Id is dropped (ms). */
  duplicateWindowMs: number;
  /** Deltas kept per cell: readers further behind than this re-read the snapshot (>= 4x the snapshot cadence). */
  deltasPerCell: number;
};

export const defaultTopologyOptions: TopologyOptions = { replicas: 1, duplicateWindowMs: 120_000, deltasPerCell: 256 };

const ms = (n: number) => n * 1_000_000;

/** The event log: the only source of truth. Nothing is ever deleted from it. */
function eventStreamConfig(opts: TopologyOptions): Partial<StreamConfig> & { name: string } {
  return {
    name: EVENTS_STREAM,
    subjects: [EVENT_SUBJECTS],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.New,
    max_msgs: -1,
    max_bytes: -1,
    max_age: 0,
    num_replicas: opts.replicas,
    duplicate_window: ms(opts.duplicateWindowMs),
    allow_direct: true,
    deny_delete: true,
    deny_purge: true,
  };
}

/** Per-cell output streams: limits retention, the last `perSubject` messages of each cell subject kept. */
function cellStreamConfig(name: string, subject: string, perSubject: number, opts: TopologyOptions): Partial<StreamConfig> & { name: string } {
  return {
    name,
    subjects: [subject],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    max_msgs_per_subject: perSubject,
    num_replicas: opts.replicas,
    duplicate_window: ms(opts.duplicateWindowMs),
    allow_direct: true,
  };
}

/** Each cell's latest full desired state: one message per cell subject. */
const cellSnapshotStreamConfig = (opts: TopologyOptions) => cellStreamConfig(CELL_SNAPSHOTS_STREAM, cellSubject.allSnapshots, 1, opts);

/** Each cell's recent deltas, the last `deltasPerCell` per cell subject. */
const cellDeltaStreamConfig = (opts: TopologyOptions) => cellStreamConfig(CELL_DELTAS_STREAM, cellSubject.allDeltas, opts.deltasPerCell, opts);

export async function ensureTopology(jsm: JetStreamManager, opts: TopologyOptions, log: Logger): Promise<void> {
  for (const config of [eventStreamConfig(opts), cellSnapshotStreamConfig(opts), cellDeltaStreamConfig(opts)]) {
    await withNatsRetry(`ensure-stream ${config.name}`, async () => {
      const existing = await jsm.streams.info(config.name).catch((err: unknown) => {
        if (isStreamNotFound(err)) return null;
        throw err;
      });
      if (!existing) {
        await jsm.streams.add(config);
        log.info({ stream: config.name }, 'stream-created');
        return;
      }
      const drift = Object.entries(config).filter(
        ([k, v]) => k !== 'name' && JSON.stringify((existing.config as Record<string, unknown>)[k]) !== JSON.stringify(v),
      );
      if (drift.length > 0) {
        await jsm.streams.update(config.name, config);
        log.info({ stream: config.name, fields: drift.map(([k]) => k) }, 'stream-updated');
      }
    });
  }
}

