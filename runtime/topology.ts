// JetStream topology as code: every stream netfold uses, created or updated idempotently at start-up, and the KV and
// object-store buckets the services use. Only an admin may create or update them (runtime/authz.ts): a service signed
// in with its own role checks that what it reads exists, and stops with `topology-missing` when it does not.
import { DiscardPolicy, RetentionPolicy, StorageType, type JetStreamManager, type StreamConfig } from '@nats-io/jetstream';
import type { Logger } from './logger.ts';
import { EVENTS_STREAM, EVENT_SUBJECTS } from './subjects.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, cellSubject } from '../projections/cell-stream.ts';
import { withNatsRetry } from './retry.ts';
import { isPermissionViolation, isStreamNotFound } from './nats-adapter.ts';
import { ConfigError } from './errors.ts';
import { Kvm } from '@nats-io/kv';
import { Objm } from '@nats-io/obj';
import type { JetStreamClient } from '@nats-io/jetstream';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET, PLANNER_CHECKPOINT_BUCKET, PLANNER_MEMBERS_BUCKET } from './subjects.ts';

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

const topologyMissing = (what: string, cause: unknown) => {
  const err = new ConfigError(
    `${what} does not exist and this process's NATS user may not create it: run "netfold up" or any service once with an admin credential`,
    'topology-missing',
  );
  err.cause = cause;
  return err;
};

/**
 * Creates or updates the streams. A user who may not manage streams (a permissions violation on create or update)
 * only checks them: a stream it may not even read is not its concern, a drifted one is logged, a missing one is
 * ConfigError `topology-missing`.
 */
export async function ensureTopology(jsm: JetStreamManager, opts: TopologyOptions, log: Logger): Promise<void> {
  for (const config of [eventStreamConfig(opts), cellSnapshotStreamConfig(opts), cellDeltaStreamConfig(opts)]) {
    await withNatsRetry(`ensure-stream ${config.name}`, async () => {
      const existing = await jsm.streams.info(config.name).catch((err: unknown) => {
        if (isStreamNotFound(err)) return null;
        if (isPermissionViolation(err)) return 'not-visible' as const;
        throw err;
      });
      if (existing === 'not-visible') {
        log.debug({ stream: config.name }, 'stream-not-readable-skipped');
        return;
      }
      if (!existing) {
        await jsm.streams.add(config).catch((err: unknown) => {
          throw isPermissionViolation(err) ? topologyMissing(`stream ${config.name}`, err) : err;
        });
        log.info({ stream: config.name }, 'stream-created');
        return;
      }
      const drift = Object.entries(config).filter(
        ([k, v]) => k !== 'name' && JSON.stringify((existing.config as Record<string, unknown>)[k]) !== JSON.stringify(v),
      );
      if (drift.length > 0) {
        const updated = await jsm.streams.update(config.name, config).then(
          () => true,
          (err: unknown) => {
            if (isPermissionViolation(err)) return false;
            throw err;
          },
        );
        const fields = drift.map(([k]) => k);
        if (updated) log.info({ stream: config.name, fields }, 'stream-updated');
        else log.warn({ stream: config.name, fields }, 'stream-differs-not-updated');
      }
    });
  }
}

/**
 * Opening a bucket a service creates if it is missing (`Kvm.create` / `Objm.create` of an existing bucket only reads
 * its stream's info): a permissions violation means it is missing and this user may not create it.
 */
export async function createOrOpenBucket<T>(bucket: string, create: () => Promise<T>): Promise<T> {
  try {
    return await withNatsRetry(`bucket ${bucket}`, create);
  } catch (err) {
    throw isPermissionViolation(err) ? topologyMissing(`bucket ${bucket}`, err) : err;
  }
}

/** The buckets' settings, for their creators: the services (on an open server) and the admin (`ensureBuckets`). */
export const bucketOptions = {
  cellStatus: (replicas: number) => ({ history: 1, replicas }),
  discovery: (replicas: number) => ({ history: 1, replicas }),
  plannerMembers: (replicas: number, ttlMs: number) => ({ history: 1, ttl: ttlMs, replicas }),
  plannerCheckpoint: (replicas: number) => ({ replicas }),
} as const;

/** Creates every bucket as an admin, before the services that use them start with their own roles (`netfold up`). */
export async function ensureBuckets(js: JetStreamClient, opts: { replicas: number; plannerMemberTtlMs: number }): Promise<void> {
  const kvm = new Kvm(js);
  await createOrOpenBucket(CELL_STATUS_BUCKET, () => kvm.create(CELL_STATUS_BUCKET, bucketOptions.cellStatus(opts.replicas)));
  await createOrOpenBucket(DISCOVERY_BUCKET, () => kvm.create(DISCOVERY_BUCKET, bucketOptions.discovery(opts.replicas)));
  const members = bucketOptions.plannerMembers(opts.replicas, opts.plannerMemberTtlMs);
  await createOrOpenBucket(PLANNER_MEMBERS_BUCKET, () => kvm.create(PLANNER_MEMBERS_BUCKET, members));
  await createOrOpenBucket(PLANNER_CHECKPOINT_BUCKET, () => new Objm(js).create(PLANNER_CHECKPOINT_BUCKET, bucketOptions.plannerCheckpoint(opts.replicas)));
}
