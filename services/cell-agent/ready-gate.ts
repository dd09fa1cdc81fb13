// The ready gate: `nf.ready.<cell>` request `{ containerId, timeoutMs? }` → `{ ready: true, cellId, revision }` as
// soon as the container is in the state the converger has enforced (or already is), `{ ready: false, code:
// timeout }` after the caller's timeout (default 10 s, at most 60 s), `invalid-json` / `invalid-input` for a bad
// request. The answer is decided without NATS (`readyAnswerOf`); the gate is its subscription.
import type { Subscription } from '@nats-io/nats-core';
import type { NatsConnection } from '../../runtime/nats.ts';
import { idOf } from '../../events/fields.ts';
import { readySubject } from '../../runtime/subjects.ts';
import type { Enforced, EnforcedProgress } from './converger.ts';

export type ReadyRequest = { containerId: string; timeoutMs: number };
export type ReadyReply =
  { ready: true; cellId: string; revision: number } | { ready: false; code: 'invalid-json' | 'invalid-input' | 'timeout'; error: string };

const DEFAULT_READY_TIMEOUT_MS = 10_000;
const MAX_READY_TIMEOUT_MS = 60_000;

/** A request body read: the request, or the reply refusing it. */
export function parseReadyRequest(data: Uint8Array | string): { ok: true; request: ReadyRequest } | { ok: false; reply: ReadyReply } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
  } catch {
    return { ok: false, reply: { ready: false, code: 'invalid-json', error: 'request body is not valid JSON' } };
  }
  // JSON that is not an object (`null`, a number) has no fields: refused below as invalid input.
  const body: { containerId?: unknown; timeoutMs?: unknown } = typeof parsed === 'object' && parsed !== null ? parsed : {};
  const issues: { path: string; message: string }[] = [];
  const containerId = idOf(body.containerId, 'containerId', issues);
  const timeoutMs =
    typeof body.timeoutMs === 'number' && body.timeoutMs >= 0 && body.timeoutMs <= MAX_READY_TIMEOUT_MS ? body.timeoutMs : DEFAULT_READY_TIMEOUT_MS;
  if (issues.length > 0) return { ok: false, reply: { ready: false, code: 'invalid-input', error: issues.map((i) => `${i.path}: ${i.message}`).join('; ') } };
  return { ok: true, request: { containerId, timeoutMs } };
}

/** The reply to a request body, once the container is enforced or the request's timeout has passed. */
export async function readyAnswerOf(data: Uint8Array | string, cellId: string, enforced: EnforcedProgress): Promise<ReadyReply> {
  const parsed = parseReadyRequest(data);
  if (!parsed.ok) return parsed.reply;
  const { containerId, timeoutMs } = parsed.request;
  try {
    await enforced.until((a: Enforced) => a.containers.has(containerId), timeoutMs, `container ${containerId} on ${cellId}`);
    return { ready: true, cellId, revision: enforced.value.revision };
  } catch {
    return { ready: false, code: 'timeout', error: `container ${containerId} is not enforced on ${cellId} yet` };
  }
}

export class ReadyGate {
  readonly #sub: Subscription;

  constructor(nc: NatsConnection, cellId: string, enforced: EnforcedProgress) {
    this.#sub = nc.subscribe(readySubject(cellId), {
      callback: (_err, msg) => void readyAnswerOf(msg.data, cellId, enforced).then((reply) => msg.respond(JSON.stringify(reply))),
    });
  }

  stop(): void {
    this.#sub.unsubscribe();
  }
}
