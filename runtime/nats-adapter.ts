// The NATS adapter: every place netfold goes below nats.js's public API, in one file, each with why.
//   - StreamPublisher: appends as plain publishes on one shared inbox, parsing the PubAck JSON itself. Measured
//     (docs/benchmarks.md, bench:ingest): ~110k appends/s this way against ~18-20k with js.publish, which builds
//     error objects per request (11% of the writer's CPU). A publish with no answer (timeout, no responders during
//     an election) is sent again with the same Nats-Msg-Id, so the stream stores it at most once.
//   - The KV layout (`KV_<bucket>` stream, `$KV.<bucket>.<key>` subjects): KV puts as plain stream publishes
//     (kv.put built error objects per call) and last-per-subject scans of a bucket (kv.keys() can hang while the
//     bucket is written).
//   - Error classification: JetStream API codes by name, and the client's "JetStream not enabled" error (what a
//     leader election looks like to the client), which nats.js exports only from its internal module.
import { errors as coreErrors, headers } from '@nats-io/nats-core';
import { JetStreamApiCodes, JetStreamApiError } from '@nats-io/jetstream';
import { jserrors } from '@nats-io/jetstream/internal';
import type { NatsConnection } from '@nats-io/nats-core';
import { NetfoldError, UnavailableError } from './errors.ts';
import { InboxRequester, RequestTimeout } from './inbox-requester.ts';

// ---- errors -----------------------------------------------------------------------------------------------------

/**
 * The server refused a publish or subscription for the user's permissions (runtime/authz.ts). nats.js v3 rejects a
 * request whose subject was refused with a RequestError caused by it: that is no stall, and retrying cannot help.
 */
export function isPermissionViolation(err: unknown): boolean {
  return err instanceof coreErrors.PermissionViolationError || (err instanceof Error && err.cause instanceof coreErrors.PermissionViolationError);
}

/** A stall of a cluster (a stream leader election takes 5-8 s): a timeout, no responders, "JetStream not enabled", 503. */
export function isTransientNatsError(err: unknown): boolean {
  if (isPermissionViolation(err)) return false;
  if (err instanceof coreErrors.TimeoutError || err instanceof coreErrors.NoRespondersError) return true;
  if (err instanceof coreErrors.RequestError) return true;
  if (err instanceof jserrors.JetStreamNotEnabled) return true;
  if (err instanceof JetStreamApiError) {
    // 503 "JetStream system temporarily unavailable", 10008 cluster not available, 10074 no leader... (by status)
    return err.status === 503;
  }
  return false;
}

const hasApiCode = (err: unknown, code: number) =>
  err instanceof JetStreamApiError ? err.code === code : typeof err === 'object' && err !== null && (err as { code?: unknown }).code === code;

/** JetStream API error 10059: the stream does not exist. */
export const isStreamNotFound = (err: unknown): boolean => hasApiCode(err, JetStreamApiCodes.StreamNotFound);
/** JetStream API error 10037: no message (e.g. a last-by-subject read of a subject never written). */
export const isNoMessageFound = (err: unknown): boolean => hasApiCode(err, JetStreamApiCodes.NoMessageFound);

// ---- the KV layout ----------------------------------------------------------------------------------------------

/** The stream behind a KV bucket, and the subject of one of its keys (or a filter such as `>` or `m.*`). */
export const kvLayout = {
  stream: (bucket: string) => `KV_${bucket}`,
  subject: (bucket: string, key: string) => `$KV.${bucket}.${key}`,
  prefix: (bucket: string) => `$KV.${bucket}.`,
} as const;

/** The stream behind an object store (@nats-io/obj): chunks under `$O.<bucket>.C.<nuid>`, metadata under `.M.`. */
export const objLayout = {
  stream: (bucket: string) => `OBJ_${bucket}`,
  subjects: (bucket: string) => `$O.${bucket}.>`,
} as const;

// ---- appends ----------------------------------------------------------------------------------------------------

/** The subject moved on since the state a decision was made on (JetStream API error 10071). */
export class WrongExpectedSequenceError extends NetfoldError {
  constructor(subject: string, expected: number) {
    super(`${subject} is no longer at sequence ${expected}`, 'wrong-expected-sequence', 409, true);
    this.name = 'WrongExpectedSequenceError';
  }
}

/** The server refused a publish (a JetStream API error other than a wrong expected sequence). */
class PublishRejectedError extends NetfoldError {
  readonly apiCode: number;
  constructor(apiCode: number, description: string) {
    super(`the stream refused the message: ${description} (${apiCode})`, 'publish-rejected', 500, false);
    this.name = 'PublishRejectedError';
    this.apiCode = apiCode;
  }
}

type PubAckJson = { stream?: string; seq?: number; duplicate?: boolean; error?: { code?: number; err_code?: number; description?: string } };

export type PublishOptions = {
  /** Deduplication id; omit only where storing a message twice is harmless (a KV value put again). */
  msgId?: string;
  /** Expected last sequence of this subject (optimistic concurrency); omitted: no expectation. */
  expectedSubjectSeq?: number;
  /** How long to keep re-sending a publish that gets no answer. */
  deadlineMs?: number;
};

export class StreamPublisher {
  readonly #stream: string;
  readonly #requests: InboxRequester;
  readonly #timeoutMs: number;
  /** Attempts sent so far (each gets the next number), the highest number answered, and when the last answer came. */
  #sent = 0;
  #answeredUpTo = 0;
  #answeredAt = 0;

  constructor(nc: NatsConnection, stream: string, opts: { ackTimeoutMs?: number } = {}) {
    this.#stream = stream;
    this.#requests = new InboxRequester(nc);
    // Short: a publish whose stream leader died is answered by nobody, and the re-send (same msg id, stored at most
    // once) is what reaches the next leader; each second waited here is a second added to a node's failure.
    this.#timeoutMs = opts.ackTimeoutMs ?? 2000;
  }

  /**
   * Publishes and returns the stream sequence (the original one when the msg id was a duplicate) and how many times
   * it was sent (more than once: the first went unanswered, so it may be stored after messages published later).
   */
  async publish(subject: string, payload: string, opts: PublishOptions): Promise<{ seq: number; duplicate: boolean; attempts: number }> {
    const hdrs = headers();
    if (opts.msgId !== undefined) hdrs.set('Nats-Msg-Id', opts.msgId);
    hdrs.set('Nats-Expected-Stream', this.#stream);
    if (opts.expectedSubjectSeq !== undefined) hdrs.set('Nats-Expected-Last-Subject-Sequence', String(opts.expectedSubjectSeq));
    const deadline = Date.now() + (opts.deadlineMs ?? 20_000);
    let delay = 50;
    for (let attempts = 1; ; attempts++) {
      let transient: unknown;
      const order = ++this.#sent;
      // Past the timeout, keep waiting only while the stream is answering what was sent before this one (a busy
      // server works through a backlog in order); once something sent after it is answered, or nothing is, the
      // publish was lost with its leader: send it again (same msg id, stored once).
      const keepWaiting = () => Date.now() - this.#answeredAt < this.#timeoutMs && this.#answeredUpTo < order && Date.now() < deadline;
      try {
        const msg = await this.#requests.request(subject, payload, { headers: hdrs, timeoutMs: this.#timeoutMs, keepWaiting });
        this.#answeredAt = Date.now();
        this.#answeredUpTo = Math.max(this.#answeredUpTo, order);
        if (msg.headers?.code === 503) {
          transient = new Error('no responders for the stream');
        } else {
          const ack = JSON.parse(new TextDecoder().decode(msg.data)) as PubAckJson;
          if (ack.error) {
            const code = ack.error.err_code ?? 0;
            if (code === JetStreamApiCodes.StreamWrongLastSequence || code === JetStreamApiCodes.StreamWrongLastSequenceUnknown) {
              throw new WrongExpectedSequenceError(subject, opts.expectedSubjectSeq ?? -1);
            }
            if (ack.error.code === 503) transient = new Error(ack.error.description ?? 'unavailable');
            else throw new PublishRejectedError(code, ack.error.description ?? 'unknown error');
          } else if (typeof ack.seq === 'number' && ack.stream === this.#stream) {
            return { seq: ack.seq, duplicate: ack.duplicate === true, attempts };
          } else {
            throw new PublishRejectedError(0, `unexpected acknowledgement ${JSON.stringify(ack).slice(0, 200)}`);
          }
        }
      } catch (err) {
        if (!(err instanceof RequestTimeout) && !isTransientNatsError(err)) throw err;
        transient = err;
      }
      if (Date.now() + delay > deadline) throw new UnavailableError(`${this.#stream} did not acknowledge the publish in time`, transient);
      await new Promise((r) => setTimeout(r, delay));
      delay = Math.min(delay * 2, 1000);
    }
  }
}
