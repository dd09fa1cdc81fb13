// Platform intake over NATS request/reply (`nf.cmd.<caller>.<aggregate>.<verb>`): cells, app and container
// lifecycle. The caller token of the subject is the actor recorded (`platform:<caller>`); with authorization on, a
// component may only publish under its own token. A reply is sent only after the event is acknowledged by the log
// (or the command was found to be a repeat); invalid input gets an error reply and appends nothing. Replies:
// `{ ok: true, revision, appended, note? }` or `{ ok: false, code, error, retryable }`.
//
// A batch (`nf.cmd.<caller>.commands.batch`, `{"commands":[{"command":"container.start","body":{…}}, …]}`, at most
// MAX_INTAKE_BATCH) is answered once every command in it is: `{ ok: true, results: [reply per command, in order] }`.
// Each command is decided and appended on its own, exactly as if sent alone — a refused one refuses only itself.
// Commands on one aggregate take effect in the batch's order; commands on different aggregates are decided
// concurrently, so a command that needs another of the same batch to have taken effect (a start of an app the batch
// registers) belongs in a later batch. A batch that is not of that shape is refused whole, appending nothing.
import type { Msg, Subscription } from '@nats-io/nats-core';
import { newId } from '../../runtime/ids.ts';
import type { IntakeCommand } from '../../events/commands.ts';
import { parseIntakeCommand } from '../../events/commands.ts';
import type { Logger } from '../../runtime/logger.ts';
import type { NatsConnection } from '../../runtime/nats.ts';
import { ValidationError } from '../../runtime/errors.ts';
import { toServiceError } from '../../runtime/retry.ts';
import { INTAKE_BATCH, INTAKE_QUEUE, INTAKE_SUBJECTS, type IntakeCommandName, intakeCommand, isIntakeCommandName } from '../../runtime/subjects.ts';
import { parseIntakeSubject } from '../../runtime/subjects.ts';
import { ID_PATTERN } from '../../events/fields.ts';
import type { CommandMeta, CommandResult, Writer } from './writer.ts';
import type { Counter, Registry } from '../../runtime/metrics.ts';

export type IntakeReply =
  | { ok: true; revision: number; appended: number; note?: string; ip?: string; subnet?: string; underlay?: string | null }
  | { ok: false; code: string; error: string; retryable: boolean; issues?: { path: string; message: string }[] };

export type IntakeBatchReply = { ok: true; results: IntakeReply[] } | Extract<IntakeReply, { ok: false }>;

/** The most commands one batch request may carry. */
export const MAX_INTAKE_BATCH = 1000;

const commandOf: Record<IntakeCommandName, IntakeCommand['type']> = {
  [intakeCommand.registerCell]: 'RegisterCell',
  [intakeCommand.decommissionCell]: 'DecommissionCell',
  [intakeCommand.registerApp]: 'RegisterApp',
  [intakeCommand.renameApp]: 'RenameApp',
  [intakeCommand.deleteApp]: 'DeleteApp',
  [intakeCommand.startContainer]: 'StartContainer',
  [intakeCommand.stopContainer]: 'StopContainer',
};

const NOT_JSON = Symbol('not JSON');

function bodyOf(msg: Msg): unknown {
  try {
    return msg.json();
  } catch {
    return NOT_JSON;
  }
}

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
    let reply: IntakeReply | IntakeBatchReply;
    if (!target || !ID_PATTERN.test(target.caller)) {
      reply = { ok: false, code: 'unknown-command', error: 'not an intake subject (nf.cmd.<caller>.<aggregate>.<verb>)', retryable: false };
      this.#requests.inc({ command: 'unknown', code: reply.code });
    } else if (target.command === INTAKE_BATCH) {
      reply = await this.#batch(target.caller, msg);
    } else {
      reply = await this.#one(commandOf[target.command], target.caller, bodyOf(msg));
    }
    if (!msg.reply) {
      this.#log.warn({ command: target?.command, ok: reply.ok }, 'intake-request-without-reply-subject');
      return;
    }
    msg.respond(JSON.stringify(reply));
  }

  /** A batch: its shape checked whole, then every command decided as if sent alone (see the file's comment). */
  async #batch(caller: string, msg: Msg): Promise<IntakeBatchReply> {
    const raw = bodyOf(msg);
    const refuse = (code: string, error: string): IntakeBatchReply => {
      this.#requests.inc({ command: 'batch', code });
      return { ok: false, code, error, retryable: false };
    };
    if (raw === NOT_JSON) return refuse('invalid-json', 'request body is not valid JSON');
    const shape = `{"commands":[{"command":"<aggregate>.<verb>","body":{…}}]} with 1 to ${MAX_INTAKE_BATCH} commands`;
    if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return refuse('invalid-batch', `a batch is ${shape}`);
    const keys = Object.keys(raw);
    const commands = (raw as { commands?: unknown }).commands;
    if (keys.length !== 1 || keys[0] !== 'commands' || !Array.isArray(commands) || commands.length === 0 || commands.length > MAX_INTAKE_BATCH) {
      return refuse('invalid-batch', `a batch is ${shape}`);
    }
    const items: { type: IntakeCommand['type']; body: unknown }[] = [];
    for (const [i, item] of commands.entries()) {
      const o = item as { command?: unknown; body?: unknown } | null;
      const ok = o !== null && typeof o === 'object' && !Array.isArray(o) && Object.keys(o).every((k) => k === 'command' || k === 'body');
      if (!ok || !isIntakeCommandName(o.command) || o.body === undefined) {
        return refuse('invalid-batch', `commands[${i}] is not {"command":"<aggregate>.<verb>","body":{…}} with a known command`);
      }
      items.push({ type: commandOf[o.command], body: o.body });
    }
    this.#requests.inc({ command: 'batch', code: 'ok' });
    return { ok: true, results: await Promise.all(items.map((it) => this.#one(it.type, caller, it.body))) };
  }

  async #one(type: IntakeCommand['type'], caller: string, raw: unknown): Promise<IntakeReply> {
    const reply = await this.#decide(type, caller, raw);
    this.#requests.inc({ command: type, code: reply.ok ? 'ok' : reply.code });
    return reply;
  }

  async #decide(type: IntakeCommand['type'], caller: string, raw: unknown): Promise<IntakeReply> {
    try {
      if (raw === NOT_JSON) return { ok: false, code: 'invalid-json', error: 'request body is not valid JSON', retryable: false };
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
