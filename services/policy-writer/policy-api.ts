// The Cloud Foundry-shaped policy operations, independent of HTTP: authorization, validation, batching by source
// app, listing with filters and visibility.
import { type CfPolicy, type PolicyCommand, parseCfPolicies } from '../../events/commands.ts';
import type { DomainEvent, EventEnvelope, PolicyRule } from '../../events/catalogue.ts';
import { deriveCellState } from '../../projections/cell.ts';
import { type Allow, expandRules } from '../../projections/flows.ts';
import { type Model, type PolicyRecord, allPolicies, foldEventsInPlace } from '../../projections/model.ts';
import { ForbiddenError, ValidationError } from '../../runtime/errors.ts';
import { cloneDicts } from '../../projections/dict.ts';
import type { Principal } from '../../runtime/tokens.ts';
import type { Logger } from '../../runtime/logger.ts';
import type { Access } from './decide.ts';
import type { CommandMeta, Writer } from './writer.ts';
import { type ExportedPolicy, parsePolicyFile, writePolicyFile } from '../../events/policy-file.ts';
import { type PolicyChange, planPolicyFile } from '../../projections/policy-plan.ts';

export type CfPolicyJson = {
  source: { id: string };
  destination: { id: string; protocol: string; ports: { start: number; end: number } };
};

export type PolicyFilter = { ids?: string[]; sourceIds?: string[]; destIds?: string[] };

export function accessOf(p: Principal): Access {
  if (p.scopes.includes('network.admin')) return { admin: true, spaces: p.spaces };
  if (p.scopes.includes('network.write')) return { admin: false, spaces: p.spaces };
  throw new ForbiddenError('token lacks the network.admin or network.write scope', 'missing-scope');
}

function toCfJson(p: PolicyRecord): CfPolicyJson {
  return {
    source: { id: p.sourceAppId },
    destination: { id: p.destAppId, protocol: p.protocol, ports: { start: p.startPort, end: p.endPort } },
  };
}

function groupBySource(policies: CfPolicy[]): Map<string, PolicyRule[]> {
  const groups = new Map<string, PolicyRule[]>();
  for (const p of [...policies].sort((a, b) => (a.sourceAppId < b.sourceAppId ? -1 : a.sourceAppId > b.sourceAppId ? 1 : 0))) {
    (groups.get(p.sourceAppId) ?? groups.set(p.sourceAppId, []).get(p.sourceAppId)!).push(p.rule);
  }
  return groups;
}

export type PolicyApiOptions = { writer: Writer; maxPoliciesPerRequest: number };

export class PolicyApi {
  readonly #writer: Writer;
  readonly #maxPolicies: number;

  constructor(opts: PolicyApiOptions) {
    this.#writer = opts.writer;
    this.#maxPolicies = opts.maxPoliciesPerRequest;
  }

  /** Most policies in one request (`--max-policies-per-request`). */
  get maxPoliciesPerRequest(): number {
    return this.#maxPolicies;
  }

  /**
   * Creates or deletes every policy of a request: parsed, grouped into one command per source app (in source
   * order) and handed to the writer as one batch, which decides it whole — nothing is appended if any part is
   * refused — and then appends each source app's part atomically, in order. Both operations are idempotent, so a
   * request that failed midway (e.g. NATS unavailable) can simply be sent again. A dry run is the same decision,
   * with nothing appended.
   */
  async change(kind: 'create' | 'delete', principal: Principal, body: unknown, meta: CommandMeta, dryRun = false): Promise<{ revision: number } | DryRun> {
    const access = accessOf(principal);
    const parsed = parseCfPolicies(body, { maxPolicies: this.#maxPolicies });
    if (!parsed.ok) throw new ValidationError(parsed.issues);
    const commands: PolicyCommand[] = [...groupBySource(parsed.value)].map(([sourceAppId, policies]) =>
      kind === 'create'
        ? { type: 'CreatePolicies', data: { sourceAppId, policies } }
        : { type: 'DeletePolicies', data: { sourceAppId, policies, reason: 'requested' } },
    );
    if (dryRun) return this.#writer.previewPolicies(commands, access, (model, events) => dryRunOf(model, events, meta));
    const { revision } = await this.#writer.policies(commands, access, meta);
    return { revision };
  }

  list(principal: Principal, filter: PolicyFilter): { total_policies: number; policies: CfPolicyJson[]; revision: number } {
    const access = accessOf(principal);
    const m = this.#writer.model;
    const visible = (p: PolicyRecord) => access.admin || inSpaces(m, p.sourceAppId, access.spaces) || inSpaces(m, p.destAppId, access.spaces);
    const match = (p: PolicyRecord) =>
      (!filter.ids || filter.ids.includes(p.sourceAppId) || filter.ids.includes(p.destAppId)) &&
      (!filter.sourceIds || filter.sourceIds.includes(p.sourceAppId)) &&
      (!filter.destIds || filter.destIds.includes(p.destAppId));
    const policies = allPolicies(m)
      .filter((p) => visible(p) && match(p))
      .map(toCfJson);
    return { total_policies: policies.length, policies, revision: m.seq };
  }

  tags(principal: Principal): { tags: { id: string; tag: string; type: 'app' }[] } {
    if (!accessOf(principal).admin) throw new ForbiddenError('listing tags needs the network.admin scope', 'admin-only');
    const byApp = this.#writer.model.tags.byApp;
    return {
      tags: Object.entries(byApp)
        .sort(([, a], [, b]) => a - b)
        .map(([id, tag]) => ({ id, tag: tag.toString(16).toUpperCase().padStart(4, '0'), type: 'app' as const })),
    };
  }
}

/** A change of a policy file's plan as the API answers it: ids and the names they have now. */
export type FileChangeJson = {
  op: 'create' | 'delete';
  source: { id: string; name: string };
  destination: { id: string; name: string; protocol: string; ports: { start: number; end: number } };
  line?: number;
};

export type ApplyResult = {
  dry_run: boolean;
  /** The revision the state holds at (applied), or the plan was computed on (dry run). */
  revision: number;
  /** The correlation id every event of the change set carries (`netfold audit --change-set`). */
  change_set: string;
  created: number;
  deleted: number;
  unchanged: number;
  changes: FileChangeJson[];
  /** Dry run: per cell, the flows that would be allowed and no longer allowed. */
  cells?: DryRun['cells'];
};

export type ApplyProgress = { done: number; total: number };

/** Policy files (policy as code): apply one as a change set, export the current set in the same format. */
export class PolicyFiles {
  readonly #writer: Writer;
  readonly #log: Logger;

  constructor(writer: Writer, log: Logger) {
    this.#writer = writer;
    this.#log = log.child({ component: 'policy-files' });
  }

  /**
   * Parses the file, plans it on the model (creates; with `prune`, deletes in the file's scope) and, unless a dry
   * run, applies the plan as one change set: every event carries `meta.correlationId`. The creates are decided as
   * one batch and the deletes as another, each whole (a refusal of any part refuses it with nothing appended); the
   * deletes are decided before the creates are appended, so a refused delete appends nothing at all. Applying the
   * same file again changes nothing.
   */
  async apply(
    principal: Principal,
    text: string,
    o: { prune: boolean; dryRun: boolean },
    meta: CommandMeta,
    onProgress?: (p: ApplyProgress) => void,
  ): Promise<ApplyResult> {
    const access = accessOf(principal);
    const parsed = parsePolicyFile(text);
    if (!parsed.ok) throw new ValidationError(parsed.issues);
    const m = this.#writer.model;
    const usable = (appId: string) => access.admin || inSpaces(m, appId, access.spaces);
    const planned = planPolicyFile(m, parsed.value, { usable, prune: o.prune });
    if (!planned.ok) throw new ValidationError(planned.issues, 'unknown-app');
    const plan = planned.value;
    const creates: PolicyCommand[] = [...plan.creates].map(([sourceAppId, policies]) => ({ type: 'CreatePolicies', data: { sourceAppId, policies } }));
    const deletes: PolicyCommand[] = [...plan.deletes].map(([sourceAppId, policies]) => ({
      type: 'DeletePolicies',
      data: { sourceAppId, policies, reason: 'requested' },
    }));
    const result = (revision: number): ApplyResult => ({
      dry_run: o.dryRun,
      revision,
      change_set: meta.correlationId,
      created: plan.changes.filter((c) => c.op === 'create').length,
      deleted: plan.changes.filter((c) => c.op === 'delete').length,
      unchanged: plan.unchanged,
      changes: plan.changes.map((c) => changeJson(m, c)),
    });
    const deleteEvents = deletes.length > 0 ? await this.#writer.previewPolicies(deletes, access, (_m, events) => events) : [];
    if (o.dryRun) {
      return this.#writer.previewPolicies(creates, access, (model, events) => {
        const dry = dryRunOf(model, [...events, ...deleteEvents], meta);
        return { ...result(dry.revision), cells: dry.cells };
      });
    }
    const total = plan.changes.length;
    let done = 0;
    onProgress?.({ done, total });
    const step = (cmd: PolicyCommand) => {
      done += cmd.data.policies.length;
      onProgress?.({ done, total });
    };
    let revision = m.seq;
    if (creates.length > 0) revision = Math.max(revision, (await this.#writer.policies(creates, access, meta, step)).revision);
    if (deletes.length > 0) revision = Math.max(revision, (await this.#writer.policies(deletes, access, meta, step)).revision);
    const applied = result(revision);
    if (total > 0) {
      const { created, deleted, unchanged } = applied;
      this.#log.info({ changeSet: meta.correlationId, actor: meta.actor, created, deleted, unchanged, revision }, 'policy-file-applied');
    }
    return applied;
  }

  /**
   * The policies the token may change (both ends usable: every policy for an admin, those within its spaces for a
   * developer) as a policy file, grouped by the source app's space, apps by name. The file lists every space the
   * token speaks for, so applying it with --prune changes nothing.
   */
  export(principal: Principal, format: 'yaml' | 'json'): { revision: number; text: string } {
    const access = accessOf(principal);
    const m = this.#writer.model;
    const usable = (appId: string) => access.admin || inSpaces(m, appId, access.spaces);
    const policies: ExportedPolicy[] = allPolicies(m)
      .filter((p) => usable(p.sourceAppId) && usable(p.destAppId))
      .map((p) => ({
        space: m.apps[p.sourceAppId]!.spaceId,
        source: nameOf(m, p.sourceAppId),
        to: nameOf(m, p.destAppId),
        protocol: p.protocol,
        startPort: p.startPort,
        endPort: p.endPort,
      }));
    const spaces = access.admin
      ? [
          ...new Set(
            Object.values(m.apps)
              .filter((a) => !a.deleted)
              .map((a) => a.spaceId),
          ),
        ]
      : access.spaces;
    const header = `netfold policies at revision ${m.seq}\napply with: netfold apply -f FILE [--prune] [--dry-run]`;
    return { revision: m.seq, text: writePolicyFile(policies, spaces, header, format) };
  }
}

/** An app as a file names it: its name, unless that would resolve to another app (an id equal to it), then its id. */
function nameOf(m: Model, appId: string): string {
  const app = m.apps[appId]!;
  const other = m.apps[app.name];
  return other && !other.deleted && other.id !== appId ? appId : app.name;
}

function changeJson(m: Model, c: PolicyChange): FileChangeJson {
  const out: FileChangeJson = {
    op: c.op,
    source: { id: c.sourceAppId, name: m.apps[c.sourceAppId]?.name ?? c.sourceAppId },
    destination: {
      id: c.rule.destAppId,
      name: m.apps[c.rule.destAppId]?.name ?? c.rule.destAppId,
      protocol: c.rule.protocol,
      ports: { start: c.rule.startPort, end: c.rule.endPort },
    },
  };
  if (c.line !== undefined) out.line = c.line;
  return out;
}

function inSpaces(m: Model, appId: string, spaces: readonly string[]): boolean {
  const app = m.apps[appId];
  return !!app && spaces.includes(app.spaceId);
}

export type DryRun = {
  dry_run: true;
  /** The model revision the answer is computed on. */
  revision: number;
  /** The events the request would append. */
  events: DomainEvent[];
  /** Per cell hosting an affected destination: the flows that would be allowed and no longer allowed. */
  cells: Record<string, { added: string[]; removed: string[] }>;
};

const flowText = (a: Allow) => `${a.src} -> ${a.dst} ${a.protocol}/${a.startPort === a.endPort ? a.startPort : `${a.startPort}-${a.endPort}`}`;

/** What a change would do, computed on a copy of the model; nothing is appended. */
function dryRunOf(model: Model, events: DomainEvent[], meta: CommandMeta): DryRun {
  const after = cloneDicts(model); // not structuredClone: it would give the id-keyed records a prototype again
  const recorded = events.map((e, i) => ({
    seq: model.seq + 1 + i,
    subject: 'dry-run',
    event: { ...e, id: '00000000000000000000000000', at: new Date(0).toISOString(), actor: meta.actor, correlationId: meta.correlationId } as EventEnvelope,
  }));
  foldEventsInPlace(after, recorded);
  const dests = new Set(events.flatMap((e) => ('policies' in e.data ? e.data.policies.map((p) => p.destAppId) : [])));
  const cellIds = new Set<string>();
  for (const m of [model, after])
    for (const d of dests) for (const id of Object.keys(m.containersByApp[d] ?? {})) if (m.containers[id]?.cellId) cellIds.add(m.containers[id]!.cellId!);
  const cells: DryRun['cells'] = {};
  for (const cellId of [...cellIds].sort()) {
    const before = new Set(expandRules(deriveCellState(model, cellId)).allows.map(flowText));
    const next = new Set(expandRules(deriveCellState(after, cellId)).allows.map(flowText));
    const added = [...next].filter((f) => !before.has(f));
    const removed = [...before].filter((f) => !next.has(f));
    if (added.length > 0 || removed.length > 0) cells[cellId] = { added, removed };
  }
  return { dry_run: true, revision: model.seq, events, cells };
}
