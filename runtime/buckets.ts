// Reading the latest message of every subject of a stream (KV buckets included) with one ordered consumer, bounded:
// it stops at the stream's last message as of the call, when nothing is pending, or after a guard time. (A
// message counted as pending can be discarded by a per-subject limit before it is delivered, so "wait until
// nothing is pending" alone — as kv.keys() does — can hang while the stream is being written.)
import { DeliverPolicy, type JsMsg } from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import type { Bus } from './nats.ts';
import { withNatsRetry } from './retry.ts';
import { StreamPublisher, kvLayout } from './nats-adapter.ts';
import type { NatsConnection } from './nats.ts';

export async function lastPerSubject(bus: Bus, stream: string, filter: string, guardMs = 10_000): Promise<JsMsg[]> {
  const info = await withNatsRetry(`stream info ${stream}`, () => bus.jsm.streams.info(stream)).catch(() => null);
  if (!info || info.state.messages === 0) return [];
  const consumer = await bus.js.consumers.get(stream, { filter_subjects: filter, deliver_policy: DeliverPolicy.LastPerSubject });
  const messages = await consumer.consume();
  const guard = setTimeout(() => void messages.close(), guardMs);
  const out: JsMsg[] = [];
  // The stream's last sequence as of after the consumer exists (its first message has come): every message of its
  // starting set is at or below it. Taken before, a subject rewritten in between is in the set above it, and
  // stopping at the old last message would leave it out (a planner's member entry, rewritten every heartbeat).
  let last: number | undefined;
  try {
    for await (const m of messages) {
      out.push(m);
      if (m.info.pending === 0) break;
      last ??= (await withNatsRetry(`stream info ${stream}`, () => bus.jsm.streams.info(stream))).state.last_seq;
      if (m.seq >= last) break;
    }
  } finally {
    clearTimeout(guard);
    await messages.close();
  }
  return out;
}

/** The live entries of a KV bucket (deleted keys left out), as parsed JSON; empty when the bucket does not exist. */
export async function kvLatest(bus: Bus, bucket: string, keyFilter = '>'): Promise<Map<string, unknown>> {
  const prefix = kvLayout.prefix(bucket);
  const out = new Map<string, unknown>();
  for (const m of await lastPerSubject(bus, kvLayout.stream(bucket), kvLayout.subject(bucket, keyFilter))) {
    const op = m.headers?.get('KV-Operation');
    if (op === 'DEL' || op === 'PURGE') continue;
    try {
      out.set(m.subject.slice(prefix.length), m.json());
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
