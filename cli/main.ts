// The netfold CLI. `netfold help` lists the commands.
import { kvLatest } from '../runtime/buckets.ts';
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { newId } from '../runtime/ids.ts';
import { SETTINGS, loadConfig, natsClientOf, natsServersOf, resolveTokenSecret, type Config } from '../runtime/config.ts';
import { NetfoldError, toNetfoldError } from '../runtime/errors.ts';
import { silentLogger } from '../runtime/logger.ts';
import { clientAuthOf, connectBus, type Bus } from '../runtime/nats.ts';
import {
  authorizationBlock,
  credentialFileOf,
  ensureCredentialFiles,
  principalName,
  readCredentialFile,
  type CredentialFile,
  type Principal,
} from '../runtime/authz.ts';
import { type IntakeCommandName, intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { mintToken, parseDuration, SCOPES } from '../runtime/tokens.ts';
import type { IntakeReply } from '../services/policy-writer/intake.ts';
import { type Out, UsageError, output, table } from './output.ts';
import { natsCredentialsDir, up } from './up.ts';
import { demo } from './demo.ts';
import { progressBar } from './progress-bar.ts';
import { applyPolicyFile, applyText, exportPolicyFile } from './policy-files.ts';
import { writeFileSync } from 'node:fs';
import { StreamTail, FAST_TAIL } from '../runtime/stream-tail.ts';
import { EventLog } from '../runtime/event-log.ts';
import { parseEvent } from '../events/catalogue.ts';
import { type AuditEntry, type AuditFilter, auditEntry, matches } from '../projections/audit.ts';
import { audit, cellsView, explainAt, modelAt, parsePoint, quarantined, replay, stateView } from './operators.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';
import { CELL_STATUS_BUCKET } from '../runtime/subjects.ts';
import type { CellStatus } from '../services/cell-agent/status.ts';
import { SECURITY_GROUP_FLAGS, SECURITY_GROUP_HELP, explainEgressCli, securityGroupCli, securityGroupHttp, securityGroupLines } from './security-groups.ts';

const HELP = `netfold — event-sourced container networking control plane

usage: netfold <command> [flags]

  up                                  the all-in-one: NATS (embedded unless --nats-url), gateway and intake, planner, discovery, simulated cells
  token mint --user U --scope S[,S] [--space ID,..] [--ttl 24h]
                                      mint a bearer token (scopes: ${SCOPES.join(', ')})
  cell register --id ID [--underlay A.B.C.D] [--subnet CIDR | --prefix N]
                                      register a cell: leased the next free range of the overlay (or the one named)
  cell decommission --id ID           retire a cell (refused while containers run there)
  app register --id ID --name NAME --space ID --org ID
  app rename --id ID --name NAME
  app delete --id ID
  container start --id ID --app ID --cell ID --index N [--ip A.B.C.D] [--lifecycle running|staging]
                                      (no --ip: the next free address of the cell; no --lifecycle: running)
  container stop --id ID
  policy add --from APP --to APP [--protocol tcp|udp] --port N[-M] [--dry-run]
  policy remove --from APP --to APP [--protocol tcp|udp] --port N[-M] [--dry-run]
  policy list [--id ID,..] [--source ID,..] [--dest ID,..]
  apply -f FILE [--dry-run] [--prune] [--wait]
                                      make the policies what a policy file (YAML or JSON; - for stdin) says, as one
                                      change set; --prune also deletes those of its spaces and apps it no longer has
  export [-f FILE] [--format yaml|json]
                                      the current policies as a policy file (stdout, or FILE)
  wait --revision N [--timeout 30s]   wait until revision N is enforced on every cell (exit 1 on timeout)
  audit [--app ID] [--actor A] [--type T] [--change-set ID] [--since TIME] [--until TIME] [--follow]
                                      every change: time, revision, actor, type, effect
  state [--at REVISION|TIME] [--cell ID]
                                      apps, containers, policies (and one cell's rules) as they were then
  explain SOURCE-APP DEST-APP PORT [--protocol tcp|udp]
                                      allowed or denied, by which policy, on which cells, enforced where
  replay [--to REVISION|TIME]         rebuild every cell from the log; compare with planner and agents (exit 1 on a difference)
  demo                                a scripted tour against a running "npm start"
  cells                               each cell's lease, underlay address and agent status: applied revision, rules, repairs, errors
  quarantine                          log entries the folds skipped (invalid, or a fold that failed), with why
${SECURITY_GROUP_HELP}
  creds --cells A,B [--platform ID,..] [--dir DIR]
                                      one NATS credential file per role, cell agent and platform component in DIR
                                      (default <data-dir>/nats; existing ones kept) and the nats-server authorization
                                      block for them on stdout, to paste into a cluster's config

common flags: --json (machine-readable output), --nats-url URL, --api URL (policy API, default
http://127.0.0.1:<http-port>), --token TOKEN (default: NETFOLD_TOKEN, then <data-dir>/admin.token),
--request-id ID (intake retries), and every setting in the README's configuration table.`;

const CLI_FLAGS = {
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  cells: { type: 'string' },
  platform: { type: 'string' },
  dir: { type: 'string' },
  api: { type: 'string' },
  token: { type: 'string' },
  'request-id': { type: 'string' },
  id: { type: 'string' },
  name: { type: 'string' },
  space: { type: 'string' },
  org: { type: 'string' },
  app: { type: 'string' },
  cell: { type: 'string' },
  index: { type: 'string' },
  ip: { type: 'string' },
  subnet: { type: 'string' },
  underlay: { type: 'string' },
  prefix: { type: 'string' },
  from: { type: 'string' },
  to: { type: 'string' },
  protocol: { type: 'string' },
  port: { type: 'string' },
  source: { type: 'string' },
  dest: { type: 'string' },
  user: { type: 'string' },
  scope: { type: 'string' },
  ttl: { type: 'string' },
  revision: { type: 'string' },
  timeout: { type: 'string' },
  since: { type: 'string' },
  until: { type: 'string' },
  follow: { type: 'boolean' },
  at: { type: 'string' },
  actor: { type: 'string' },
  type: { type: 'string' },
  'dry-run': { type: 'boolean' },
  file: { type: 'string', short: 'f' },
  prune: { type: 'boolean' },
  wait: { type: 'boolean' },
  format: { type: 'string' },
  'change-set': { type: 'string' },
} as const;

type Flags = Record<string, string | boolean | undefined>;

function need(flags: Flags, name: string): string {
  const v = flags[name];
  if (typeof v !== 'string' || v === '') throw new UsageError(`--${name} is required`);
  return v;
}

function intFlag(flags: Flags, name: string): number {
  const text = need(flags, name);
  const n = Number(text);
  if (!Number.isInteger(n)) throw new UsageError(`--${name} must be an integer, got "${text}"`);
  return n;
}

/** Read-only commands sign in as the operator; intake as the platform component `cli`; the demo's intake as `demo`. */
const OPERATOR: Principal = { role: 'operator' };
const CLI_PLATFORM: Principal = { role: 'platform', id: 'cli' };

/**
 * The credential to sign in with: `--nats-creds` when given, else the principal's file that `netfold up` generated
 * in the data dir (for its embedded server), else none.
 */
function credentialFor(config: Config, as: Principal): CredentialFile | undefined {
  if (config.natsCreds !== undefined) return readCredentialFile(config.natsCreds);
  const file = credentialFileOf(natsCredentialsDir(config.dataDir), principalName(as));
  return existsSync(file) ? readCredentialFile(file) : undefined;
}

/** Runs `work` with a NATS connection (NATS_URL, or the embedded server's port) signed in as `as`, and closes it after. */
async function withBus<T>(config: Config, as: Principal, work: (bus: Bus) => Promise<T>): Promise<T> {
  const credential = credentialFor(config, as);
  const { tls } = clientAuthOf({ ...natsClientOf(config), credsFile: undefined });
  const name = `netfold-cli${credential ? `-${credential.name}` : ''}`;
  const auth = { ...(credential && { credential }), ...(tls && { tls }) };
  const bus = await connectBus({ servers: natsServersOf(config), name, log: silentLogger(), connectTimeoutMs: 5000, ...auth });
  try {
    return await work(bus);
  } finally {
    await bus.close();
  }
}

/** The caller token intake goes under: a platform credential's own id (`platform_<id>`), else `cli`. */
const callerOf = (credential: CredentialFile | undefined) => (credential?.name.startsWith('platform_') ? credential.name.slice('platform_'.length) : 'cli');

/** Sends an intake command as the platform component `cli` (the caller token of the subject: the actor recorded). */
async function intake(config: Config, flags: Flags, out: Out, command: IntakeCommandName, body: Record<string, unknown>): Promise<void> {
  const caller = callerOf(credentialFor(config, CLI_PLATFORM));
  await withBus(config, CLI_PLATFORM, async (bus) => {
    const requestId = typeof flags['request-id'] === 'string' ? flags['request-id'] : newId();
    const msg = await bus.nc.request(intakeSubject(caller, command), JSON.stringify({ ...body, requestId }), { timeout: 30_000 });
    const reply = msg.json<IntakeReply>();
    if (!reply.ok) throw new NetfoldError(reply.error, reply.code, 400, reply.retryable);
    const held = reply.ip ? `, ip ${reply.ip}` : reply.subnet ? `, range ${reply.subnet}${reply.underlay ? ` at ${reply.underlay}` : ''}` : '';
    out.print(`ok: revision ${reply.revision}${held}${reply.note ? ` (${reply.note}${reply.appended === 0 ? ', nothing appended' : ''})` : ''}`, reply);
  });
}

function tokenFor(config: Config, flags: Flags): string {
  if (typeof flags.token === 'string') return flags.token;
  if (process.env.NETFOLD_TOKEN) return process.env.NETFOLD_TOKEN;
  const file = join(config.dataDir, 'admin.token');
  if (existsSync(file)) return readFileSync(file, 'utf8').trim();
  throw new UsageError(`no token: pass --token, set NETFOLD_TOKEN, or run "netfold up" to create ${file}`);
}

/** The gateway's base URL: --api, NETFOLD_API_URL, or the local one. */
const apiBase = (config: Config, flags: Flags) =>
  typeof flags.api === 'string' ? flags.api : (process.env.NETFOLD_API_URL ?? `http://${config.httpHost}:${config.httpPort}`);

/** Folds the log (to a point), with a progress bar on a terminal: a long log takes seconds. */
async function foldWithBar(bus: Bus, point: Parameters<typeof modelAt>[1], json: boolean) {
  const bar = progressBar('reading the log', 'events', { json, delayMs: 500 });
  try {
    return await modelAt(bus, point, bar.update);
  } finally {
    bar.finish();
  }
}

/** Waits until a revision is enforced on every cell, with a progress bar of the cells that are (on a terminal). */
async function waitForCells(bus: Bus, revision: number, timeoutMs: number, json: boolean) {
  const bar = progressBar(`waiting for revision ${revision}`, 'cells', { json });
  try {
    return await waitEnforced(bus, revision, timeoutMs, { onCheck: (e) => bar.update(e.cells.filter((c) => c.ok).length, e.cells.length) });
  } finally {
    bar.finish();
  }
}

async function api(config: Config, flags: Flags, method: string, path: string, body?: unknown): Promise<any> {
  const base = apiBase(config, flags);
  const res = await fetch(`${base}/networking/v1/external${path}`, {
    method,
    headers: { authorization: `Bearer ${tokenFor(config, flags)}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : null,
  }).catch((err: unknown) => {
    throw new NetfoldError(`could not reach the policy API at ${base}`, 'unreachable', 503, true, err);
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new NetfoldError(data.error ?? `HTTP ${res.status}`, data.code ?? 'http-error', res.status, false);
  return data;
}

function timeFlag(text: string, name: string): number {
  const t = Date.parse(text);
  if (Number.isNaN(t)) throw new UsageError(`--${name} must be an ISO time, got "${text}"`);
  return t;
}

function policyBody(flags: Flags) {
  const m = /^(\d+)(?:-(\d+))?$/.exec(need(flags, 'port'));
  if (!m) throw new UsageError('--port must be N or N-M');
  const start = Number(m[1]);
  const end = m[2] ? Number(m[2]) : start;
  const protocol = typeof flags.protocol === 'string' ? flags.protocol : 'tcp';
  return { policies: [{ source: { id: need(flags, 'from') }, destination: { id: need(flags, 'to'), protocol, ports: { start, end } } }] };
}

async function main(argv: string[]): Promise<void> {
  const settingFlags = Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }]));
  const { values: flags, positionals } = parseArgs({
    args: argv,
    options: { ...settingFlags, ...CLI_FLAGS, ...SECURITY_GROUP_FLAGS },
    allowPositionals: true,
    strict: true,
  });
  const [group, verb] = positionals;
  const out = output(flags.json === true);
  if (flags.help || !group || group === 'help') {
    process.stdout.write(HELP + '\n');
    return;
  }
  const config = loadConfig(flags);
  const single = ['up', 'wait', 'cells', 'audit', 'state', 'explain', 'replay', 'demo', 'quarantine', 'creds', 'apply', 'export'];
  const key = verb && !single.includes(group) ? `${group} ${verb}` : group;
  switch (key) {
    case 'up':
      return up(config);
    case 'token mint': {
      const scopes = need(flags, 'scope').split(',');
      for (const s of scopes) if (!(SCOPES as readonly string[]).includes(s)) throw new UsageError(`unknown scope "${s}" (use ${SCOPES.join(', ')})`);
      const spaces = typeof flags.space === 'string' ? flags.space.split(',').filter(Boolean) : [];
      const ttlText = typeof flags.ttl === 'string' ? flags.ttl : '24h';
      let ttl: number;
      try {
        ttl = parseDuration(ttlText);
      } catch (err) {
        throw new UsageError((err as Error).message);
      }
      if (ttl <= 0) throw new UsageError(`--ttl must be longer than 0 s, got "${ttlText}"`);
      if (ttl > config.tokenMaxTtl) {
        throw new NetfoldError(
          `--ttl ${ttlText} (${ttl} s) is longer than the gateway accepts (--token-max-ttl / NETFOLD_TOKEN_MAX_TTL: ${config.tokenMaxTtl} s)`,
          'ttl-too-long',
          400,
          false,
        );
      }
      const token = await mintToken(resolveTokenSecret(config, false), { user: need(flags, 'user'), scopes, spaces }, ttl);
      return out.print(token, { token });
    }
    case 'cell register':
      return intake(config, flags, out, intakeCommand.registerCell, {
        cellId: need(flags, 'id'),
        subnet: typeof flags.subnet === 'string' ? flags.subnet : undefined,
        underlay: typeof flags.underlay === 'string' ? flags.underlay : undefined,
        prefix: typeof flags.prefix === 'string' ? intFlag(flags, 'prefix') : undefined,
      });
    case 'cell decommission':
      return intake(config, flags, out, intakeCommand.decommissionCell, { cellId: need(flags, 'id') });
    case 'app register':
      return intake(config, flags, out, intakeCommand.registerApp, {
        appId: need(flags, 'id'),
        name: need(flags, 'name'),
        spaceId: need(flags, 'space'),
        orgId: need(flags, 'org'),
      });
    case 'app rename':
      return intake(config, flags, out, intakeCommand.renameApp, { appId: need(flags, 'id'), name: need(flags, 'name') });
    case 'app delete':
      return intake(config, flags, out, intakeCommand.deleteApp, { appId: need(flags, 'id') });
    case 'container start':
      return intake(config, flags, out, intakeCommand.startContainer, {
        containerId: need(flags, 'id'),
        appId: need(flags, 'app'),
        cellId: need(flags, 'cell'),
        instanceIndex: intFlag(flags, 'index'),
        ip: typeof flags.ip === 'string' ? flags.ip : undefined,
        lifecycle: typeof flags.lifecycle === 'string' ? flags.lifecycle : undefined,
      });
    case 'container stop':
      return intake(config, flags, out, intakeCommand.stopContainer, { containerId: need(flags, 'id') });
    case 'policy add':
    case 'policy remove': {
      const path = key === 'policy add' ? '/policies' : '/policies/delete';
      const r = await api(config, flags, 'POST', `${path}${flags['dry-run'] ? '?dry_run=true' : ''}`, policyBody(flags));
      if (!r.dry_run) return out.print(`ok: revision ${r.revision}`, r);
      const cells = Object.entries(r.cells as Record<string, { added: string[]; removed: string[] }>);
      const lines = [`dry run at revision ${r.revision}: ${r.events.length} event(s) would be appended; nothing was`];
      for (const [cell, c] of cells) lines.push(`cell ${cell}:`, ...c.added.map((f) => `  + ${f}`), ...c.removed.map((f) => `  - ${f}`));
      if (cells.length === 0) lines.push('no cell would change');
      return out.print(lines.join('\n'), r);
    }
    case 'apply': {
      const file = need(flags, 'file');
      const text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
      const client = { base: apiBase(config, flags), token: tokenFor(config, flags) };
      const bar = progressBar('applying', 'policies', { json: out.json });
      const r = await applyPolicyFile(client, text, { prune: flags.prune === true, dryRun: flags['dry-run'] === true, bar });
      out.print(applyText(r), r);
      if (flags.wait && !r.dry_run && r.created + r.deleted > 0) {
        const timeoutMs = parseDuration(typeof flags.timeout === 'string' ? flags.timeout : '30s') * 1000;
        await withBus(config, OPERATOR, async (bus) => {
          const e = await waitForCells(bus, r.revision, timeoutMs, out.json);
          if (!out.json) process.stdout.write(`revision ${r.revision}: ${e.enforced ? 'enforced on every cell' : 'NOT enforced everywhere (timed out)'}\n`);
          if (!e.enforced) process.exitCode = 1;
        });
      }
      return;
    }
    case 'export': {
      const format = flags.format === undefined ? 'yaml' : flags.format;
      if (format !== 'yaml' && format !== 'json') throw new UsageError('--format must be yaml or json');
      const text = await exportPolicyFile({ base: apiBase(config, flags), token: tokenFor(config, flags) }, format);
      if (typeof flags.file === 'string' && flags.file !== '-') {
        writeFileSync(flags.file, text);
        process.stderr.write(`wrote ${flags.file}\n`);
      } else process.stdout.write(text);
      return;
    }
    case 'policy list': {
      const q = new URLSearchParams();
      if (typeof flags.id === 'string') q.set('id', flags.id);
      if (typeof flags.source === 'string') q.set('source_id', flags.source);
      if (typeof flags.dest === 'string') q.set('dest_id', flags.dest);
      const r = await api(config, flags, 'GET', `/policies${q.size ? '?' + q.toString() : ''}`);
      const rows = [['SOURCE', 'DESTINATION', 'PROTOCOL', 'PORTS']].concat(
        r.policies.map((p: any) => [
          p.source.id,
          p.destination.id,
          p.destination.protocol,
          p.destination.ports.start === p.destination.ports.end ? `${p.destination.ports.start}` : `${p.destination.ports.start}-${p.destination.ports.end}`,
        ]),
      );
      return out.print(`${table(rows)}\n${r.total_policies} policies (revision ${r.revision})`, r);
    }
    case 'wait': {
      const revision = intFlag(flags, 'revision');
      const timeoutMs = parseDuration(typeof flags.timeout === 'string' ? flags.timeout : '30s') * 1000;
      return withBus(config, OPERATOR, async (bus) => {
        const e = await waitForCells(bus, revision, timeoutMs, out.json);
        const rows = [['CELL', 'PLANNED', 'REQUIRED', 'APPLIED', 'OK', 'LAST HEARD']].concat(
          e.cells.map((c) => [
            c.cellId,
            String(c.planned),
            String(c.required),
            String(c.applied ?? '-'),
            c.ok ? 'yes' : c.silent ? 'silent' : 'no',
            c.ok ? '-' : (c.lastHeard ?? 'never'),
          ]),
        );
        const behind = e.plannersBehind.length > 0 ? `\nplanners not yet at ${revision}: ${e.plannersBehind.join(', ')}` : '';
        const stopped = e.plannersStopped.length > 0 ? `\nplanners stopped, their cells taken over: ${e.plannersStopped.join(', ')}` : '';
        const silentBehind = e.cells.filter((c) => c.silent && !c.ok).map((c) => c.cellId);
        const silent = silentBehind.length > 0 ? `\nsilent cells not counted (no agent heard for 15 s): ${silentBehind.join(', ')}` : '';
        out.print(
          `${table(rows)}${behind}${stopped}${silent}\nrevision ${revision}: ${e.enforced ? 'enforced on every cell' : 'NOT enforced everywhere (timed out)'}`,
          e,
        );
        if (!e.enforced) process.exitCode = 1;
      });
    }
    case 'audit': {
      const f: AuditFilter = {};
      if (typeof flags.app === 'string') f.app = flags.app;
      if (typeof flags.actor === 'string') f.actor = flags.actor;
      if (typeof flags.type === 'string') f.type = flags.type;
      if (typeof flags['change-set'] === 'string') f.changeSet = flags['change-set'];
      if (typeof flags.since === 'string') f.since = timeFlag(flags.since, 'since');
      if (typeof flags.until === 'string') f.until = timeFlag(flags.until, 'until');
      const line = (a: AuditEntry) => (out.json ? JSON.stringify(a) : `${a.at}  #${a.revision}  ${a.actor}  ${a.type}  ${a.effect}`);
      return withBus(config, OPERATOR, async (bus) => {
        const entries = await audit(bus, f);
        for (const a of entries) process.stdout.write(line(a) + '\n');
        if (!flags.follow) return;
        const from = (entries.at(-1)?.revision ?? 0) + 1;
        const log = new EventLog(bus);
        const start = Math.max(from, (await log.lastSeq()) + 1);
        const tail = new StreamTail(bus, { stream: log.stream, start: { seq: start }, reader: 'audit-follow', log: silentLogger(), ...FAST_TAIL });
        process.once('SIGINT', () => void tail.stop());
        process.once('SIGTERM', () => void tail.stop());
        for await (const m of tail) {
          const parsed = parseEvent(m.json());
          if (!parsed.ok) continue;
          const rec = { seq: m.seq, subject: m.subject, event: parsed.value };
          if (matches(rec, f)) process.stdout.write(line(auditEntry(rec)) + '\n');
        }
      });
    }
    case 'state': {
      return withBus(config, OPERATOR, async (bus) => {
        const m = await foldWithBar(bus, typeof flags.at === 'string' ? parsePoint(flags.at) : undefined, out.json);
        const view = stateView(m, typeof flags.cell === 'string' ? flags.cell : undefined, config.domain);
        const human = [
          `state at revision ${view.revision}`,
          `apps (${view.apps.length}):`,
          table(view.apps.map((a) => [`  ${a.id}`, a.name, a.spaceId, a.deleted ? 'deleted' : ''])),
          `containers (${view.containers.length}):`,
          table(view.containers.map((c) => [`  ${c.id}`, c.appId ?? '-', c.cellId ?? '-', c.ip ?? '-', c.status])),
          `policies (${view.policies.length}):`,
          table(
            view.policies.map((p) => [
              `  ${p.sourceAppId}`,
              '->',
              p.destAppId,
              `${p.protocol}/${p.startPort === p.endPort ? p.startPort : `${p.startPort}-${p.endPort}`}`,
              `by ${p.createdBy}`,
              p.createdAt,
            ]),
          ),
          `security groups (${view.securityGroups.length}):`,
          ...securityGroupLines(view.securityGroups),
          ...(view.cell ? [`cell ${view.cell.cellId} (hash ${view.cell.hash}):`, JSON.stringify(view.cell.state, null, 2)] : []),
        ].join('\n');
        out.print(human, view);
      });
    }
    case 'explain': {
      if (/^\d+\.\d+\.\d+\.\d+$/.test(positionals[2] ?? '')) {
        const withModel = <T>(work: (bus: Bus, m: Awaited<ReturnType<typeof modelAt>>) => Promise<T>) =>
          withBus(config, OPERATOR, async (bus) => work(bus, await modelAt(bus, undefined)));
        return explainEgressCli(positionals.slice(1), flags, out, withModel, config);
      }
      const [, , , port] = positionals;
      const [source, destination] = [positionals[1], positionals[2]];
      if (!source || !destination || !port || !/^\d+$/.test(port)) throw new UsageError('usage: netfold explain SOURCE-APP DEST-APP PORT [--protocol tcp|udp]');
      const protocol = flags.protocol === 'udp' ? 'udp' : 'tcp';
      return withBus(config, OPERATOR, async (bus) => {
        const e = await explainAt(bus, await foldWithBar(bus, undefined, out.json), source, destination, Number(port), protocol);
        const human = [
          `${source} -> ${destination} ${protocol}/${port}: ${e.allowed ? 'ALLOWED' : 'DENIED'} (${e.reason}) at revision ${e.revision}`,
          ...e.policies.map(
            (p) =>
              `  by policy ${p.sourceAppId} -> ${p.destAppId} ${p.protocol}/${p.startPort}-${p.endPort}, ` +
              `created ${p.createdAt} by ${p.createdBy} (revision ${p.createdSeq})`,
          ),
          ...e.nearMisses.map((p) => `  not covered by ${p.protocol}/${p.startPort}-${p.endPort} (created ${p.createdAt} by ${p.createdBy})`),
          ...e.enforcement.map(
            (c) =>
              `  cell ${c.cellId}: planned revision ${c.planned ?? '-'}, applied ${c.applied ?? '-'}` +
              (c.planned !== null && c.applied !== null && c.applied >= c.planned ? ' (in force)' : ''),
          ),
        ].join('\n');
        out.print(human, e);
      });
    }
    case 'replay': {
      return withBus(config, OPERATOR, async (bus) => {
        const bar = progressBar('replaying', 'events', { json: out.json });
        const report = await replay(bus, typeof flags.to === 'string' ? parsePoint(flags.to) : undefined, config.domain, bar.update);
        bar.finish();
        const rows = [['CELL', 'REPLAYED', 'PLANNED', 'APPLIED', 'OK']].concat(
          report.cells.map((c) => [
            c.cellId,
            c.replayed.slice(0, 12),
            c.planned?.slice(0, 12) ?? '-',
            c.applied?.slice(0, 12) ?? '-',
            c.ok ? 'yes' : 'DIFFERS',
          ]),
        );
        out.print(`${table(rows)}\nrevision ${report.revision}: ${report.ok ? 'every cell matches' : 'differences found'}`, report);
        if (!report.ok) process.exitCode = 1;
      });
    }
    case 'demo': {
      const base = typeof flags.api === 'string' ? flags.api : (process.env.NETFOLD_API_URL ?? `http://${config.httpHost}:${config.httpPort}`);
      const say = (l: string) => process.stdout.write(l + '\n');
      return withBus(config, OPERATOR, (bus) =>
        withBus(config, { role: 'platform', id: 'demo' }, (platform) =>
          demo({ bus, platform, api: base, token: tokenFor(config, flags), dnsPort: config.dnsPort, say }),
        ),
      );
    }
    case 'cells': {
      return withBus(config, OPERATOR, async (bus) => {
        const statuses = [...(await kvLatest(bus, CELL_STATUS_BUCKET)).values()] as CellStatus[];
        const view = cellsView(await foldWithBar(bus, undefined, out.json), statuses);
        const head = [
          'CELL',
          'LEASE',
          'UNDERLAY',
          'DATAPLANE',
          'NETWORK',
          'REVISION',
          'LOCAL',
          'ALLOWS',
          'APPLY MS',
          'REPAIRS',
          'REFUSED',
          'APPLIED AT',
          'ERROR',
        ];
        const rows = [head].concat(
          view.map(({ cellId, registration: r, agent: s }) => [
            cellId,
            r ? `${r.subnet}${r.leased ? ' (leased)' : ''}${r.status === 'decommissioned' ? ' (decommissioned)' : ''}` : '(not registered)',
            r?.underlay ?? '-',
            s?.dataplane ?? '(no agent)',
            s?.network ? `${s.network.driver} ${s.network.peers} peers` : '-',
            s ? String(s.revision) : '-',
            s ? String(s.rules.local) : '-',
            s ? String(s.rules.allows) : '-',
            s ? String(s.applyMs) : '-',
            s ? String(s.driftRepairs + (s.network?.repairs ?? 0)) : '-',
            s?.refusals?.count ? `${s.refusals.count} (last ${s.refusals.last?.kind} ${s.refusals.last?.reason} at ${s.refusals.last?.at})` : '0',
            s?.appliedAt ?? '-',
            s?.error ?? s?.network?.error ?? '',
          ]),
        );
        // JSON: each agent's status record as before, with the cell's registration beside it (null fields: no agent).
        out.print(
          `${table(rows)}\n${view.length} cells`,
          view.map((v) => ({ ...v.agent, cellId: v.cellId, registration: v.registration })),
        );
      });
    }
    case 'creds': {
      const list = (v: string | boolean | undefined) =>
        typeof v === 'string'
          ? v
              .split(',')
              .map((x) => x.trim())
              .filter(Boolean)
          : [];
      const dir = typeof flags.dir === 'string' ? flags.dir : join(config.dataDir, 'nats');
      const principals: Principal[] = [
        ...(['admin', 'writer', 'planner', 'discovery', 'operator'] as const).map((role) => ({ role })),
        ...(list(flags.platform).length > 0 ? list(flags.platform) : ['cli']).map((id) => ({ role: 'platform' as const, id })),
        ...list(flags.cells).map((cellId) => ({ role: 'agent' as const, cellId })),
      ];
      const { credentials, created } = ensureCredentialFiles(dir, principals);
      const block = authorizationBlock(credentials);
      if (!out.json)
        process.stderr.write(`${credentials.length} credentials in ${dir} (${created.length} new${created.length ? `: ${created.join(', ')}` : ''})\n`);
      return out.print(block.trimEnd(), { dir, created, users: credentials.map((c) => ({ name: c.name, publicKey: c.publicKey })), authorization: block });
    }
    case 'quarantine': {
      return withBus(config, OPERATOR, async (bus) => {
        const q = await quarantined(bus);
        const rows = [['REVISION', 'SUBJECT', 'REASON', 'TYPE', 'ERROR']].concat(
          q.entries.map((e) => [String(e.seq), e.subject, e.reason, e.type ?? '-', e.error]),
        );
        out.print(
          `${table(rows)}
${q.invalid} invalid and ${q.foldFailed} failed to fold, of ${q.revision} log entries` +
            (q.invalid + q.foldFailed > q.entries.length ? ` (the first ${q.entries.length} listed)` : ''),
          q,
        );
      });
    }
    default:
      if (group === 'security-group') return securityGroupCli(verb, flags, out, () => securityGroupHttp(apiBase(config, flags), tokenFor(config, flags)));
      throw new UsageError(`unknown command "${key}"; see "netfold help"`);
  }
}

try {
  await main(process.argv.slice(2));
} catch (err) {
  const e = err instanceof TypeError && (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') ? new UsageError(err.message) : toNetfoldError(err);
  const json = process.argv.includes('--json');
  const detail = e.code === 'internal' && e.cause instanceof Error ? `: ${e.cause.message}` : '';
  process.stderr.write(json ? JSON.stringify(e.toBody()) + '\n' : `netfold: ${e.message}${detail} (${e.code})\n`);
  process.exitCode = e.code === 'usage' ? 2 : 1;
}
