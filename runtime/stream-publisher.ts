// Publishing to a JetStream stream with an acknowledgement, through one shared inbox (InboxRequester): the event
// log's appends and the planner's outputs. A publish that gets no answer (timeout, no responders during an
// election) is sent again with the same Nats-Msg-Id, so the stream stores it at most once.
import { headers } from '@nats-io/nats-core';
import { JetStreamApiCodes } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/nats-core';
import { NetfoldError, UnavailableError } from './errors.ts';
import { InboxRequester, RequestTimeout } from './inbox-requester.ts';
import { isTransientNatsError } from './retry.ts';

/** The subject moved on since the state a decision was made on (JetStream API error 10071). */
export class WrongExpectedSequenceError extends NetfoldError {
  constructor(subject: string, expected: number) {
    super(`${subject} is no longer at sequence ${expected}`, 'wrong-expected-sequence', 409, true);
    this.name = 'WrongExpectedSequenceError';
  }
}

/** The server refused a publish (a JetStream API error other than a wrong expected sequence). */
export class PublishRejectedError extends NetfoldError {
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

  constructor(nc: NatsConnection, stream: string, opts: { ackTimeoutMs?: number } = {}) {
    this.#stream = stream;
    this.#requests = new InboxRequester(nc);
    this.#timeoutMs = opts.ackTimeoutMs ?? 5000;
  }

  /** Publishes and returns the stream sequence (the original one when the msg id was a duplicate). */
  async publish(subject: string, payload: string, opts: PublishOptions): Promise<{ seq: number; duplicate: boolean }> {
    const hdrs = headers();
    if (opts.msgId !== undefined) hdrs.set('Nats-Msg-Id', opts.msgId);
    hdrs.set('Nats-Expected-Stream', this.#stream);
    if (opts.expectedSubjectSeq !== undefined) hdrs.set('Nats-Expected-Last-Subject-Sequence', String(opts.expectedSubjectSeq));
    const deadline = Date.now() + (opts.deadlineMs ?? 20_000);
    let delay = 50;
    for (;;) {
      let transient: unknown;
      try {
        const msg = await this.#requests.request(subject, payload, { headers: hdrs, timeoutMs: this.#timeoutMs });
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
            return { seq: ack.seq, duplicate: ack.duplicate === true };
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
