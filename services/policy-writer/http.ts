// The developer gateway: Cloud Foundry's external policy API v1 over HTTP (fastify). Every error body is
// `{ code, error }` JSON with a stable code.
import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';
import { newId } from '../../runtime/ids.ts';
import type { Logger } from '../../runtime/logger.ts';
import { NetfoldError, UnauthenticatedError, ValidationError } from '../../runtime/errors.ts';
import { toServiceError } from '../../runtime/retry.ts';
import { DEFAULT_TOKEN_MAX_TTL_SECONDS, type Principal, verifyToken } from '../../runtime/tokens.ts';
import { parseIdList } from '../../events/commands.ts';
import type { PolicyApi, PolicyFiles } from './policy-api.ts';
import { endEventStreams, netfoldRoutes } from './http-netfold.ts';
import { type ConsoleDeps, consoleFiles, consoleRoutes } from './http-console.ts';
import { accessOf } from './policy-api.ts';
import type { Enforcement } from '../topology-planner/enforcement.ts';
import { CONTENT_TYPE, type Registry } from '../../runtime/metrics.ts';
import { registerSecurityGroupRoutes } from './security-groups-http.ts';
import type { SecurityGroupApi } from './security-groups.ts';
import { type RegisteredRoute, openApiDocument, recordRoutes, route, validationErrorOf, validatorCompiler } from './openapi.ts';
import * as S from './schemas.ts';

export type HttpOptions = {
  api: PolicyApi;
  /** Cloud Foundry v3 security groups (egress rules): `/v3/security_groups`. */
  securityGroups?: SecurityGroupApi;
  /** Policy files: apply and export (`/netfold/v1/…`). */
  files: PolicyFiles;
  /** The console's reads: the bus (cells, the log) and the writer's fold. */
  console: ConsoleDeps;
  /** Answers "is revision N enforced on every cell?", waiting up to `waitMs` for it to become so. */
  enforcement: (revision: number, waitMs: number) => Promise<Enforcement>;
  tokenSecret: string;
  /** The longest token lifetime (exp − iat) accepted, in seconds. */
  tokenMaxTtlSeconds?: number;
  log: Logger;
  bodyLimitBytes: number;
  /** A client must send its whole request (headers and body) within this; it then gets 408 and is closed. */
  requestTimeoutMs?: number;
  /** An idle keep-alive connection is closed after this. */
  keepAliveTimeoutMs?: number;
  metrics: Registry;
};

/** Defaults of the gateway's limits (the configuration table has the same). */
const defaultHttpLimits = { requestTimeoutMs: 10_000, keepAliveTimeoutMs: 5_000 } as const;

/**
 * Node checks request and header deadlines on a timer (30 s by default, whatever the timeouts): check often enough
 * for the configured timeout to be the one that holds, at most every second.
 */
const connectionsCheckingIntervalOf = (requestTimeoutMs: number) => Math.max(25, Math.min(1000, Math.floor(requestTimeoutMs / 4)));

const BASE = '/networking/v1/external';

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

/** The routes registered on each gateway (every one, declared with `route` or not: test/openapi.test.ts compares). */
const routesOf = new WeakMap<FastifyInstance, RegisteredRoute[]>();
export const registeredRoutes = (app: FastifyInstance): readonly RegisteredRoute[] => routesOf.get(app) ?? [];

export function buildHttpGateway(opts: HttpOptions): FastifyInstance {
  const log = opts.log.child({ component: 'http' });
  const requestTimeout = opts.requestTimeoutMs ?? defaultHttpLimits.requestTimeoutMs;
  const app = Fastify({
    logger: false,
    bodyLimit: opts.bodyLimitBytes,
    genReqId: () => newId(),
    // Slow clients (slowloris, a body trickled byte by byte) hold a socket at most this long: headers and body must
    // both arrive within requestTimeout. No socket inactivity timeout: GET …/enforcement may wait up to 60 s.
    requestTimeout,
    keepAliveTimeout: opts.keepAliveTimeoutMs ?? defaultHttpLimits.keepAliveTimeoutMs,
    http: { headersTimeout: requestTimeout, connectionsCheckingInterval: connectionsCheckingIntervalOf(requestTimeout) },
  });
  app.removeContentTypeParser('text/plain'); // the API speaks JSON only
  const routes = recordRoutes(app);
  routesOf.set(app, routes);
  app.setValidatorCompiler(validatorCompiler());
  app.addHook('preClose', async () => endEventStreams(app.server));

  app.setErrorHandler((err, req, reply) => {
    const e = fastifyErrorToNetfold(err);
    if (e.status >= 500) log.error({ err, route: req.routeOptions.url, reqId: req.id }, 'http-request-failed');
    void reply.status(e.status).send(e.toBody());
  });
  app.setNotFoundHandler((_req, reply) => {
    void reply.status(404).send({ code: 'not-found', error: 'no such endpoint' });
  });
  const mRequests = opts.metrics.counter('netfold_gateway_requests_total', 'HTTP requests, by method, route and status');
  const mLatency = opts.metrics.histogram('netfold_gateway_request_seconds', 'HTTP request duration, by route');
  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    mRequests.inc({ method: req.method, route, status: String(reply.statusCode) });
    mLatency.observe({ route }, reply.elapsedTime / 1000);
    log.debug({ method: req.method, route: req.routeOptions.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'http-request');
  });

  const authenticate = async (req: FastifyRequest) => {
    const header = req.headers.authorization;
    if (!header) throw new UnauthenticatedError('missing Authorization header (Bearer token)');
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    if (!m) throw new UnauthenticatedError('Authorization header must be "Bearer <token>"');
    req.principal = await verifyToken(opts.tokenSecret, m[1]!, { maxTtlSeconds: opts.tokenMaxTtlSeconds ?? DEFAULT_TOKEN_MAX_TTL_SECONDS });
  };
  const principal = (req: FastifyRequest): Principal => req.principal!;
  const metaOf = (req: FastifyRequest) => {
    const rid = req.headers['x-request-id'];
    const correlationId = typeof rid === 'string' && rid.length > 0 && rid.length <= 128 ? rid : req.id;
    return { actor: `user:${principal(req).user}`, correlationId };
  };

  const json = (description: string, schema: S.JsonSchema) => ({ description, schema });
  const text = (description: string, contentType: string) => ({ description, contentType });
  route(
    app,
    {
      method: 'GET',
      url: '/healthz',
      summary: 'liveness',
      tags: ['operations'],
      auth: false,
      responses: { 200: json('up', { type: 'object', properties: { ok: { type: 'boolean' } } }) },
    },
    async () => ({ ok: true }),
  );
  route(
    app,
    {
      method: 'GET',
      url: '/metrics',
      summary: 'Prometheus metrics of every service in this process',
      tags: ['operations'],
      auth: false,
      responses: { 200: text('Prometheus text format', 'text/plain') },
    },
    async (_req, reply) => reply.type(CONTENT_TYPE).send(opts.metrics.render()),
  );
  let document: S.JsonSchema | undefined;
  route(
    app,
    {
      method: 'GET',
      url: '/openapi.json',
      summary: 'this document: every route of the gateway',
      tags: ['operations'],
      auth: false,
      responses: { 200: json('OpenAPI 3.1', { type: 'object' }) },
    },
    async () => (document ??= openApiDocument(routes, { title: 'netfold gateway', version: '1' })),
  );

  consoleFiles(app);

  app.register(async (api) => {
    api.addHook('onRequest', authenticate);

    const maxPolicies = opts.api.maxPoliciesPerRequest;
    const change = (kind: 'create' | 'delete', url: string, summary: string) =>
      route(
        api,
        {
          method: 'POST',
          url,
          summary,
          description:
            'Both ends must be visible to the token (403 app-not-accessible otherwise); `dry_run=true` appends nothing and shows per cell what would change.',
          tags: ['policies'],
          auth: true,
          querystring: S.DRY_RUN_QUERY,
          body: S.cfPoliciesBody(maxPolicies),
          responses: {
            200: json('appended (or already so), or the dry run', { oneOf: [S.REVISION_SCHEMA, S.DRY_RUN_SCHEMA] }),
            403: json('not allowed', { $ref: '#/components/schemas/Error' }),
          },
        },
        async (req) => opts.api.change(kind, principal(req), req.body, metaOf(req), (req.query as { dry_run?: boolean }).dry_run === true),
      );
    change('create', `${BASE}/policies`, 'create policies (idempotent)');
    change('delete', `${BASE}/policies/delete`, 'delete policies (idempotent)');
    route(
      api,
      {
        method: 'GET',
        url: `${BASE}/policies`,
        summary: 'list the policies the token may see',
        tags: ['policies'],
        auth: true,
        querystring: S.POLICY_FILTER_QUERY,
        responses: { 200: json('the policies', S.POLICY_LIST_SCHEMA) },
      },
      async (req) => {
        const q = req.query as Record<string, unknown>;
        const filters = { ids: parseIdList(q.id, 'id'), sourceIds: parseIdList(q.source_id, 'source_id'), destIds: parseIdList(q.dest_id, 'dest_id') };
        const issues = Object.values(filters).flatMap((r) => (r.ok ? [] : r.issues));
        if (issues.length > 0) throw new ValidationError(issues);
        const value = (r: (typeof filters)['ids']) => (r.ok ? r.value : undefined);
        const filter: { ids?: string[]; sourceIds?: string[]; destIds?: string[] } = {};
        if (value(filters.ids)) filter.ids = value(filters.ids)!;
        if (value(filters.sourceIds)) filter.sourceIds = value(filters.sourceIds)!;
        if (value(filters.destIds)) filter.destIds = value(filters.destIds)!;
        return opts.api.list(principal(req), filter);
      },
    );
    route(
      api,
      {
        method: 'GET',
        url: `${BASE}/tags`,
        summary: "every app's tag (admin only)",
        tags: ['policies'],
        auth: true,
        responses: { 200: json('the tags', S.TAGS_SCHEMA) },
      },
      async (req) => opts.api.tags(principal(req)),
    );
    route(
      api,
      {
        method: 'GET',
        url: `${BASE}/whoami`,
        summary: "the token's user",
        tags: ['policies'],
        auth: true,
        responses: { 200: json('the user', { type: 'object', properties: { user_name: { type: 'string' } } }) },
      },
      async (req) => ({ user_name: principal(req).user }),
    );
    if (opts.securityGroups) registerSecurityGroupRoutes(api, { api: opts.securityGroups, principal, meta: metaOf });
    // netfold's own: is a revision enforced on every cell? `wait_ms` (<= 60000) waits for it.
    route(
      api,
      {
        method: 'GET',
        url: `${BASE}/enforcement`,
        summary: 'is a revision enforced on every cell?',
        tags: ['netfold'],
        auth: true,
        querystring: S.ENFORCEMENT_QUERY,
        responses: { 200: json('per cell: planned, required and applied revision', S.ENFORCEMENT_SCHEMA) },
      },
      async (req) => {
        accessOf(principal(req));
        const q = req.query as { revision: number; wait_ms?: number };
        return opts.enforcement(q.revision, q.wait_ms ?? 0);
      },
    );
    netfoldRoutes(api, { files: opts.files, principal, metaOf });
    consoleRoutes(api, { ...opts.console, principal });
  });

  return app;
}

type FastifyishError = Error & { statusCode?: number; code?: string; validation?: unknown; validationContext?: string };

function fastifyErrorToNetfold(err: unknown): NetfoldError {
  if (err instanceof NetfoldError) return err;
  const e = err as FastifyishError;
  if (Array.isArray(e.validation)) return validationErrorOf(e.validation, e.validationContext);
  switch (e.statusCode) {
    case 413:
      return new NetfoldError('request body is too large', 'body-too-large', 413, false);
    case 415:
      return new NetfoldError('request body must be JSON (Content-Type: application/json)', 'unsupported-media-type', 415, false);
    case 400:
      return new NetfoldError(`request body is not valid JSON: ${e.message}`, 'invalid-json', 400, false);
    default:
      return toServiceError(err);
  }
}
