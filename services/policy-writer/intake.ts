// Platform intake over NATS request/reply (`nf.cmd.<caller>.<aggregate>.<verb>`): cells, app and container
// lifecycle. The caller token of the subject is the actor recorded (`platform:<caller>`); with authorization on, a
// component may only publish under its own token. A reply is sent only after the event is acknowledged by the log
// (or the command was found to be a repeat); invalid input gets an error reply and appends nothing. Replies:
// `{ ok: true, revision, appended, note? }` or `{ ok: false, code, error, retryable }`.
import type { Msg, Subscription } from '@nats-io/nats-core';
import { newId } from '../../runtime/ids.ts';
import type { IntakeCommand } from '../../events/commands.ts';
import { parseIntakeCommand } from '../../events/commands.ts';
import type { Logger } from '../../runtime/logger.ts';
import type { NatsConnection } from '../../runtime/nats.ts';
import { ValidationError } from '../../runtime/errors.ts';
import { toServiceError } from '../../runtime/retry.ts';
import { INTAKE_QUEUE, INTAKE_SUBJECTS, type IntakeCommandName, intakeCommand, parseIntakeSubject } from '../../runtime/subjects.ts';
import { ID_PATTERN } from '../../events/fields.ts';
import type { CommandMeta, CommandResult, Writer } from './writer.ts';
import type { Counter, Registry } from '../../runtime/metrics.ts';

export type IntakeReply =
  | { ok: true; revision: number; appended: number; note?: string; ip?: string; subnet?: string; underlay?: string | null }
  | { ok: false; code: string; error: string; retryable: boolean; issues?: { path: string; message: string }[] };

const commandOf: Record<IntakeCommandName, IntakeCommand['type']> = {
  [intakeCommand.registerCell]: 'RegisterCell',
  [intakeCommand.decommissionCell]: 'DecommissionCell',
  [intakeCommand.registerApp]: 'RegisterApp',
  [intakeCommand.renameApp]: 'RenameApp',
  [intakeCommand.deleteApp]: 'DeleteApp',
  [intakeCommand.startContainer]: 'StartContainer',
  [intakeCommand.stopContainer]: 'StopContainer',
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
    const sub = this.#nc.subscribe(INTAKE_SUBJECTS, {
      queue: INTAKE_QUEUE,
      callback: (err, msg) => {
        if (err) {
          this.#log.error({ err }, 'intake-subscription-failed');
          return;
        }
        const p = this.#handle(msg).finally(() => this.#inFlight.delete(p));
        this.#inFlight.add(p);
      },
    });
    this.#subs.push(sub);
  }

  async #handle(msg: Msg): Promise<void> {
    const target = parseIntakeSubject(msg.subject);
    const reply: IntakeReply =
      target && ID_PATTERN.test(target.caller)
        ? await this.#decide(commandOf[target.command], target.caller, msg)
        : { ok: false, code: 'unknown-command', error: 'not an intake subject (nf.cmd.<caller>.<aggregate>.<verb>)', retryable: false };
    this.#requests.inc({ command: target ? commandOf[target.command] : 'unknown', code: reply.ok ? 'ok' : reply.code });
    if (!msg.reply) {
      this.#log.warn({ command: target?.command, ok: reply.ok }, 'intake-request-without-reply-subject');
      return;
    }
    msg.respond(JSON.stringify(reply));
  }

  async #decide(type: IntakeCommand['type'], caller: string, msg: Msg): Promise<IntakeReply> {
    try {
      let raw: unknown;
      try {
        raw = msg.json();
      } catch {
        return { ok: false, code: 'invalid-json', error: 'request body is not valid JSON', retryable: false };
      }
      const parsed = parseIntakeCommand(type, raw);
      if (!parsed.ok) throw new ValidationError(parsed.issues);
      const { command, meta } = parsed.value;
      const cmdMeta = { actor: `platform:${caller}`, correlationId: meta.requestId ?? newId() };
      const result: CommandResult = await this.#execute(command, cmdMeta);
      const ok: IntakeReply = { ok: true, revision: result.revision, appended: result.events.length };
      if (result.note) ok.note = result.note;
      if (result.ip) ok.ip = result.ip;
      if (result.lease) Object.assign(ok, result.lease);
      return ok;
    } catch (err) {
      const e = toServiceError(err);
      if (e.status >= 500) this.#log.error({ err, command: type }, 'intake-command-failed');
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
