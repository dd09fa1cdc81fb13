// The records follower: the discovery bucket followed (not polled) into the index. A put is parsed by the
// record's owner (projections/discovery-record.ts); a delete or purge removes the cell. `followRecords` resolves once
// the bucket's contents at start are in the index, so the service never answers from an empty index it has not read.
import { Kvm, type KvWatchEntry } from '@nats-io/kv';
import type { Registry } from '../../runtime/metrics.ts';
import { StreamTail, FAST_TAIL } from '../../runtime/stream-tail.ts';
import { kvLayout } from '../../runtime/nats-adapter.ts';
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

/**
 * Creates the bucket if needed, follows it into the index (the last entry of every key, then every change, through a
 * StreamTail: a lost node does not stall it) and resolves once its initial contents are in.
 */
export async function followRecords(opts: {
  bus: Bus;
  index: DiscoveryIndex;
  replicas: number;
  now: () => number;
  log: Logger;
  metrics?: Registry;
}): Promise<RecordsFollower> {
  const { index, now, log } = opts;
  const kv = await createOrOpenBucket(DISCOVERY_BUCKET, () => new Kvm(opts.bus.js).create(DISCOVERY_BUCKET, bucketOptions.discovery(opts.replicas)));
  const initial = (await kv.status()).values;
  const prefix = kvLayout.prefix(DISCOVERY_BUCKET);
  const tail = new StreamTail(opts.bus, {
    stream: kvLayout.stream(DISCOVERY_BUCKET),
    filter: kvLayout.subject(DISCOVERY_BUCKET, '>'),
    start: 'last-per-subject',
    reader: 'discovery-records',
    readDirectWhenStuck: true,
    log,
    ...(opts.metrics && { metrics: opts.metrics }),
    ...FAST_TAIL,
  });
  let caughtUp: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (caughtUp = resolve));
  if (initial === 0) caughtUp();
  const following = (async () => {
    for await (const m of tail) {
      const key = m.subject.slice(prefix.length);
      const op = m.headers?.get('KV-Operation');
      const entry: RecordEntry = { key, operation: op === 'DEL' || op === 'PURGE' ? op : 'PUT', value: m.data };
      if (applyRecordEntry(index, entry, now()) === 'invalid') log.warn({ cell: key }, 'discovery-record-invalid');
      if (m.info.pending === 0) caughtUp(); // the initial contents are in
    }
  })().catch((err: unknown) => log.error({ err }, 'discovery-watch-failed'));
  await ready;
  return {
    async stop() {
      await tail.stop();
      await following;
    },
  };
}
