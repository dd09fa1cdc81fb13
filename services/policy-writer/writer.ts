// The command side: load an aggregate's state from the in-memory model, decide, append with the aggregate's
// expected last sequence, wait until the model has folded the result, retry a bounded number of times when
// another writer got there first. One aggregate at a time per process; different aggregates run concurrently.
import type { Logger } from '../../runtime/logger.ts';
import { type EventEnvelope, envelope } from '../../events/catalogue.ts';
import type { AppCommand, CellCommand, ContainerCommand, PolicyCommand } from '../../events/commands.ts';
import { type Model, freeTagCount, liveApp, overlappingCells, startConflict } from '../../projections/model.ts';
import { dictOf } from '../../projections/dict.ts';
import { KeyedMutex } from '../../runtime/keyed-mutex.ts';
import type { EventLog, LogFollower } from '../../runtime/event-log.ts';
import { WrongExpectedSequenceError } from '../../runtime/stream-publisher.ts';
import { ConflictError, ForbiddenError, NetfoldError, NotFoundError, ValidationError } from '../../runtime/errors.ts';
import { eventSubject } from '../../runtime/subjects.ts';
import { type Access, type Decision, type Rejection, decideApp, decideCell, decideContainer, decidePolicies } from './decide.ts';

export type CommandMeta = { actor: string; correlationId: string; causationId?: string };

export type CommandResult = {
  /** The event-log sequence at which the requested state holds (the last appended event, or the aggregate's). */
  revision: number;
  events: EventEnvelope[];
  /** What the decision noticed, e.g. why nothing was appended (`already-registered`) or `stopped-before-start`. */
  note?: string;
};

export type WriterOptions = {
  log: Logger;
  eventLog: EventLog;
  follower: LogFollower<Model>;
  now: () => Date;
  newId: () => string;
  /** Attempts per command when other writers move the aggregate concurrently. */
  maxAttempts?: number;
  policyQuota: number;
  /** The overlay network: every cell's container range and every container IP lies in it. */
  overlayCidr: string;
};

export function rejectionError(r: Rejection): NetfoldError {
  switch (r.status) {
    case 400:
      return new ValidationError([{ path: '', message: r.message }], r.code);
    case 403:
      return new ForbiddenError(r.message, r.code);
    case 404:
      return new NotFoundError(r.message, r.code);
    case 409:
      return new ConflictError(r.message, r.code);
  }
}

export class Writer {
  readonly #o: WriterOptions;
  readonly #mutex = new KeyedMutex();
  readonly #log: Logger;
  /** Counters for metrics and tests. */
  readonly stats = { appended: 0, conflicts: 0 };

  constructor(opts: WriterOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'writer' });
  }

  get model(): Model {
    return this.#o.follower.state;
  }

  /**
   * Runs one decision on one aggregate subject. `related` are other aggregates the decision reads (e.g. the apps a
   * policy names): when the model has never seen one, the log is asked for it first, so a write acknowledged by
   * another writer instance is not missed. The aggregate itself needs no such check: if the model is behind on
   * it, the append's expected sequence fails and the decision is made again on the caught-up model.
   *
   * `took`, when given, is asked once the model has folded the appended events: a rule spanning aggregates (one
   * holder per IP, non-overlapping cell ranges) is checked by the decider and settled by the fold in log order, so
   * when another writer won a race the fold ignored this event, and the caller gets the refusal, not a revision.
   */
  async execute(
    subject: string,
    related: readonly string[],
    decide: (m: Model) => Decision,
    meta: CommandMeta,
    took?: (m: Model) => Rejection | undefined,
  ): Promise<CommandResult> {
    const { follower, eventLog } = this.#o;
    return this.#mutex.run(subject, async () => {
      await this.catchUpOn(related);
      const attempts = this.#o.maxAttempts ?? 16;
      for (let attempt = 1; attempt <= attempts; attempt++) {
        const model = follower.state;
        const decision = decide(model);
        if (!decision.ok) throw rejectionError(decision.rejection);
        if (decision.events.length === 0) {
          const result: CommandResult = { revision: model.subjectSeq[subject] ?? model.seq, events: [] };
          if (decision.note) result.note = decision.note;
          return result;
        }
        let expected = model.subjectSeq[subject] ?? 0;
        const appended: EventEnvelope[] = [];
        try {
          for (const e of decision.events) {
            const env = envelope(e, { id: this.#o.newId(), at: this.#o.now().toISOString(), ...meta });
            expected = await eventLog.append(subject, env, { expectedSubjectSeq: expected });
            appended.push(env);
            this.stats.appended += 1;
          }
          await follower.waitFor(expected);
          const lost = took?.(follower.state);
          if (lost) {
            this.#log.warn({ subject, code: lost.code, revision: expected }, 'append-ignored-by-fold');
            throw rejectionError(lost);
          }
          const result: CommandResult = { revision: expected, events: appended };
          if (decision.note) result.note = decision.note;
          return result;
        } catch (err) {
          if (!(err instanceof WrongExpectedSequenceError)) throw err;
          this.stats.conflicts += 1;
          this.#log.debug({ subject, attempt }, 'append-conflict');
          await follower.waitFor(await eventLog.lastSubjectSeq(subject));
          // Every conflict means another writer made progress; after a few in a row, back off a random moment
          // (up to 64 ms) so that writers hammering one aggregate take turns instead of colliding again.
          if (attempt >= 3) await new Promise((r) => setTimeout(r, Math.random() * 2 ** Math.min(attempt + 1, 6)));
        }
      }
      throw new ConflictError(`${subject} kept changing; try again`, 'concurrency-conflict', true);
    });
  }

  /** Makes sure the model has folded the latest event of each subject it has never seen. */
  async catchUpOn(subjects: readonly string[]): Promise<void> {
    const { follower, eventLog } = this.#o;
    const unknown = subjects.filter((s) => follower.state.subjectSeq[s] === undefined);
    if (unknown.length === 0) return;
    const seqs = await Promise.all(unknown.map((s) => eventLog.lastSubjectSeq(s)));
    await follower.waitFor(Math.max(...seqs));
  }

  // ---- commands -------------------------------------------------------------------------------------------------

  async cell(cmd: CellCommand, meta: CommandMeta): Promise<CommandResult> {
    const cellId = cmd.data.cellId;
    const overlayCidr = this.#o.overlayCidr;
    return this.execute(
      eventSubject.cell(cellId),
      [],
      (m) =>
        decideCell(cmd, {
          cell: m.cells[cellId],
          overlayCidr,
          overlapping: cmd.type === 'RegisterCell' ? overlappingCells(m, cellId, cmd.data.subnet) : [],
          running: Object.keys(m.containersByCell[cellId] ?? {}).length,
        }),
      meta,
      (m) => {
        const cell = m.cells[cellId];
        if (cmd.type === 'RegisterCell' && (cell?.status !== 'active' || cell.subnet !== cmd.data.subnet)) {
          return { status: 409, code: 'subnet-overlap', message: `container range ${cmd.data.subnet} overlaps a cell registered concurrently` };
        }
        if (cmd.type === 'DecommissionCell' && cell?.status !== 'decommissioned') {
          return { status: 409, code: 'cell-busy', message: `cell ${cellId} got a container concurrently: stop it first` };
        }
        return undefined;
      },
    );
  }

  async app(cmd: AppCommand, meta: CommandMeta): Promise<CommandResult> {
    const appId = cmd.data.appId;
    if (cmd.type === 'DeleteApp') await this.#deletePoliciesOfApp(appId, meta);
    return this.execute(eventSubject.app(appId), [], (m) => decideApp(cmd, {
      app: m.apps[appId],
      nameOwner: 'name' in cmd.data ? m.appIdByName[cmd.data.name.toLowerCase()] : undefined,
    }), meta);
  }

  async container(cmd: ContainerCommand, meta: CommandMeta): Promise<CommandResult> {
    const id = cmd.data.containerId;
    const start = cmd.type === 'StartContainer' ? cmd.data : undefined;
    const related = start ? [eventSubject.app(start.appId), eventSubject.cell(start.cellId)] : [];
    return this.execute(
      eventSubject.container(id),
      related,
      (m) =>
        decideContainer(cmd, {
          container: m.containers[id],
          app: start ? m.apps[start.appId] : undefined,
          cell: start ? m.cells[start.cellId] : undefined,
          ipHolder: start ? m.containersByIp[start.ip] : undefined,
          overlayCidr: this.#o.overlayCidr,
        }),
      meta,
      start && ((m) => startTook(m, start)),
    );
  }

  /** Decides a policy command against the current model without appending (also used to pre-check a batch). */
  decidePolicies(cmd: PolicyCommand, access: Access, m: Model = this.model): Decision {
    const ids = [cmd.data.sourceAppId, ...cmd.data.policies.map((p) => p.destAppId)];
    return decidePolicies(cmd, {
      access,
      apps: dictOf(ids.map((id) => [id, m.apps[id]] as const)),
      existing: m.policies[cmd.data.sourceAppId] ?? {},
      quota: this.#o.policyQuota,
      tagged: m.tags.byApp,
      freeTags: freeTagCount(m),
    });
  }

  async policies(cmd: PolicyCommand, access: Access, meta: CommandMeta): Promise<CommandResult> {
    const related = [cmd.data.sourceAppId, ...cmd.data.policies.map((p) => p.destAppId)].map(eventSubject.app);
    return this.execute(eventSubject.policy(cmd.data.sourceAppId), [...new Set(related)], (m) => this.decidePolicies(cmd, access, m), meta);
  }

  /** Before an app is deleted, its policies (as source and as destination) are deleted as events of their own. */
  async #deletePoliciesOfApp(appId: string, meta: CommandMeta): Promise<void> {
    await this.catchUpOn([eventSubject.app(appId)]);
    const m = this.model;
    if (!liveApp(m, appId)) return;
    const bySource = new Map<string, PolicyCommand['data']['policies']>();
    for (const p of Object.values(m.policies[appId] ?? {})) (bySource.get(appId) ?? bySource.set(appId, []).get(appId)!).push(p);
    for (const ref of Object.keys(m.policiesByDest[appId] ?? {})) {
      const src = ref.slice(0, ref.indexOf('|'));
      const rec = m.policies[src]?.[ref.slice(src.length + 1)];
      if (rec) (bySource.get(src) ?? bySource.set(src, []).get(src)!).push(rec);
    }
    const system: Access = { admin: true, spaces: [] };
    for (const [sourceAppId, rules] of [...bySource.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
      const policies = rules.map(({ destAppId, protocol, startPort, endPort }) => ({ destAppId, protocol, startPort, endPort }));
      await this.policies({ type: 'DeletePolicies', data: { sourceAppId, policies, reason: 'app-deleted' } }, system, meta);
    }
  }
}

/** After the fold: did this start take effect? (Another writer may have won the IP or the cell first.) */
function startTook(m: Model, d: { containerId: string; appId: string; cellId: string; ip: string }): Rejection | undefined {
  const c = m.containers[d.containerId];
  if (c && c.ip === d.ip && c.cellId === d.cellId && c.appId === d.appId) return undefined;
  if (c && c.ip === null) return undefined; // a stop arrived first: the start is ignored, as a repeat would be
  if (c) return { status: 409, code: 'container-conflict', message: `container ${d.containerId} was started concurrently with other details` };
  const why = startConflict(m, d) ?? 'ip-in-use';
  return { status: why === 'ip-in-use' || why === 'cell-decommissioned' ? 409 : 400, code: why, message: `container ${d.containerId} was not started: ${why} (settled by a concurrent change)` };
}
