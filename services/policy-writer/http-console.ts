// The web console: static files at /ui (plain HTML, JS and CSS in ./console, no build step), and the routes it reads,
// each answering only what the caller's token may see: apps, cells (planned vs applied revision), explain, and a
// live audit feed (server-sent events from the writer's own fold of the log). Policies and the dry run of a pasted
// policy file use the routes the CLI uses (GET …/policies, POST /netfold/v1/apply?dry_run=true).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { RecordedEvent } from '../../events/catalogue.ts';
import { explain } from '../../projections/explain.ts';
import type { Model } from '../../projections/model.ts';
import { appsOf, auditEntry } from '../../projections/audit.ts';
import { kvLatest } from '../../runtime/buckets.ts';
import { EventLog, type LogFollower } from '../../runtime/event-log.ts';
import { ForbiddenError, NotFoundError } from '../../runtime/errors.ts';
import type { Bus } from '../../runtime/nats.ts';
import { CELL_STATUS_BUCKET } from '../../runtime/subjects.ts';
import type { Principal } from '../../runtime/tokens.ts';
import type { CellStatus } from '../cell-agent/status.ts';
import { latestPlannedPerCell } from '../topology-planner/published.ts';
import type { Access } from './decide.ts';
import { route } from './openapi.ts';
import { accessOf } from './policy-api.ts';
import { eventStream, NETFOLD_BASE } from './http-netfold.ts';
import { APPS_SCHEMA, AUDIT_QUERY, CELLS_SCHEMA, EXPLAIN_QUERY, EXPLAIN_SCHEMA } from './schemas.ts';

export type ConsoleDeps = { bus: Bus; follower: LogFollower<Model> };

const FILES = new Map([
  ['index.html', 'text/html; charset=utf-8'],
  ['app.js', 'text/javascript; charset=utf-8'],
  ['style.css', 'text/css; charset=utf-8'],
]);
const DIR = join(fileURLToPath(new URL('.', import.meta.url)), 'console');

/** The console's files, read once. No token needed: they hold no data; every data route asks for one. */
export function consoleFiles(app: FastifyInstance): void {
  const files = new Map([...FILES].map(([name, type]) => [name, { type, body: readFileSync(join(DIR, name)) }]));
  const send = (name: string, reply: FastifyReply) => {
    const f = files.get(name);
    if (!f) throw new NotFoundError(`no console file ${name}`);
    // Only its own files, scripts and styles; nothing inline, no framing; the token never leaves in a Referer.
    return reply
      .type(f.type)
      .header('cache-control', 'no-cache')
      .header('content-security-policy', "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
      .header('x-content-type-options', 'nosniff')
      .header('referrer-policy', 'no-referrer')
      .send(f.body);
  };
  const html = { 200: { description: 'the console', contentType: 'text/html' } };
  route(app, { method: 'GET', url: '/ui', summary: 'the web console', tags: ['console'], auth: false, responses: html }, async (_req, reply) =>
    send('index.html', reply),
  );
  route(
    app,
    {
      method: 'GET',
      url: '/ui/:file',
      summary: "the console's files (index.html, app.js, style.css)",
      tags: ['console'],
      auth: false,
      responses: { 200: { description: 'the file', contentType: 'text/plain' } },
    },
    async (req, reply) => send((req.params as { file: string }).file, reply),
  );
}

/** May the caller see this app? Admins see all; developers the apps of their spaces. */
const seesApp = (m: Model, access: Access, appId: string) => access.admin || access.spaces.includes(m.apps[appId]?.spaceId ?? '');

/** May the caller see this event? Admins every one; developers those about an app of their spaces. */
function seesEvent(m: Model, access: Access, rec: RecordedEvent): boolean {
  if (access.admin) return true;
  const e = rec.event;
  if (e.type === 'AppRegistered') return access.spaces.includes(e.data.spaceId);
  return appsOf(e).some((id) => seesApp(m, access, id));
}

export function consoleRoutes(api: FastifyInstance, d: ConsoleDeps & { principal: (req: FastifyRequest) => Principal }): void {
  route(
    api,
    {
      method: 'GET',
      url: `${NETFOLD_BASE}/apps`,
      summary: 'the live apps the token may see, and the apps its visible policies reach',
      tags: ['console'],
      auth: true,
      responses: { 200: { description: 'the apps', schema: APPS_SCHEMA } },
    },
    async (req) => {
      const access = accessOf(d.principal(req));
      const m = d.follower.state;
      const own = Object.values(m.apps).filter((a) => !a.deleted && seesApp(m, access, a.id));
      const ownIds = new Set(own.map((a) => a.id));
      const reached = new Set<string>();
      for (const id of ownIds) {
        for (const p of Object.values(m.policies[id] ?? {})) reached.add(p.destAppId);
        for (const key of Object.keys(m.policiesByDest[id] ?? {})) reached.add(key.split('|')[0]!);
      }
      const apps = [...own, ...[...reached].filter((id) => !ownIds.has(id) && m.apps[id] && !m.apps[id]!.deleted).map((id) => m.apps[id]!)]
        .map((a) => ({
          id: a.id,
          name: a.name,
          space: a.spaceId,
          instances: Object.keys(m.containersByApp[a.id] ?? {}).length,
          visible: ownIds.has(a.id),
        }))
        .sort((a, b) => (a.space !== b.space ? (a.space < b.space ? -1 : 1) : a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
      return { revision: m.seq, apps };
    },
  );

  route(
    api,
    {
      method: 'GET',
      url: `${NETFOLD_BASE}/cells`,
      summary: 'each cell: planned and applied revision, lag, rules, last applied',
      tags: ['console'],
      auth: true,
      responses: { 200: { description: 'the cells', schema: CELLS_SCHEMA } },
    },
    async (req) => {
      accessOf(d.principal(req));
      const m = d.follower.state;
      const [planned, statuses] = await Promise.all([latestPlannedPerCell(d.bus), kvLatest(d.bus, CELL_STATUS_BUCKET)]);
      const ids = new Set([
        ...Object.values(m.cells)
          .filter((c) => c.status === 'active')
          .map((c) => c.id),
        ...statuses.keys(),
      ]);
      const cells = [...ids].sort().map((cellId) => {
        const s = statuses.get(cellId) as CellStatus | undefined;
        const p = planned.get(cellId) ?? null;
        const applied = s?.revision ?? null;
        return {
          cellId,
          subnet: m.cells[cellId]?.subnet ?? null,
          planned: p,
          applied,
          lag: p === null ? 0 : applied === null ? null : Math.max(0, p - applied),
          appliedAt: s?.appliedAt ?? null,
          allows: s?.rules.allows ?? null,
          error: s?.error ?? null,
        };
      });
      return { revision: m.seq, cells };
    },
  );

  route(
    api,
    {
      method: 'GET',
      url: `${NETFOLD_BASE}/explain`,
      summary: 'why can (or cannot) one app reach another on a port?',
      tags: ['console'],
      auth: true,
      querystring: EXPLAIN_QUERY,
      responses: { 200: { description: 'the answer, the policies behind it, and where it is enforced', schema: EXPLAIN_SCHEMA } },
    },
    async (req) => {
      const access = accessOf(d.principal(req));
      const q = req.query as { source: string; destination: string; port: number; protocol?: 'tcp' | 'udp' };
      const m = d.follower.state;
      const resolve = (ref: string) => (m.apps[ref] ? ref : (m.appIdByName[ref.toLowerCase()] ?? ref));
      const [source, destination] = [resolve(q.source), resolve(q.destination)];
      // Unknown and inaccessible look the same to a developer (as for policies).
      if (!access.admin && !(seesApp(m, access, source) && seesApp(m, access, destination)))
        throw new ForbiddenError('one or more applications cannot be found or accessed', 'app-not-accessible');
      const protocol = q.protocol ?? 'tcp';
      const e = explain(m, source, destination, q.port, protocol);
      const [planned, statuses] = await Promise.all([latestPlannedPerCell(d.bus), kvLatest(d.bus, CELL_STATUS_BUCKET)]);
      const enforcement = e.cells.map((cellId) => ({
        cellId,
        planned: planned.get(cellId) ?? null,
        applied: (statuses.get(cellId) as CellStatus | undefined)?.revision ?? null,
      }));
      return { ...e, source, destination, port: q.port, protocol, revision: m.seq, enforcement };
    },
  );

  route(
    api,
    {
      method: 'GET',
      url: `${NETFOLD_BASE}/audit/stream`,
      summary: 'the audit trail, live: every change the token may see, as server-sent events',
      description: 'First the changes from `from` (default: the last 20), then each new one as the log gets it. Events: `audit` (an audit entry), `ready`.',
      tags: ['console'],
      auth: true,
      querystring: AUDIT_QUERY,
      responses: { 200: { description: '`audit` events, each an audit entry; `ready` once the history is sent', contentType: 'text/event-stream' } },
    },
    async (req, reply) => {
      const access = accessOf(d.principal(req));
      const q = req.query as { from?: number };
      const stream = eventStream(req, reply);
      let sent = 0;
      const send = (rec: RecordedEvent) => {
        if (rec.seq <= sent) return;
        sent = rec.seq;
        if (seesEvent(d.follower.state, access, rec)) stream.send('audit', { ...auditEntry(rec), subject: rec.subject });
      };
      // Live events are held back until the history is out, so the feed stays in log order without gaps.
      const held: RecordedEvent[] = [];
      let live = false;
      const stop = d.follower.onFold((_state, batch) => {
        for (const rec of batch) live ? send(rec) : held.push(rec);
      });
      const heartbeat = setInterval(() => reply.raw.write(': keep-alive\n\n'), 15_000);
      void stream.closed.then(() => {
        stop();
        clearInterval(heartbeat);
      });
      const upTo = d.follower.seq;
      const from = q.from ?? Math.max(1, upTo - 19);
      if (from <= upTo) for await (const rec of new EventLog(d.bus).read(from, undefined, upTo)) if ('event' in rec) send(rec);
      for (const rec of held) send(rec);
      live = true;
      stream.send('ready', { revision: Math.max(upTo, sent) });
      return reply;
    },
  );
}
