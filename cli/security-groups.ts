// Operators' and developers' verbs for application security groups (egress rules), and their audit lines.
import { readFileSync } from 'node:fs';
import type { EventEnvelope } from '../events/catalogue.ts';
import { NetfoldError } from '../runtime/errors.ts';
import { openBucket } from '../runtime/buckets.ts';
import type { Bus } from '../runtime/nats.ts';
import { CELL_STATUS_BUCKET } from '../runtime/subjects.ts';
import type { Model, SecurityGroupRecord } from '../projections/model.ts';
import { type EgressExplanation, type EgressQuestion, explainEgress } from '../projections/explain-egress.ts';
import { latestPlanned } from '../services/topology-planner/published.ts';
import { type Out, UsageError, table } from './output.ts';

/** Security groups as `netfold state` prints them: one line each, then their rules. */
export function securityGroupLines(groups: readonly SecurityGroupRecord[]): string[] {
  return groups.flatMap((g) => {
    const spaces = (l: 'running' | 'staging') => Object.keys(g.spaces[l]).sort().join(',') || '-';
    const global = (['running', 'staging'] as const).filter((l) => g.globallyEnabled[l]).join('+') || '-';
    return [
      `  ${g.name} (${g.id}) global ${global}, running [${spaces('running')}], staging [${spaces('staging')}], ` +
        `last changed by ${g.updatedBy} ${g.updatedAt} (revision ${g.updatedSeq})`,
      ...g.rules.map(
        (r) =>
          `    ${r.protocol} ${r.destination}${r.ports ? ` ports ${r.ports}` : ''}` +
          `${r.protocol === 'icmp' ? ` type ${r.type} code ${r.code}` : ''}${r.log ? ' log' : ''}`,
      ),
    ];
  });
}

// ---- CLI verbs ------------------------------------------------------------------------------------------------------

/** The flags the security group verbs and egress `explain` add to the CLI's. */
export const SECURITY_GROUP_FLAGS = {
  group: { type: 'string' },
  names: { type: 'string' },
  rules: { type: 'string' },
  destination: { type: 'string' },
  ports: { type: 'string' },
  'icmp-type': { type: 'string' },
  'icmp-code': { type: 'string' },
  description: { type: 'string' },
  log: { type: 'boolean' },
  'running-spaces': { type: 'string' },
  'staging-spaces': { type: 'string' },
  'global-running': { type: 'string' },
  'global-staging': { type: 'string' },
  lifecycle: { type: 'string' },
} as const;

export const SECURITY_GROUP_HELP = `  security-group create --name N [--rules JSON|@FILE
                       | --protocol P --destination D [--ports X] [--icmp-type T --icmp-code C] [--description T] [--log]]
                       [--running-spaces S,..] [--staging-spaces S,..] [--global-running true] [--global-staging true]
  security-group list [--names N,..] [--running-spaces S,..] [--staging-spaces S,..]
  security-group get|delete --id G | --group NAME
  security-group update --id G | --group NAME [--name N] [--rules …|rule flags] [--global-running true|false] [--global-staging true|false]
  security-group bind|unbind --id G | --group NAME --space S[,S] [--lifecycle running|staging]
                                      application security groups (egress rules, Cloud Foundry v3 shapes); writes need network.admin
  explain CONTAINER|APP A.B.C.D [PORT] [--protocol tcp|udp|icmp] [--icmp-type T] [--icmp-code C]
                                      egress: may it reach that address outside the overlay, by which security group`;

type Flags = Record<string, string | boolean | undefined>;
export type SecurityGroupHttp = (method: string, path: string, body?: unknown) => Promise<{ body: any; revision: number | null }>;

/** Calls the gateway's `/v3/security_groups` with a bearer token; a refusal becomes a NetfoldError with its code. */
export function securityGroupHttp(base: string, token: string): SecurityGroupHttp {
  return async (method, path, body) => {
    const res = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : null,
    }).catch((err: unknown) => {
      throw new NetfoldError(`could not reach the policy API at ${base}`, 'unreachable', 503, true, err);
    });
    const text = await res.text();
    const data = text ? JSON.parse(text) : null;
    if (!res.ok) throw new NetfoldError(data?.error ?? `HTTP ${res.status}`, data?.code ?? 'http-error', res.status, false);
    const revision = res.headers.get('x-netfold-revision');
    return { body: data, revision: revision === null ? null : Number(revision) };
  };
}

const list = (v: string | boolean | undefined) => (typeof v === 'string' ? v.split(',').filter(Boolean) : undefined);
const str = (flags: Flags, name: string) => (typeof flags[name] === 'string' ? (flags[name] as string) : undefined);

function flagBool(flags: Flags, name: string): boolean | undefined {
  const v = str(flags, name);
  if (v === undefined) return undefined;
  if (v !== 'true' && v !== 'false') throw new UsageError(`--${name} must be true or false`);
  return v === 'true';
}

function flagInt(flags: Flags, name: string): number | undefined {
  const v = str(flags, name);
  if (v === undefined) return undefined;
  if (!/^-?\d+$/.test(v)) throw new UsageError(`--${name} must be an integer`);
  return Number(v);
}

/** `--rules` (JSON, or @FILE) or one rule from the rule flags; undefined when neither is given. */
function rulesOf(flags: Flags): unknown[] | undefined {
  const text = str(flags, 'rules');
  if (text !== undefined) {
    const json = text.startsWith('@') ? readFileSync(text.slice(1), 'utf8') : text;
    let rules: unknown;
    try {
      rules = JSON.parse(json);
    } catch {
      throw new UsageError('--rules must be a JSON array of rules (or @FILE holding one)');
    }
    if (!Array.isArray(rules)) throw new UsageError('--rules must be a JSON array of rules');
    return rules;
  }
  if (str(flags, 'destination') === undefined) return undefined;
  const rule: Record<string, unknown> = { protocol: str(flags, 'protocol') ?? 'tcp', destination: str(flags, 'destination') };
  if (str(flags, 'ports') !== undefined) rule.ports = str(flags, 'ports');
  if (flagInt(flags, 'icmp-type') !== undefined) rule.type = flagInt(flags, 'icmp-type');
  if (flagInt(flags, 'icmp-code') !== undefined) rule.code = flagInt(flags, 'icmp-code');
  if (str(flags, 'description') !== undefined) rule.description = str(flags, 'description');
  if (flags.log === true) rule.log = true;
  return [rule];
}

const PATH = '/v3/security_groups';

async function groupIdOf(http: SecurityGroupHttp, flags: Flags): Promise<string> {
  const id = str(flags, 'id');
  if (id !== undefined) return id;
  const name = str(flags, 'group');
  if (name === undefined) throw new UsageError('name the group: --id GUID or --group NAME');
  const r = await http('GET', `${PATH}?names=${encodeURIComponent(name)}`);
  const found = r.body.resources?.[0]?.guid as string | undefined;
  if (!found) throw new NetfoldError(`no security group named "${name}"`, 'security-group-not-found', 404, false);
  return found;
}

function groupText(g: any): string {
  const spaces = (l: { data: { guid: string }[] }) => l.data.map((s) => s.guid).join(',') || '-';
  const global = (['running', 'staging'] as const).filter((l) => g.globally_enabled[l]).join('+') || '-';
  const rules = (g.rules as any[]).map((r, i) => {
    const what = r.protocol === 'icmp' ? `icmp type ${r.type} code ${r.code}` : r.protocol === 'all' ? 'all' : `${r.protocol}/${r.ports}`;
    return `  [${i}] ${what} to ${r.destination}${r.log ? ' (logged)' : ''}${r.description ? `  # ${r.description}` : ''}`;
  });
  return [
    `${g.name} (${g.guid}), revision ${g.revision}`,
    `  global: ${global}; running spaces: ${spaces(g.relationships.running_spaces)}; staging spaces: ${spaces(g.relationships.staging_spaces)}`,
    ...rules,
  ].join('\n');
}

/** `netfold security-group <verb>`. */
export async function securityGroupCli(verb: string | undefined, flags: Flags, out: Out, http: () => SecurityGroupHttp): Promise<void> {
  const lifecycle = str(flags, 'lifecycle') ?? 'running';
  if (lifecycle !== 'running' && lifecycle !== 'staging') throw new UsageError('--lifecycle must be running or staging');
  const written = (r: { body: any; revision: number | null }, what: string) =>
    out.print(`ok: ${what}, revision ${r.revision}`, { ...r.body, revision: r.revision });
  switch (verb) {
    case 'create': {
      const name = str(flags, 'name');
      if (name === undefined) throw new UsageError('--name is required');
      const body: Record<string, unknown> = { name, rules: rulesOf(flags) ?? [] };
      const ge: Record<string, boolean> = {};
      for (const l of ['running', 'staging'] as const) {
        const v = flagBool(flags, `global-${l}`);
        if (v !== undefined) ge[l] = v;
      }
      if (Object.keys(ge).length > 0) body.globally_enabled = ge;
      const rel = (spaces: string[] | undefined) => ({ data: (spaces ?? []).map((guid) => ({ guid })) });
      body.relationships = { running_spaces: rel(list(flags['running-spaces'])), staging_spaces: rel(list(flags['staging-spaces'])) };
      const r = await http()('POST', PATH, body);
      return written(r, `security group ${r.body.name} created (${r.body.guid})`);
    }
    case 'list': {
      const q = new URLSearchParams({ per_page: '5000' });
      if (str(flags, 'names')) q.set('names', str(flags, 'names')!);
      if (str(flags, 'running-spaces')) q.set('running_space_guids', str(flags, 'running-spaces')!);
      if (str(flags, 'staging-spaces')) q.set('staging_space_guids', str(flags, 'staging-spaces')!);
      const r = await http()('GET', `${PATH}?${q.toString()}`);
      const rows = [['NAME', 'GUID', 'RULES', 'GLOBAL', 'RUNNING SPACES', 'STAGING SPACES']].concat(
        (r.body.resources as any[]).map((g) => [
          g.name,
          g.guid,
          String(g.rules.length),
          (['running', 'staging'] as const).filter((l) => g.globally_enabled[l]).join('+') || '-',
          g.relationships.running_spaces.data.map((s: { guid: string }) => s.guid).join(',') || '-',
          g.relationships.staging_spaces.data.map((s: { guid: string }) => s.guid).join(',') || '-',
        ]),
      );
      return out.print(`${table(rows)}\n${r.body.pagination.total_results} security groups`, r.body);
    }
    case 'get': {
      const h = http();
      const r = await h('GET', `${PATH}/${await groupIdOf(h, flags)}`);
      return out.print(groupText(r.body), r.body);
    }
    case 'update': {
      const h = http();
      const id = await groupIdOf(h, flags);
      const body: Record<string, unknown> = {};
      if (str(flags, 'name') !== undefined) body.name = str(flags, 'name');
      const rules = rulesOf(flags);
      if (rules !== undefined) body.rules = rules;
      const ge: Record<string, boolean> = {};
      for (const l of ['running', 'staging'] as const) {
        const v = flagBool(flags, `global-${l}`);
        if (v !== undefined) ge[l] = v;
      }
      if (Object.keys(ge).length > 0) body.globally_enabled = ge;
      if (Object.keys(body).length === 0) throw new UsageError('nothing to update: give --name, --rules (or rule flags), --global-running or --global-staging');
      return written(await h('PATCH', `${PATH}/${id}`, body), `security group ${id} updated`);
    }
    case 'delete': {
      const h = http();
      const id = await groupIdOf(h, flags);
      return written(await h('DELETE', `${PATH}/${id}`), `security group ${id} deleted`);
    }
    case 'bind': {
      const h = http();
      const id = await groupIdOf(h, flags);
      const spaces = list(flags.space);
      if (!spaces || spaces.length === 0) throw new UsageError('--space is required');
      const r = await h('POST', `${PATH}/${id}/relationships/${lifecycle}_spaces`, { data: spaces.map((guid) => ({ guid })) });
      return written(r, `bound to ${lifecycle} spaces ${spaces.join(', ')}`);
    }
    case 'unbind': {
      const h = http();
      const id = await groupIdOf(h, flags);
      const spaces = list(flags.space);
      if (!spaces || spaces.length === 0) throw new UsageError('--space is required');
      let last: { body: any; revision: number | null } = { body: null, revision: null };
      for (const s of spaces) last = await h('DELETE', `${PATH}/${id}/relationships/${lifecycle}_spaces/${encodeURIComponent(s)}`);
      return written(last, `unbound from ${lifecycle} spaces ${spaces.join(', ')}`);
    }
    default:
      throw new UsageError('usage: netfold security-group create|list|get|update|delete|bind|unbind …; see "netfold help"');
  }
}

export type EgressExplainView = EgressExplanation &
  EgressQuestion & {
    from: string;
    revision: number;
    egressDefault: string;
    enforcement: { cellId: string; planned: number | null; applied: number | null } | null;
  };

/** `netfold explain SOURCE A.B.C.D [PORT]`: the egress answer, with the source cell's planned and applied revision. */
async function explainEgressAt(
  bus: Bus,
  m: Model,
  from: string,
  q: EgressQuestion,
  overlayCidr: string,
  egressDefault: 'deny' | 'allow',
): Promise<EgressExplainView> {
  const e = explainEgress(m, from, q, overlayCidr, egressDefault);
  let enforcement: EgressExplainView['enforcement'] = null;
  const cellId = e.source?.cellId;
  if (cellId) {
    const status = await openBucket(bus, CELL_STATUS_BUCKET);
    const applied = status ? ((await status.get(cellId))?.json<{ revision?: number }>()?.revision ?? null) : null;
    enforcement = { cellId, planned: (await latestPlanned(bus, cellId))?.revision ?? null, applied };
  }
  return { ...e, ...q, from, revision: m.seq, egressDefault, enforcement };
}

/** Parses the egress form of `explain` (positionals after the verb) and prints the answer. */
export async function explainEgressCli(
  args: string[],
  flags: Flags,
  out: Out,
  withModel: <T>(work: (bus: Bus, m: Model) => Promise<T>) => Promise<T>,
  settings: { overlayCidr: string; egressDefault: string },
): Promise<void> {
  const [from, destination, port] = args;
  const protocol = str(flags, 'protocol') ?? 'tcp';
  if (!from || !destination || (protocol !== 'icmp' && (!port || !/^\d+$/.test(port))) || !['tcp', 'udp', 'icmp'].includes(protocol)) {
    throw new UsageError('usage: netfold explain CONTAINER|APP A.B.C.D PORT [--protocol tcp|udp] | --protocol icmp [--icmp-type T] [--icmp-code C]');
  }
  const q: EgressQuestion = { destination, protocol: protocol as EgressQuestion['protocol'] };
  if (protocol === 'icmp') {
    q.icmpType = flagInt(flags, 'icmp-type') ?? 8;
    q.icmpCode = flagInt(flags, 'icmp-code') ?? 0;
  } else q.port = Number(port);
  const dflt = settings.egressDefault === 'allow' ? 'allow' : 'deny';
  await withModel(async (bus, m) => {
    const e = await explainEgressAt(bus, m, from, q, settings.overlayCidr, dflt);
    const what = protocol === 'icmp' ? `icmp type ${q.icmpType} code ${q.icmpCode}` : `${protocol}/${port}`;
    const src = e.source;
    const human = [
      `${from} -> ${destination} ${what}: ${e.allowed ? 'ALLOWED' : 'DENIED'} (${e.reason}) at revision ${e.revision}`,
      ...(src ? [`  source: app ${src.appId} in space ${src.spaceId}, ${src.lifecycle}${src.cellId ? ` on cell ${src.cellId}` : ''}`] : []),
      ...e.applicable.map((g) => `  applies: ${g.groupName} (${g.groupId})${g.global ? ' (globally enabled)' : ''}`),
      ...e.matches.map(
        (x) =>
          `  by security group ${x.groupName} rule [${x.index}] ${x.rule.protocol} ${x.rule.destination}` +
          `${x.rule.ports ? ` ports ${x.rule.ports}` : ''}${x.rule.log ? ' (logged)' : ''}, ` +
          `last changed ${x.updatedAt} by ${x.updatedBy} (revision ${x.updatedSeq})`,
      ),
      ...(e.enforcement
        ? [
            `  cell ${e.enforcement.cellId}: planned revision ${e.enforcement.planned ?? '-'}, applied ${e.enforcement.applied ?? '-'}` +
              (e.enforcement.planned !== null && e.enforcement.applied !== null && e.enforcement.applied >= e.enforcement.planned ? ' (in force)' : ''),
          ]
        : []),
    ].join('\n');
    out.print(human, e);
  });
}
