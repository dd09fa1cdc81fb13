// The command side: load an aggregate's state from the in-memory model, decide, append with the aggregate's
// expected last sequence, wait until the model has folded the result, retry a bounded number of times when
// another writer got there first. One aggregate at a time per process; different aggregates run concurrently. A
// batch of policy commands (one request over several source apps) is decided whole, once, then appended per
// source app (`policies`).
import type { Logger } from '../../runtime/logger.ts';
import { type DomainEvent, type EventEnvelope, envelope } from '../../events/catalogue.ts';
import type { AppCommand, CellCommand, ContainerCommand, PolicyCommand } from '../../events/commands.ts';
import { type Model, freeTagCount, liveApp, policiesInto, startConflict, subjectSeqOf } from '../../projections/model.ts';
import { dict, dictOf } from '../../projections/dict.ts';
import { KeyedMutex } from '../../runtime/keyed-mutex.ts';
import type { EventLog, LogFollower } from '../../runtime/event-log.ts';
import { WrongExpectedSequenceError } from '../../runtime/nats-adapter.ts';
import { ConflictError, ForbiddenError, NetfoldError, NotFoundError, UnprocessableError, ValidationError } from '../../runtime/errors.ts';
import { eventSubject } from '../../runtime/subjects.ts';
import {
  type Access,
  type Decision,
  type Rejection,
  cellDecisionState,
  containerDecisionState,
  decideApp,
  decideCell,
  decideContainer,
  decidePolicies,
} from './decide.ts';

export type CommandMeta = { actor: string; correlationId: string; causationId?: string };

export type CommandResult = {
  /** The event-log sequence at which the requested state holds (the last appended event, or the aggregate's). */
  revision: number;
  events: EventEnvelope[];
  /** What the decision noticed, e.g. why nothing was appended (`already-registered`) or `stopped-before-start`. */
  note?: string;
  /** A container start: the address the container holds (named, or allocated by the writer). */
  ip?: string;
  /** A cell registration, or a start: the range the cell holds (named, or leased) and its underlay address. */
  lease?: { subnet: string; underlay: string | null };
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
  /** Prefix length of the range a cell registered without one is leased (24: a /24 per cell). */
  leasePrefix?: number;
};

function rejectionError(r: Rejection): NetfoldError {
  switch (r.status) {
    case 400:
      return new ValidationError([{ path: '', message: r.message }], r.code);
    case 403:
      return new ForbiddenError(r.message, r.code);
    case 404:
      return new NotFoundError(r.message, r.code);
    case 409:
      return new ConflictError(r.message, r.code, r.retryable === true);
    case 422:
      return new UnprocessableError([{ path: '', message: r.message }], r.code);
  }
}

/** A decision and where it was made: the aggregate's sequence its append expects, and the revision of a no-op. */
type Decided = { subject: string; decision: Decision; expectedSubjectSeq: number; revision: number };

/** A batch of policy commands, appended. `revision`: the highest of its commands' revisions. */
export type PolicyBatchResult = { revision: number; results: CommandResult[] };

export class Writer {
  readonly #o: WriterOptions;
  readonly #mutex = new KeyedMutex();
  readonly #log: Logger;
  /** Counters for metrics and tests. `decisions`: decider runs (one per command, plus one per conflict retried). */
  readonly stats = { appended: 0, conflicts: 0, decisions: 0 };

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
    return this.#mutex.run(subject, async () => {
      await this.catchUpOn(related);
      return this.#append(this.#decide(subject, decide), decide, meta, took);
    });
  }

  /** Decides once on the model as it is now, noting the aggregate's sequence the decision was made at. */
  #decide(subject: string, decide: (m: Model) => Decision): Decided {
    const model = this.#o.follower.state;
    this.stats.decisions += 1;
    // Read now: the live model is folded in place, so later reads could see events this decision never saw.
    const last = subjectSeqOf(model, subject);
    return { subject, decision: decide(model), expectedSubjectSeq: last ?? 0, revision: last ?? model.seq };
  }

  /**
   * Appends a decision with the sequence it was made at. A wrong sequence (another writer moved the aggregate)
   * waits for the model to fold the aggregate's latest event and decides again, up to `maxAttempts` decisions.
   * The caller holds the aggregate's lock.
   */
  async #append(first: Decided, decide: (m: Model) => Decision, meta: CommandMeta, took?: (m: Model) => Rejection | undefined): Promise<CommandResult> {
    const { follower, eventLog } = this.#o;
    const { subject } = first;
    const attempts = this.#o.maxAttempts ?? 16;
    let decided = first;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      if (attempt > 1) decided = this.#decide(subject, decide);
      const { decision } = decided;
      if (!decision.ok) throw rejectionError(decision.rejection);
      if (decision.events.length === 0) {
        const result: CommandResult = { revision: decided.revision, events: [] };
        if (decision.note) result.note = decision.note;
        return result;
      }
      let expected = decided.expectedSubjectSeq;
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
  }

  /** Makes sure the model has folded the latest event of each subject it has never seen. */
  async catchUpOn(subjects: readonly string[]): Promise<void> {
    const { follower, eventLog } = this.#o;
    const unknown = subjects.filter((s) => subjectSeqOf(follower.state, s) === undefined);
    if (unknown.length === 0) return;
    const seqs = await Promise.all(unknown.map((s) => eventLog.lastSubjectSeq(s)));
    await follower.waitFor(Math.max(...seqs));
  }

  // ---- commands -------------------------------------------------------------------------------------------------

  async cell(cmd: CellCommand, meta: CommandMeta): Promise<CommandResult> {
    const cellId = cmd.data.cellId;
    const opts = { overlayCidr: this.#o.overlayCidr, leasePrefix: this.#o.leasePrefix ?? 24 };
    const result = await this.execute(
      eventSubject.cell(cellId),
      [],
      (m) => decideCell(cmd, cellDecisionState(m, cmd, opts)),
      meta,
      (m) => cellTook(m, cmd),
    );
    const cell = this.model.cells[cellId];
    if (cmd.type === 'RegisterCell' && cell) result.lease = { subnet: cell.subnet, underlay: cell.underlay };
    return result;
  }

  async app(cmd: AppCommand, meta: CommandMeta): Promise<CommandResult> {
    const appId = cmd.data.appId;
    if (cmd.type === 'DeleteApp') await this.#deletePoliciesOfApp(appId, meta);
    return this.execute(
      eventSubject.app(appId),
      [],
      (m) =>
        decideApp(cmd, {
          app: m.apps[appId],
          nameOwner: 'name' in cmd.data ? m.appIdByName[cmd.data.name.toLowerCase()] : undefined,
        }),
      meta,
    );
  }

  async container(cmd: ContainerCommand, meta: CommandMeta): Promise<CommandResult> {
    const id = cmd.data.containerId;
    const start = cmd.type === 'StartContainer' ? cmd.data : undefined;
    const related = start ? [eventSubject.app(start.appId), eventSubject.cell(start.cellId)] : [];
    const overlayCidr = this.#o.overlayCidr;
    const result = await this.execute(
      eventSubject.container(id),
      related,
      (m) => decideContainer(cmd, containerDecisionState(m, cmd, overlayCidr)),
      meta,
      start && ((m) => startTook(m, start)),
    );
    const held = this.model.containers[id];
    const ip = start && held?.status === 'running' ? held.ip : null; // a start after its stop holds no address
    const cell = start && this.model.cells[start.cellId];
    if (ip) result.ip = ip;
    if (ip && cell) result.lease = { subnet: cell.subnet, underlay: cell.underlay }; // the container's gateway is the range's first address
    return result;
  }

  /**
   * Creates or deletes the policies of several source apps, at most one command per source app: the batch is
   * decided whole before anything is appended (a refused command refuses the batch), then each command is
   * appended in order, on its own aggregate subject.
   *
   * Each command is decided once. The model is caught up once on every app the batch names, and every command is
   * decided against that one model, the tags that earlier creates of the batch will claim counted as taken. That
   * decision is the whole-request check *and* what the first attempt appends, with the source app's sequence it
   * was made at. The locks of every source app are held from the decision to the last append, so in this process
   * nothing else writes them in between; only another process can, and then the append's expected sequence fails
   * and that one command is decided again on the caught-up model (as `execute` does). That re-decision may refuse
   * (e.g. `quota-exceeded` when the other writer used up the quota): the request then answers the refusal, with the
   * commands before it appended and none after it. The pre-check this replaced had the same window (between its
   * check and each command's own decision); no whole-request check can close it without a lock across processes.
   * Creates and deletes are idempotent, so sending the request again (after such a refusal, or after NATS failed
   * midway) completes it or refuses it before anything more is appended.
   * Rules that read other aggregates (the apps exist, tags are free) are checked on the model and settled by the
   * fold, as for a single command: a policy naming an app that another process deleted after the decision is
   * appended and has no effect (the fold ignores it); tags taken concurrently by another process are handed out by
   * the fold in log order. Both exactly as for a single command.
   */
  async policies(cmds: readonly PolicyCommand[], access: Access, meta: CommandMeta, onAppended?: (cmd: PolicyCommand) => void): Promise<PolicyBatchResult> {
    return this.#decidePolicyBatch(cmds, access, async (decided) => {
      const results: CommandResult[] = [];
      for (const [i, first] of decided.entries()) {
        const cmd = cmds[i]!;
        results.push(await this.#append(first, (m) => this.#decidePolicies(cmd, access, m), meta));
        onAppended?.(cmd);
      }
      return { revision: Math.max(0, ...results.map((r) => r.revision)), results };
    });
  }

  /**
   * Decides a batch exactly as `policies` does and appends nothing (the dry run). `preview` is called at once with
   * the model the batch was decided on and the events it would append, before that model can move on.
   */
  async previewPolicies<T>(cmds: readonly PolicyCommand[], access: Access, preview: (m: Model, events: DomainEvent[]) => T): Promise<T> {
    return this.#decidePolicyBatch(cmds, access, (decided, m) =>
      preview(
        m,
        decided.flatMap((d) => (d.decision.ok ? d.decision.events : [])),
      ),
    );
  }

  async #decidePolicyBatch<T>(cmds: readonly PolicyCommand[], access: Access, then: (decided: Decided[], m: Model) => Promise<T> | T): Promise<T> {
    const subjects = cmds.map((c) => eventSubject.policy(c.data.sourceAppId));
    if (new Set(subjects).size !== subjects.length) throw new Error('a policy batch holds at most one command per source app');
    const related = new Set(cmds.flatMap((c) => [c.data.sourceAppId, ...c.data.policies.map((p) => p.destAppId)]).map(eventSubject.app));
    return this.#mutex.runAll(subjects, async () => {
      await this.catchUpOn([...related]);
      const m = this.model;
      const claimed = new Set<string>();
      const decided: Decided[] = [];
      for (const [i, cmd] of cmds.entries()) {
        const d = this.#decide(subjects[i]!, (model) => this.#decidePolicies(cmd, access, model, claimed));
        if (!d.decision.ok) throw rejectionError(d.decision.rejection);
        for (const e of d.decision.events) {
          if (e.type !== 'PoliciesCreated') continue;
          for (const id of [e.data.sourceAppId, ...e.data.policies.map((p) => p.destAppId)]) if (m.tags.byApp[id] === undefined) claimed.add(id);
        }
        decided.push(d);
      }
      return then(decided, m);
    });
  }

  /**
   * One policy decision on a model. `claimed`: apps that earlier creates of the same batch will tag; they count as
   * tagged and their tags as no longer free (a retry decides on the model with those creates folded, without it).
   */
  #decidePolicies(cmd: PolicyCommand, access: Access, m: Model, claimed: ReadonlySet<string> = new Set()): Decision {
    const ids = [cmd.data.sourceAppId, ...cmd.data.policies.map((p) => p.destAppId)];
    const tagged = dict<number>();
    for (const id of ids) {
      const tag = m.tags.byApp[id] ?? (claimed.has(id) ? 0 : undefined); // 0: claimed by the batch, not yet assigned (never a real tag)
      if (tag !== undefined) tagged[id] = tag;
    }
    return decidePolicies(cmd, {
      access,
      apps: dictOf(ids.map((id) => [id, m.apps[id]] as const)),
      existing: m.policies[cmd.data.sourceAppId] ?? {},
      quota: this.#o.policyQuota,
      tagged,
      freeTags: freeTagCount(m) - claimed.size,
    });
  }

  /** Before an app is deleted, its policies (as source and as destination) are deleted as events of their own. */
  async #deletePoliciesOfApp(appId: string, meta: CommandMeta): Promise<void> {
    await this.catchUpOn([eventSubject.app(appId)]);
    const m = this.model;
    if (!liveApp(m, appId)) return;
    const bySource = new Map<string, PolicyCommand['data']['policies']>();
    for (const p of Object.values(m.policies[appId] ?? {})) (bySource.get(appId) ?? bySource.set(appId, []).get(appId)!).push(p);
    for (const rec of policiesInto(m, appId)) (bySource.get(rec.sourceAppId) ?? bySource.set(rec.sourceAppId, []).get(rec.sourceAppId)!).push(rec);
    const system: Access = { admin: true, spaces: [] };
    const cmds: PolicyCommand[] = [...bySource.entries()]
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([sourceAppId, rules]) => {
        const policies = rules.map(({ destAppId, protocol, startPort, endPort }) => ({ destAppId, protocol, startPort, endPort }));
        return { type: 'DeletePolicies', data: { sourceAppId, policies, reason: 'app-deleted' } };
      });
    await this.policies(cmds, system, meta);
  }
}

/** After the fold: did this registration (or decommission) take effect? (Another writer may have won the range or host first.) */
function cellTook(m: Model, cmd: CellCommand): Rejection | undefined {
  const cell = m.cells[cmd.data.cellId];
  if (cmd.type === 'DecommissionCell') {
    return cell?.status === 'decommissioned'
      ? undefined
      : { status: 409, code: 'cell-busy', message: `cell ${cmd.data.cellId} got a container concurrently: stop it first` };
  }
  const d = cmd.data;
  if (cell?.status === 'active' && (d.subnet === undefined || cell.subnet === d.subnet) && (d.underlay === undefined || cell.underlay === d.underlay))
    return undefined;
  if (d.subnet === undefined)
    return { status: 409, code: 'lease-conflict', message: `the range leased to ${d.cellId} was taken concurrently; try again`, retryable: true };
  return { status: 409, code: 'subnet-overlap', message: `container range ${d.subnet} (or underlay address) was registered concurrently by another cell` };
}

/** After the fold: did this start take effect? (Another writer may have won the IP or the cell first.) */
function startTook(m: Model, d: { containerId: string; appId: string; cellId: string; ip?: string }): Rejection | undefined {
  const c = m.containers[d.containerId];
  if (c && (d.ip === undefined || c.ip === d.ip) && c.cellId === d.cellId && c.appId === d.appId) return undefined;
  if (c && c.ip === null) return undefined; // a stop arrived first: the start is ignored, as a repeat would be
  if (c) return { status: 409, code: 'container-conflict', message: `container ${d.containerId} was started concurrently with other details` };
  const why = d.ip === undefined ? 'ip-in-use' : (startConflict(m, { ...d, ip: d.ip }) ?? 'ip-in-use');
  return {
    status: why === 'ip-in-use' || why === 'cell-decommissioned' ? 409 : 400,
    code: why,
    message: `container ${d.containerId} was not started: ${why} (settled by a concurrent change)`,
    // An allocated address taken concurrently: sending the start again allocates another.
    retryable: d.ip === undefined,
  };
}
