// Reading the latest message of every subject of a stream (KV buckets included): the stream's subjects listed
// (STREAM.INFO with a subjects filter), then each one's last message read from the stream leader (STREAM.MSG.GET
// last_by_subj), a few hundred requests in flight. Every subject that had a message when the call began, and still
// has one, is in the answer, with a message at least as new as the one it had then.
//
// Not a consumer with deliver policy "last per subject" (issue 14): nats-server 2.9 starts one from the list of each
// subject's last sequence taken at creation, and when such a message is gone by the time it is sent (replaced, in a
// stream that keeps one message per subject: KV buckets, cell snapshots) it sends the filter's next message at or
// after that sequence instead: another subject's, often the same message again and again. Each repeat lowers the
// consumer's pending count, and newer messages come before the rest of the list, so neither "nothing pending" nor
// "reached the stream's last sequence" says the list is done; under writes such a read left subjects out
// (test/buckets.test.ts). Not direct gets either: any replica that is nearly caught up answers those, so on a
// cluster they may give an older message than the one acknowledged before the call.
import type { StoredMsg } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Bus } from './nats.ts';
import { withNatsRetry } from './retry.ts';
import { UnavailableError } from './errors.ts';
import { StreamPublisher, isStreamNotFound, kvLayout } from './nats-adapter.ts';
import type { NatsConnection } from './nats.ts';

/** Last-by-subject reads in flight at once: enough to keep the server busy without queueing thousands of requests. */
const READS_IN_FLIGHT = 256;

/**
 * The last message of every subject of `stream` matching `filter`, in subject order; empty when the stream does not
 * exist. Complete or an error: after `guardMs` it rejects with a retryable UnavailableError, never a partial answer.
 */
export async function lastPerSubject(bus: Bus, stream: string, filter: string, guardMs = 10_000): Promise<StoredMsg[]> {
  const deadline = Date.now() + guardMs;
  let stopped = false;
  const retry = <T>(what: string, work: () => Promise<T>) => withNatsRetry(what, work, { deadlineMs: Math.max(0, deadline - Date.now()) });
  const read = async (): Promise<StoredMsg[]> => {
    let subjects: string[];
    try {
      const info = await retry(`stream info ${stream}`, () => bus.jsm.streams.info(stream, { subjects_filter: filter }));
      subjects = Object.keys(info.state.subjects ?? {});
    } catch (err) {
      if (isStreamNotFound(err)) return [];
      throw err;
    }
    const out: (StoredMsg | null)[] = [];
    let next = 0;
    const reader = async () => {
      while (!stopped && next < subjects.length) {
        const i = next++;
        // null: the subject lost its last message since the listing (deleted, purged, expired)
        out[i] = await retry(`last message of ${subjects[i]}`, () => bus.jsm.streams.getMessage(stream, { last_by_subj: subjects[i]! }));
      }
    };
    await Promise.all(Array.from({ length: Math.min(READS_IN_FLIGHT, subjects.length) }, reader));
    return out.filter((m): m is StoredMsg => m !== null);
  };
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new UnavailableError(`last message per subject of ${stream}: not read within ${guardMs} ms`)), guardMs);
  });
  const reading = read();
  try {
    return await Promise.race([reading, guard]);
  } finally {
    stopped = true;
    clearTimeout(timer);
    reading.catch(() => undefined); // after the guard fired: nothing waits for it any more
  }
}

/**
 * The live entries of a KV bucket (deleted keys left out, and added to `deleted` when given), as parsed JSON; empty
 * when the bucket does not exist.
 */
export async function kvLatest(bus: Bus, bucket: string, keyFilter = '>', deleted?: Set<string>): Promise<Map<string, unknown>> {
  return new Map([...(await kvLatestEntries(bus, bucket, keyFilter, deleted))].map(([k, e]) => [k, e.value]));
}

/** kvLatest with each entry's stored time (ms, the stream leader's clock). */
export async function kvLatestEntries(
  bus: Bus,
  bucket: string,
  keyFilter = '>',
  deleted?: Set<string>,
): Promise<Map<string, { value: unknown; time: number }>> {
  const prefix = kvLayout.prefix(bucket);
  const out = new Map<string, { value: unknown; time: number }>();
  for (const m of await lastPerSubject(bus, kvLayout.stream(bucket), kvLayout.subject(bucket, keyFilter))) {
    const op = m.header.get('KV-Operation');
    if (op === 'DEL' || op === 'PURGE') {
      deleted?.add(m.subject.slice(prefix.length));
      continue;
    }
    try {
      out.set(m.subject.slice(prefix.length), { value: m.json(), time: m.time.getTime() });
    } catch {
      // not JSON: not one of ours
    }
  }
  return out;
}

/** Opening a KV bucket that may not exist yet (no agent or planner has created it): null instead of an error. */
export async function openBucket(bus: Bus, name: string): Promise<KV | null> {
  try {
    const kv = await new Kvm(bus.js).open(name);
    await kv.status(); // fails when the bucket's stream does not exist
    return kv;
  } catch {
    return null;
  }
}

/**
 * Puts into a KV bucket as plain publishes to `$KV.<bucket>.<key>` over a shared acknowledgement inbox: the same
 * stored message as `kv.put`, without the error objects (and their stack traces) nats.js builds for every call —
 * a third of an agent host's CPU with 1,000 agents reporting. The bucket must exist; keys must be valid tokens.
 */
export class BucketWriter {
  readonly #publisher: StreamPublisher;
  readonly #prefix: string;

  constructor(nc: NatsConnection, bucket: string) {
    this.#publisher = new StreamPublisher(nc, kvLayout.stream(bucket));
    this.#prefix = kvLayout.prefix(bucket);
  }

  /** Resolves with the entry's revision once stored. */
  async put(key: string, value: string): Promise<number> {
    return (await this.#publisher.publish(this.#prefix + key, value, {})).seq;
  }
}
