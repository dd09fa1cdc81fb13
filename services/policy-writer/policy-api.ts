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
import type { Access } from './decide.ts';
import type { CommandMeta, Writer } from './writer.ts';

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
