// The gateway's Cloud Foundry v3 security group routes, registered inside the authenticated part of the gateway
// (services/policy-writer/http.ts) and declared with `route` (openapi.ts), so they are in /openapi.json. Writes answer
// with header `X-Netfold-Revision`: the log sequence at which the change holds (what `netfold wait --revision` and
// GET …/enforcement take). Bodies are checked by the domain's own parsers (events/security-groups.ts), which answer
// Cloud Foundry's 422 with every issue; the declared body schema only says a JSON object is expected.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Principal } from '../../runtime/tokens.ts';
import { ValidationError } from '../../runtime/errors.ts';
import { LIFECYCLES, type Lifecycle } from '../../events/security-groups.ts';
import { SECURITY_GROUPS_PATH, type SecurityGroupApi, type SecurityGroupWrite } from './security-groups.ts';
import { type JsonSchema, route } from './openapi.ts';
import type { CommandMeta } from './writer.ts';

export type SecurityGroupRouteDeps = {
  api: SecurityGroupApi;
  principal: (req: FastifyRequest) => Principal;
  meta: (req: FastifyRequest) => CommandMeta;
};

const REVISION_HEADER = 'x-netfold-revision';

function lifecycleOf(segment: string): Lifecycle {
  const lc = segment.replace(/_spaces$/, '');
  if (!(LIFECYCLES as readonly string[]).includes(lc))
    throw new ValidationError([{ path: 'relationship', message: 'must be running_spaces or staging_spaces' }]);
  return lc as Lifecycle;
}

const ERROR = { $ref: '#/components/schemas/Error' };
const SPACES: JsonSchema = { type: 'object', properties: { data: { type: 'array', items: { type: 'object', properties: { guid: { type: 'string' } } } } } };
const RULE: JsonSchema = {
  type: 'object',
  properties: {
    protocol: { type: 'string', enum: ['tcp', 'udp', 'icmp', 'all'] },
    destination: { type: 'string', description: 'an IPv4 address, a range a-b or a CIDR, or a comma list of them' },
    ports: { type: 'string', description: 'tcp and udp: ports and ranges, e.g. "80,443,8000-9000"' },
    type: { type: 'integer', description: 'icmp type (-1: any)' },
    code: { type: 'integer', description: 'icmp code (-1: any)' },
    description: { type: 'string' },
    log: { type: 'boolean', description: 'tcp: log the connections this rule allows (nft log, prefixed with the group)' },
  },
};
const GROUP: JsonSchema = {
  type: 'object',
  properties: {
    guid: { type: 'string' },
    created_at: { type: 'string' },
    updated_at: { type: 'string' },
    name: { type: 'string' },
    globally_enabled: { type: 'object', properties: { running: { type: 'boolean' }, staging: { type: 'boolean' } } },
    rules: { type: 'array', items: RULE },
    relationships: { type: 'object', properties: { running_spaces: SPACES, staging_spaces: SPACES } },
    links: { type: 'object' },
    revision: { type: 'integer', description: 'the log sequence at which this group is as shown' },
  },
};
const PAGE: JsonSchema = { type: 'object', properties: { pagination: { type: 'object' }, resources: { type: 'array', items: GROUP } } };
const GROUP_BODY: JsonSchema = {
  type: 'object',
  description: "Cloud Foundry's v3 security group: name, rules, globally_enabled, relationships (create); name, rules, globally_enabled (update)",
};
const LIST_QUERY: JsonSchema = {
  type: 'object',
  properties: {
    names: { type: 'string', description: 'comma list' },
    guids: { type: 'string', description: 'comma list' },
    running_space_guids: { type: 'string', description: 'comma list' },
    staging_space_guids: { type: 'string', description: 'comma list' },
    page: { type: 'string' },
    per_page: { type: 'string' },
    order_by: { type: 'string', enum: ['name'] },
  },
};
const write = (status: number, description: string, schema?: JsonSchema) => ({
  [status]: schema ? { description, schema } : { description },
  403: { description: 'admins only', schema: ERROR },
  404: { description: 'no such group (or not visible to the token)', schema: ERROR },
  422: { description: "invalid by Cloud Foundry's rules; every issue at its path", schema: ERROR },
});

export function registerSecurityGroupRoutes(api: FastifyInstance, deps: SecurityGroupRouteDeps): void {
  const { principal, meta } = deps;
  const sg = deps.api;
  const answer = <T>(reply: FastifyReply, status: number, w: SecurityGroupWrite<T>) => {
    void reply.header(REVISION_HEADER, String(w.revision)).status(status);
    return w.body === null ? reply.send() : reply.send(w.body);
  };
  type Params = { guid: string; relationship: string; space: string };
  const params = (req: FastifyRequest) => req.params as Params;
  const tags = ['security groups'];
  const GUID = `${SECURITY_GROUPS_PATH}/:guid`;

  route(
    api,
    {
      method: 'POST',
      url: SECURITY_GROUPS_PATH,
      summary: 'create a security group (admins)',
      tags,
      auth: true,
      body: GROUP_BODY,
      responses: write(201, 'created', GROUP),
    },
    async (req, reply) => answer(reply, 201, await sg.create(principal(req), req.body, meta(req))),
  );
  route(
    api,
    {
      method: 'GET',
      url: SECURITY_GROUPS_PATH,
      summary: 'list the security groups the token may read (admins: all; others: the groups of their spaces and the global ones)',
      tags,
      auth: true,
      querystring: LIST_QUERY,
      responses: { 200: { description: 'a page of groups', schema: PAGE }, 400: { description: 'a bad query', schema: ERROR } },
    },
    async (req) => sg.list(principal(req), req.query as Record<string, unknown>),
  );
  route(
    api,
    {
      method: 'GET',
      url: GUID,
      summary: 'one security group',
      tags,
      auth: true,
      responses: { 200: { description: 'the group', schema: GROUP }, 404: { description: 'no such group (or not visible)', schema: ERROR } },
    },
    async (req) => sg.get(principal(req), params(req).guid),
  );
  route(
    api,
    {
      method: 'PATCH',
      url: GUID,
      summary: 'update a security group: name, rules, globally_enabled (admins)',
      tags,
      auth: true,
      body: GROUP_BODY,
      responses: write(200, 'updated', GROUP),
    },
    async (req, reply) => answer(reply, 200, await sg.update(principal(req), params(req).guid, req.body, meta(req))),
  );
  // Cloud Foundry answers a delete 202 with a job; netfold's delete is done when it answers.
  route(
    api,
    { method: 'DELETE', url: GUID, summary: 'delete a security group (admins; done when answered)', tags, auth: true, responses: write(202, 'deleted') },
    async (req, reply) => answer(reply, 202, await sg.delete(principal(req), params(req).guid, meta(req))),
  );
  route(
    api,
    {
      method: 'POST',
      url: `${GUID}/relationships/:relationship`,
      summary: 'bind a group to spaces, for running_spaces or staging_spaces (admins)',
      tags,
      auth: true,
      body: { type: 'object', description: '{ "data": [{ "guid": space }] }' },
      responses: write(200, 'the spaces now bound', SPACES),
    },
    async (req, reply) => {
      const p = params(req);
      return answer(reply, 200, await sg.bind(principal(req), p.guid, lifecycleOf(p.relationship), req.body, meta(req)));
    },
  );
  route(
    api,
    {
      method: 'DELETE',
      url: `${GUID}/relationships/:relationship/:space`,
      summary: 'unbind a group from a space (admins)',
      tags,
      auth: true,
      responses: write(204, 'unbound'),
    },
    async (req, reply) => {
      const p = params(req);
      return answer(reply, 204, await sg.unbind(principal(req), p.guid, lifecycleOf(p.relationship), p.space, meta(req)));
    },
  );
}
