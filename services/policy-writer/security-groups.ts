// Application security groups in Cloud Foundry v3 shapes, independent of HTTP: validation (422 with every issue),
// authorization (admins write; developers read the groups that apply to their spaces), decisions through the
// writer (one aggregate subject per group), listing with filters and pagination.
import { randomUUID } from 'node:crypto';
import {
  type EgressRule,
  type Lifecycle,
  type SecurityGroupCommand,
  parseCreateSecurityGroup,
  parseFilterList,
  parseSpaceRelationship,
  parseUpdateSecurityGroup,
} from '../../events/security-groups.ts';
import { type Model, type SecurityGroupRecord, allSecurityGroups } from '../../projections/model.ts';
import { NotFoundError, UnprocessableError, ValidationError } from '../../runtime/errors.ts';
import type { Issue } from '../../runtime/errors.ts';
import type { Principal } from '../../runtime/tokens.ts';
import { eventSubject } from '../../runtime/subjects.ts';
import { ID_PATTERN } from '../../events/fields.ts';
import { accessOf } from './policy-api.ts';
import type { Access } from './decide.ts';
import { decideSecurityGroup } from './decide-security-groups.ts';
import type { CommandMeta, Writer } from './writer.ts';

export const SECURITY_GROUPS_PATH = '/v3/security_groups';

type SpaceList = { data: { guid: string }[] };

/** A security group as Cloud Foundry v3 shows it (plus netfold's `revision`: the log sequence it was last changed at). */
export type SecurityGroupJson = {
  guid: string;
  created_at: string;
  updated_at: string;
  name: string;
  globally_enabled: { running: boolean; staging: boolean };
  rules: EgressRule[];
  relationships: { running_spaces: SpaceList; staging_spaces: SpaceList };
  links: { self: { href: string } };
  revision: number;
};

export type SecurityGroupPage = {
  pagination: {
    total_results: number;
    total_pages: number;
    first: { href: string };
    last: { href: string };
    next: { href: string } | null;
    previous: null | { href: string };
  };
  resources: SecurityGroupJson[];
};

/** What a write answers: the group (absent after a delete) and the revision at which the change holds. */
export type SecurityGroupWrite<T> = { body: T; revision: number };

const MAX_PER_PAGE = 5000;

function spacesOf(g: SecurityGroupRecord, lc: Lifecycle, visible: (space: string) => boolean): SpaceList {
  return {
    data: Object.keys(g.spaces[lc])
      .filter(visible)
      .sort()
      .map((guid) => ({ guid })),
  };
}

/** A developer sees the bound spaces that are theirs only (Cloud Foundry shows the spaces a user can read). */
function toJson(g: SecurityGroupRecord, access: Access): SecurityGroupJson {
  const visible = (space: string) => access.admin || access.spaces.includes(space);
  return {
    guid: g.id,
    created_at: g.createdAt,
    updated_at: g.updatedAt,
    name: g.name,
    globally_enabled: { ...g.globallyEnabled },
    rules: g.rules,
    relationships: { running_spaces: spacesOf(g, 'running', visible), staging_spaces: spacesOf(g, 'staging', visible) },
    links: { self: { href: `${SECURITY_GROUPS_PATH}/${g.id}` } },
    revision: g.updatedSeq,
  };
}

/** May the caller read a group: admins all; developers those globally enabled or bound to one of their spaces. */
function readable(g: SecurityGroupRecord, access: Access): boolean {
  if (access.admin) return true;
  if (g.globallyEnabled.running || g.globallyEnabled.staging) return true;
  return access.spaces.some((s) => g.spaces.running[s] || g.spaces.staging[s]);
}

export type SecurityGroupQuery = Record<string, unknown>;

const LIST_PARAMS = ['names', 'guids', 'running_space_guids', 'staging_space_guids', 'page', 'per_page', 'order_by'];

export class SecurityGroupApi {
  readonly #writer: Writer;
  readonly #newId: () => string;

  constructor(opts: { writer: Writer; newId?: () => string }) {
    this.#writer = opts.writer;
    this.#newId = opts.newId ?? randomUUID;
  }

  get #model(): Model {
    return this.#writer.model;
  }

  async create(principal: Principal, body: unknown, meta: CommandMeta): Promise<SecurityGroupWrite<SecurityGroupJson>> {
    const access = accessOf(principal);
    const parsed = parseCreateSecurityGroup(body);
    if (!parsed.ok) throw new UnprocessableError(parsed.issues);
    const groupId = this.#newId();
    const revision = await this.#run({ type: 'CreateSecurityGroup', data: { ...parsed.value, groupId } }, access, meta);
    return { body: this.#json(groupId, access), revision };
  }

  async update(principal: Principal, guid: string, body: unknown, meta: CommandMeta): Promise<SecurityGroupWrite<SecurityGroupJson>> {
    const access = accessOf(principal);
    this.#visible(guid, access);
    const parsed = parseUpdateSecurityGroup(body);
    if (!parsed.ok) throw new UnprocessableError(parsed.issues);
    const revision = await this.#run({ type: 'UpdateSecurityGroup', data: { ...parsed.value, groupId: guid } }, access, meta);
    return { body: this.#json(guid, access), revision };
  }

  async delete(principal: Principal, guid: string, meta: CommandMeta): Promise<SecurityGroupWrite<null>> {
    const access = accessOf(principal);
    this.#visible(guid, access);
    const revision = await this.#run({ type: 'DeleteSecurityGroup', data: { groupId: guid } }, access, meta);
    return { body: null, revision };
  }

  /** `POST …/relationships/<lifecycle>_spaces`: answers every space now bound for that lifecycle. */
  async bind(principal: Principal, guid: string, lifecycle: Lifecycle, body: unknown, meta: CommandMeta): Promise<SecurityGroupWrite<SpaceList>> {
    const access = accessOf(principal);
    this.#visible(guid, access);
    const parsed = parseSpaceRelationship(body);
    if (!parsed.ok) throw new UnprocessableError(parsed.issues);
    const revision = await this.#run({ type: 'BindSecurityGroup', data: { groupId: guid, lifecycle, spaceIds: parsed.value } }, access, meta);
    const g = this.#model.securityGroups[guid];
    return { body: g ? spacesOf(g, lifecycle, () => true) : { data: [] }, revision };
  }

  async unbind(principal: Principal, guid: string, lifecycle: Lifecycle, spaceGuid: string, meta: CommandMeta): Promise<SecurityGroupWrite<null>> {
    const access = accessOf(principal);
    this.#visible(guid, access);
    if (!ID_PATTERN.test(spaceGuid)) throw new UnprocessableError([{ path: 'space_guid', message: 'is not a valid id' }]);
    const revision = await this.#run({ type: 'UnbindSecurityGroup', data: { groupId: guid, lifecycle, spaceIds: [spaceGuid] } }, access, meta);
    return { body: null, revision };
  }

  get(principal: Principal, guid: string): SecurityGroupJson {
    const access = accessOf(principal);
    this.#visible(guid, access);
    return this.#json(guid, access);
  }

  /** `GET /v3/security_groups`: filters `names`, `guids`, `running_space_guids`, `staging_space_guids`; `page`, `per_page`. */
  list(principal: Principal, query: SecurityGroupQuery): SecurityGroupPage {
    const access = accessOf(principal);
    const issues: Issue[] = [];
    for (const k of Object.keys(query)) if (!LIST_PARAMS.includes(k)) issues.push({ path: k, message: 'is not a known query parameter' });
    const filter = <T>(r: { ok: true; value: T } | { ok: false; issues: Issue[] }): T | undefined => {
      if (r.ok) return r.value;
      issues.push(...r.issues);
      return undefined;
    };
    const names = filter(parseFilterList(query.names, 'names', 'name'));
    const guids = filter(parseFilterList(query.guids, 'guids', 'id'));
    const running = filter(parseFilterList(query.running_space_guids, 'running_space_guids', 'id'));
    const staging = filter(parseFilterList(query.staging_space_guids, 'staging_space_guids', 'id'));
    const page = intParam(query.page, 'page', 1, 1_000_000, 1, issues);
    const perPage = intParam(query.per_page, 'per_page', 1, MAX_PER_PAGE, 50, issues);
    if (query.order_by !== undefined && query.order_by !== 'name') issues.push({ path: 'order_by', message: 'only name is supported' });
    if (issues.length > 0) throw new ValidationError(issues);
    const all = allSecurityGroups(this.#model).filter(
      (g) =>
        readable(g, access) &&
        (!names || names.includes(g.name)) &&
        (!guids || guids.includes(g.id)) &&
        (!running || running.some((s) => g.spaces.running[s])) &&
        (!staging || staging.some((s) => g.spaces.staging[s])),
    );
    const totalPages = Math.max(1, Math.ceil(all.length / perPage));
    const href = (p: number) => ({ href: `${SECURITY_GROUPS_PATH}?page=${p}&per_page=${perPage}` });
    return {
      pagination: {
        total_results: all.length,
        total_pages: totalPages,
        first: href(1),
        last: href(totalPages),
        next: page < totalPages ? href(page + 1) : null,
        previous: page > 1 ? href(Math.min(page - 1, totalPages)) : null,
      },
      resources: all.slice((page - 1) * perPage, page * perPage).map((g) => toJson(g, access)),
    };
  }

  /** A group the caller may not read looks like one that does not exist (404), as in Cloud Foundry. */
  #visible(guid: string, access: Access): SecurityGroupRecord {
    const g = ID_PATTERN.test(guid) ? this.#model.securityGroups[guid] : undefined;
    if (!g || !readable(g, access)) throw new NotFoundError(`security group ${guid} not found`, 'security-group-not-found');
    return g;
  }

  #json(guid: string, access: Access): SecurityGroupJson {
    const g = this.#model.securityGroups[guid];
    if (!g) throw new NotFoundError(`security group ${guid} not found`, 'security-group-not-found');
    return toJson(g, access);
  }

  async #run(cmd: SecurityGroupCommand, access: Access, meta: CommandMeta): Promise<number> {
    const id = cmd.data.groupId;
    const name = 'name' in cmd.data ? cmd.data.name : undefined;
    const result = await this.#writer.execute(
      eventSubject.securityGroup(id),
      [],
      (m) => decideSecurityGroup(cmd, { access, group: m.securityGroups[id], nameOwner: name === undefined ? undefined : m.securityGroupIdByName[name] }),
      meta,
      (m) => {
        // a concurrent create or rename elsewhere may have taken the name first: the fold then ignored this one
        if (name === undefined || cmd.type === 'DeleteSecurityGroup') return undefined;
        const holder = m.securityGroupIdByName[name];
        return holder === undefined || holder === id
          ? undefined
          : { status: 422, code: 'security-group-name-taken', message: `Security group with name '${name}' already exists.` };
      },
    );
    return result.revision;
  }
}

function intParam(v: unknown, name: string, min: number, max: number, fallback: number, issues: Issue[]): number {
  if (v === undefined) return fallback;
  const n = typeof v === 'string' && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < min || n > max) {
    issues.push({ path: name, message: `must be an integer between ${min} and ${max}` });
    return fallback;
  }
  return n;
}
