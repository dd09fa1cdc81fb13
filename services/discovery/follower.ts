// The records follower: a watch on the discovery bucket (not a poll) kept in the index. A put is parsed by the
// record's owner (projections/discovery-record.ts); a delete or purge removes the cell. `followRecords` resolves once
// the bucket's contents at start are in the index, so the service never answers from an empty index it has not read.
import { Kvm, type KvWatchEntry } from '@nats-io/kv';
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { bucketOptions, createOrOpenBucket } from '../../runtime/topology.ts';
import { DISCOVERY_BUCKET } from '../../runtime/subjects.ts';
import { parseDiscoveryRecord } from '../../projections/discovery-record.ts';
import type { DiscoveryIndex } from './records.ts';

/** What the follower reads of a watch entry. */
export type RecordEntry = Pick<KvWatchEntry, 'key' | 'operation' | 'value'>;

/** Applies one watch entry to the index at `now` (the index's clock); an unreadable record changes nothing. */
export function applyRecordEntry(index: DiscoveryIndex, e: RecordEntry, now: number): 'put' | 'removed' | 'invalid' {
  if (e.operation !== 'PUT') {
    index.remove(e.key);
    return 'removed';
  }
  const names = parseDiscoveryRecord(e.value);
  if (!names) return 'invalid';
  index.put(e.key, names, now);
  return 'put';
}

export type RecordsFollower = { stop(): Promise<void> };

/** Creates the bucket if needed, watches it into the index and resolves once its initial contents are in. */
export async function followRecords(opts: { bus: Bus; index: DiscoveryIndex; replicas: number; now: () => number; log: Logger }): Promise<RecordsFollower> {
  const { index, now, log } = opts;
  const kv = await createOrOpenBucket(DISCOVERY_BUCKET, () => new Kvm(opts.bus.js).create(DISCOVERY_BUCKET, bucketOptions.discovery(opts.replicas)));
  const watcher = await kv.watch();
  const initial = (await kv.status()).values;
  let caughtUp: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  if (initial === 0) caughtUp();
  const watching = (async () => {
    for await (const e of watcher as AsyncIterable<KvWatchEntry>) {
      if (applyRecordEntry(index, e, now()) === 'invalid') log.warn({ cell: e.key }, 'discovery-record-invalid');
      if (e.delta === 0 || e.isUpdate) caughtUp(); // the initial contents are in
    }
  })().catch((err: unknown) => log.error({ err }, 'discovery-watch-failed'));
  await ready;
  return {
    async stop() {
      watcher.stop();
      await watching;
    },
  };
}
