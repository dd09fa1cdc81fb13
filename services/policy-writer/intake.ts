// Platform intake over NATS request/reply: app and container lifecycle. A reply is sent only after the event is
// acknowledged by the log (or the command was found to be a repeat); invalid input gets an error reply and
// appends nothing. Replies: `{ ok: true, revision, appended, note? }` or `{ ok: false, code, error, retryable }`.
import type { Msg, Subscription } from '@nats-io/nats-core';
import { newId } from '../../runtime/ids.ts';
import type { IntakeCommand } from '../../events/commands.ts';
import { parseIntakeCommand } from '../../events/commands.ts';
import type { Logger } from '../../runtime/logger.ts';
import type { NatsConnection } from '../../runtime/nats.ts';
import { ValidationError } from '../../runtime/errors.ts';
import { toServiceError } from '../../runtime/retry.ts';
import { INTAKE_QUEUE, type IntakeSubject, intakeSubject } from '../../runtime/subjects.ts';
import type { CommandMeta, CommandResult, Writer } from './writer.ts';
import type { Counter, Registry } from '../../runtime/metrics.ts';

export type IntakeReply =
  | { ok: true; revision: number; appended: number; note?: string }
  | { ok: false; code: string; error: string; retryable: boolean; issues?: { path: string; message: string }[] };

const commandOfSubject: Record<IntakeSubject, IntakeCommand['type']> = {
  [intakeSubject.registerCell]: 'RegisterCell',
  [intakeSubject.decommissionCell]: 'DecommissionCell',
  [intakeSubject.registerApp]: 'RegisterApp',
  [intakeSubject.renameApp]: 'RenameApp',
  [intakeSubject.deleteApp]: 'DeleteApp',
  [intakeSubject.startContainer]: 'StartContainer',
  [intakeSubject.stopContainer]: 'StopContainer',
};

export class Intake {
  readonly #nc: NatsConnection;
  readonly #writer: Writer;
  readonly #log: Logger;
  readonly #subs: Subscription[] = [];
  readonly #inFlight = new Set<Promise<void>>();

  readonly #requests: Counter;

  constructor(nc: NatsConnection, writer: Writer, log: Logger, metrics: Registry) {
    this.#requests = metrics.counter('netfold_intake_requests_total', 'platform intake requests, by command and outcome code');
    this.#nc = nc;
    this.#writer = writer;
    this.#log = log.child({ component: 'intake' });
  }

  start(): void {
    for (const subject of Object.keys(commandOfSubject) as IntakeSubject[]) {
      const sub = this.#nc.subscribe(subject, {
        queue: INTAKE_QUEUE,
        callback: (err, msg) => {
          if (err) {
            this.#log.error({ err, subject }, 'intake-subscription-failed');
            return;
          }
          const p = this.#handle(subject, msg).finally(() => this.#inFlight.delete(p));
          this.#inFlight.add(p);
        },
      });
      this.#subs.push(sub);
    }
  }

  async #handle(subject: IntakeSubject, msg: Msg): Promise<void> {
    const reply = await this.#decide(subject, msg);
    this.#requests.inc({ command: commandOfSubject[subject], code: reply.ok ? 'ok' : reply.code });
    if (!msg.reply) {
      this.#log.warn({ subject, ok: reply.ok }, 'intake-request-without-reply-subject');
      return;
    }
    msg.respond(JSON.stringify(reply));
  }

  async #decide(subject: IntakeSubject, msg: Msg): Promise<IntakeReply> {
    try {
      let raw: unknown;
      try {
        raw = msg.json();
      } catch {
        return { ok: false, code: 'invalid-json', error: 'request body is not valid JSON', retryable: false };
      }
      const parsed = parseIntakeCommand(commandOfSubject[subject], raw);
      if (!parsed.ok) throw new ValidationError(parsed.issues);
      const { command, meta } = parsed.value;
      const cmdMeta = { actor: `platform:${meta.actor ?? 'unknown'}`, correlationId: meta.requestId ?? newId() };
      const result: CommandResult = await this.#execute(command, cmdMeta);
      const ok: IntakeReply = { ok: true, revision: result.revision, appended: result.events.length };
      if (result.note) ok.note = result.note;
      return ok;
    } catch (err) {
      const e = toServiceError(err);
      if (e.status >= 500) this.#log.error({ err, subject }, 'intake-command-failed');
      const body: IntakeReply = { ok: false, code: e.code, error: e.message, retryable: e.retryable };
      if (e instanceof ValidationError) body.issues = e.issues;
      return body;
    }
  }

  #execute(command: IntakeCommand, meta: CommandMeta): Promise<CommandResult> {
    switch (command.type) {
      case 'RegisterCell':
      case 'DecommissionCell':
        return this.#writer.cell(command, meta);
      case 'StartContainer':
      case 'StopContainer':
        return this.#writer.container(command, meta);
      default:
        return this.#writer.app(command, meta);
    }
  }

  /** Stops taking requests and waits for those in flight to be answered. */
  async stop(): Promise<void> {
    await Promise.all(this.#subs.map((s) => s.drain().catch(() => undefined)));
    await Promise.all([...this.#inFlight]);
  }
}
