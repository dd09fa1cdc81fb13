// The gateway's contract: every HTTP route is declared once, with `route(app, spec)`, carrying the JSON Schemas of
// its query string and body (which the gateway validates requests with) and of its responses; `/openapi.json` is
// generated from those same declarations. A route added anywhere — any file, any fastify plugin — joins the document
// by being declared with `route`; test/openapi.test.ts fails for a route registered any other way.
//
// To add a route: `route(app, { method: 'GET', url: '/x/:id', summary: '…', tags: ['…'], auth: true,
// querystring: {…}, body: {…}, responses: { 200: { description: '…', schema: {…} } } }, handler)`. Path
// parameters (`:id`) are documented from the URL. Errors are `{ code, error, issues? }` (the `Error` component).
import { Ajv, type ErrorObject, type ValidateFunction } from 'ajv';
import type { FastifyInstance, FastifyReply, FastifyRequest, HTTPMethods } from 'fastify';
import { ID_PATTERN } from '../../events/fields.ts';
import { ValidationError, type Issue } from '../../runtime/errors.ts';

export type JsonSchema = Record<string, unknown>;

/** A response: a JSON body's `schema`, or another content type; `also`: further content types of the same status. */
type Response = { description: string; schema?: JsonSchema; contentType?: string; also?: { contentType: string; schema?: JsonSchema }[] };

export type RouteSpec = {
  method: 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  url: string;
  summary: string;
  description?: string;
  tags: string[];
  /** true: a bearer token is required (documented as the `bearer` security scheme). */
  auth: boolean;
  querystring?: JsonSchema;
  body?: JsonSchema;
  /** By status. A JSON body has a `schema`; another content type (HTML, text, an event stream) names it. */
  responses: Record<number, Response>;
};

/** Where a declared route keeps its spec inside fastify's route schema (fastify ignores keys it does not know). */
const SPEC_KEY = 'x-netfold-route';

/** Declares a route: registered with fastify, validated with the spec's schemas, documented in /openapi.json. */
export function route(app: FastifyInstance, spec: RouteSpec, handler: (req: FastifyRequest, reply: FastifyReply) => Promise<unknown>): void {
  const schema: Record<string, unknown> = { [SPEC_KEY]: spec };
  if (spec.querystring) schema.querystring = spec.querystring;
  if (spec.body) schema.body = spec.body;
  app.route({ method: spec.method as HTTPMethods, url: spec.url, schema, handler });
}

/** A route as fastify's onRoute hook saw it. */
export type RegisteredRoute = { method: string; url: string; spec: RouteSpec | undefined };

/**
 * Records every route registered on `app` and its plugins (call before registering any), for the document and for
 * the test that every registered route is documented.
 */
export function recordRoutes(app: FastifyInstance): RegisteredRoute[] {
  const routes: RegisteredRoute[] = [];
  app.addHook('onRoute', (opts) => {
    const methods = Array.isArray(opts.method) ? opts.method : [opts.method];
    const spec = (opts.schema as Record<string, unknown> | undefined)?.[SPEC_KEY] as RouteSpec | undefined;
    for (const method of methods) routes.push({ method: String(method).toUpperCase(), url: opts.url, spec });
  });
  return routes;
}

/**
 * Validators: bodies strictly (no coercion: `"8080"` is not a port), query strings with string-to-number and
 * string-to-boolean coercion (everything in a URL is text). Every problem is reported at once.
 */
export function validatorCompiler(): (o: { schema: JsonSchema; httpPart?: string }) => ValidateFunction {
  const strict = new Ajv({ allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, strict: false });
  const query = new Ajv({ allErrors: true, coerceTypes: true, removeAdditional: false, useDefaults: false, strict: false });
  return ({ schema, httpPart }) => (httpPart === 'body' ? strict : query).compile(schema);
}

/** Fastify's validation failure (ajv's errors) as the gateway's ValidationError, paths spelled as the parsers spell them. */
export function validationErrorOf(errors: ErrorObject[], context: string | undefined): ValidationError {
  const base = (e: ErrorObject) =>
    e.instancePath
      .split('/')
      .slice(1)
      .map((p) => p.replace(/~1/g, '/').replace(/~0/g, '~'))
      .reduce((path, seg) => (/^\d+$/.test(seg) ? `${path}[${seg}]` : path ? `${path}.${seg}` : seg), '');
  const at = (path: string, key: string) => (path ? `${path}.${key}` : key);
  const issues: Issue[] = errors.map((e): Issue => {
    const path = base(e);
    const p = e.params as Record<string, unknown>;
    switch (e.keyword) {
      case 'required':
        return { path: at(path, String(p.missingProperty)), message: 'is required' };
      case 'additionalProperties':
        return p.additionalProperty === 'tag'
          ? { path: at(path, 'tag'), message: 'tags are assigned by the server and may not be set' }
          : { path: at(path, String(p.additionalProperty)), message: 'is not a known field' };
      case 'type':
        return { path, message: `must be ${p.type === 'integer' ? 'an integer' : `a${/^[aeiou]/.test(String(p.type)) ? 'n' : ''} ${String(p.type)}`}` };
      case 'enum':
        return { path, message: `must be one of ${(p.allowedValues as unknown[]).join(', ')}` };
      case 'minimum':
        return { path, message: `must be at least ${String(p.limit)}` };
      case 'maximum':
        return { path, message: `must be at most ${String(p.limit)}` };
      case 'minItems':
        return { path, message: `must have at least ${String(p.limit)} item(s)` };
      case 'maxItems':
        return { path, message: `must have at most ${String(p.limit)} items` };
      case 'maxLength':
        return { path, message: `must be at most ${String(p.limit)} characters` };
      case 'minLength':
        return { path, message: `must be at least ${String(p.limit)} character(s)` };
      case 'pattern':
        return { path, message: p.pattern === ID_SCHEMA.pattern ? ID_MESSAGE : `must match ${String(p.pattern)}` };
      default:
        return { path, message: e.message ?? 'is invalid' };
    }
  });
  if (context === 'querystring' && issues.length === 0) issues.push({ path: '', message: 'invalid query string' });
  return new ValidationError(issues);
}

const ID_MESSAGE = 'must be 1-128 characters of letters, digits, "-" or "_", starting with a letter or digit';

/** An app, space or cell id (events/fields.ts `ID_PATTERN`). */
export const ID_SCHEMA = { type: 'string', pattern: ID_PATTERN.source, description: 'letters, digits, "-" or "_"; 1-128 characters' } as const;

/** The error body every failure has. */
const ERROR_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['code', 'error'],
  properties: {
    code: { type: 'string', description: 'stable machine-readable code, e.g. invalid-input, app-not-accessible' },
    error: { type: 'string', description: 'what went wrong, for people' },
    issues: {
      type: 'array',
      description: 'validation errors: every problem, with its path in the request',
      items: { type: 'object', required: ['path', 'message'], properties: { path: { type: 'string' }, message: { type: 'string' } } },
    },
  },
};

const toOpenApiPath = (url: string) => url.replace(/:([A-Za-z0-9_]+)/g, '{$1}');
const pathParams = (url: string) => [...url.matchAll(/:([A-Za-z0-9_]+)/g)].map((m) => m[1]!);

/** Query-string schema properties as OpenAPI parameters. */
function queryParameters(schema: JsonSchema | undefined): unknown[] {
  if (!schema) return [];
  const props = (schema.properties ?? {}) as Record<string, JsonSchema>;
  const required = new Set((schema.required ?? []) as string[]);
  return Object.entries(props).map(([name, s]) => {
    const { description, ...rest } = s;
    return { name, in: 'query', required: required.has(name), ...(description ? { description } : {}), schema: rest };
  });
}

/** The OpenAPI 3.1 document of every declared route (HEAD routes fastify adds for GETs are left out). */
export function openApiDocument(routes: readonly RegisteredRoute[], info: { title: string; version: string }): JsonSchema {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const r of routes) {
    if (!r.spec || r.method === 'HEAD') continue;
    const s = r.spec;
    const responses: Record<string, unknown> = {};
    for (const [status, res] of Object.entries(s.responses)) {
      const content: Record<string, unknown> = { [res.contentType ?? 'application/json']: { schema: res.schema ?? { type: 'string' } } };
      for (const alt of res.also ?? []) content[alt.contentType] = { schema: alt.schema ?? { type: 'string' } };
      responses[status] = { description: res.description, content };
    }
    if (s.auth)
      responses['401'] = { description: 'no valid bearer token', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } };
    if (s.querystring || s.body)
      responses['400'] ??= {
        description: 'invalid input: every problem listed',
        content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
      };
    const op: Record<string, unknown> = {
      operationId: `${r.method.toLowerCase()}${toOpenApiPath(r.url).replace(/[^A-Za-z0-9]+(.)?/g, (_m, c: string | undefined) => (c ? c.toUpperCase() : ''))}`,
      summary: s.summary,
      tags: s.tags,
      parameters: [...pathParams(r.url).map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } })), ...queryParameters(s.querystring)],
      responses,
      security: s.auth ? [{ bearer: [] }] : [],
    };
    if (s.description) op.description = s.description;
    if (s.body) op.requestBody = { required: true, content: { 'application/json': { schema: s.body } } };
    (paths[toOpenApiPath(r.url)] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.1.0',
    info: { ...info, description: "netfold's gateway: Cloud Foundry's external policy API v1, and netfold's own routes (policy files, explain, the console)" },
    paths,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' } },
      schemas: { Error: ERROR_SCHEMA },
    },
  };
}
