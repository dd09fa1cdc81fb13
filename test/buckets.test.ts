// The last message of every subject (runtime/buckets.ts) read while the stream is being written (issue 14): every
// subject that had a message when a read began is in its answer, with a message at least as new as the one it had
// then. Cold subjects are written once; a writer publishes round after round to a few hot ones. Before each read the
// test notes what the server had acknowledged, and checks the answer against it.
import t, { type Test } from 'tap';
import { Kvm } from '@nats-io/kv';
import { startNats } from './harness/nats.ts';
import { Progress } from '../runtime/progress.ts';
import { lastPerSubject, kvLatest } from '../runtime/buckets.ts';
import type { Bus } from '../runtime/nats.ts';

const randomName = () => Math.random().toString(36).slice(2, 10);

type Stored = Map<string, { seq: number; round: number }>;

/** Writes `{ round: 0 }` once to each subject; what the server acknowledged. */
async function writeOnce(bus: Bus, subjects: string[]): Promise<Stored> {
  return new Map(await Promise.all(subjects.map(async (s) => [s, { seq: (await bus.js.publish(s, JSON.stringify({ round: 0 }))).seq, round: 0 }] as const)));
}

/**
 * Publishes `{ round }` to every hot subject, round after round, until stopped. `stored` holds the last message the
 * server acknowledged on each subject, the cold ones included.
 */
class HotWriter {
  readonly stored: Stored;
  readonly rounds = new Progress(0);
  #stopped = false;
  readonly #done: Promise<void>;

  constructor(bus: Bus, subjects: string[], cold: Stored) {
    this.stored = new Map(cold);
    this.#done = (async () => {
      for (let round = 1; !this.#stopped; round++) {
        await Promise.all(
          subjects.map(async (subject) => {
            const ack = await bus.js.publish(subject, JSON.stringify({ round }));
            this.stored.set(subject, { seq: ack.seq, round });
          }),
        );
        this.rounds.advance(round);
      }
    })();
  }

  /** Waits for a round begun after this call to be acknowledged, so every read sees new writes around it. */
  async nextRound(): Promise<void> {
    const from = this.rounds.value;
    await this.rounds.until((r) => r > from + 1, 10_000, 'a new round of writes');
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#done;
  }
}

/**
 * Runs `read` `reads` times while `writer` writes; each answer (subject → seq and round) must hold every subject the
 * writer had stored before the read, at a sequence and round at least as new; and writes must have gone on during
 * some of the reads (else the test would prove nothing).
 */
async function readWhileWriting(
  t: Test,
  writer: HotWriter,
  read: () => Promise<Map<string, { seq?: number; round: number }>>,
  label: string,
  reads = 100,
): Promise<void> {
  const missed: string[] = [];
  let overlapped = 0;
  for (let i = 0; i < reads; i++) {
    await writer.nextRound();
    const before = new Map(writer.stored);
    const roundBefore = writer.rounds.value;
    const answer = await read();
    if (writer.rounds.value > roundBefore) overlapped++;
    for (const [subject, was] of before) {
      const got = answer.get(subject);
      if (!got) missed.push(`read ${i}: ${subject} left out`);
      else if (got.round < was.round || (got.seq !== undefined && got.seq < was.seq))
        missed.push(`read ${i}: ${subject} at round ${got.round} (seq ${got.seq}), older than round ${was.round} (seq ${was.seq})`);
    }
  }
  t.same(missed.slice(0, 10), [], `${label}: every subject, at least as new as before the read (${missed.length} misses in ${reads} reads)`);
  t.ok(overlapped > 0, `${label}: writes went on during reads (${overlapped} of ${reads})`);
}

function roundsOf(messages: { subject: string; seq: number; json<T>(): T }[]): Map<string, { seq: number; round: number }> {
  return new Map(messages.map((m) => [m.subject, { seq: m.seq, round: m.json<{ round: number }>().round }]));
}

t.test('lastPerSubject under concurrent writes', async (t) => {
  const nats = await startNats(t);
  const reader = await nats.connect('reader');
  const writerBus = await nats.connect('writer-load');
  // one message kept per subject, as KV buckets and the cell snapshots keep; several, as the cell deltas keep
  for (const [perSubject, coldCount] of [
    [1, 0],
    [1, 200],
    [8, 200],
  ] as const) {
    t.test(`${perSubject} message(s) kept per subject, ${coldCount} cold subjects and 3 hot ones`, async (t) => {
      const stream = `LPS_${randomName()}`;
      const prefix = `lps.${randomName()}`;
      await reader.jsm.streams.add({ name: stream, subjects: [`${prefix}.>`], max_msgs_per_subject: perSubject, allow_direct: true });
      const cold = await writeOnce(
        writerBus,
        Array.from({ length: coldCount }, (_, i) => `${prefix}.cold-${i}`),
      );
      const hot = ['a', 'b', 'c'].map((s) => `${prefix}.${s}`);
      const writer = new HotWriter(writerBus, hot, cold);
      t.teardown(() => writer.stop());
      await readWhileWriting(t, writer, async () => roundsOf(await lastPerSubject(reader, stream, `${prefix}.>`)), `stream ${stream}`);
      // a filter naming part of the stream: only its subjects
      const one = await lastPerSubject(reader, stream, `${prefix}.b`);
      t.same([...new Set(one.map((m) => m.subject))], [`${prefix}.b`], 'a filter on one subject answers that subject only');
    });
  }
  t.test('a stream that does not exist: empty', async (t) => {
    t.same(await lastPerSubject(reader, `LPS_${randomName()}`, 'nothing.>'), []);
  });
});

t.test('kvLatest of a bucket with 1,200 keys, three of them written continuously', async (t) => {
  const nats = await startNats(t);
  const reader = await nats.connect('reader');
  const writerBus = await nats.connect('writer-load');
  const bucket = `lps_${randomName()}`;
  const kv = await new Kvm(writerBus.js).create(bucket, { history: 1 });
  const prefix = `$KV.${bucket}.`;
  const cold = await writeOnce(
    writerBus,
    Array.from({ length: 1200 }, (_, i) => `${prefix}cold-${i}`),
  );
  await kv.put('gone', JSON.stringify({ round: 0 }));
  await kv.delete('gone');
  const writer = new HotWriter(
    writerBus,
    ['hot-a', 'hot-b', 'hot-c'].map((k) => prefix + k),
    cold,
  );
  t.teardown(() => writer.stop());
  let deletedSeen = 0;
  await readWhileWriting(
    t,
    writer,
    async () => {
      const entries = await kvLatest(reader, bucket);
      if (entries.has('gone')) deletedSeen++;
      return new Map([...entries].map(([key, value]) => [prefix + key, { round: (value as { round: number }).round }]));
    },
    `bucket ${bucket}`,
    40, // each read is 1,203 keys
  );
  t.equal(deletedSeen, 0, 'a deleted key is left out');
});
