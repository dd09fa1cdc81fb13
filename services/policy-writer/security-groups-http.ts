// The gateway's Cloud Foundry v3 security group routes, registered inside the authenticated part of the gateway
// (services/policy-writer/http.ts). Writes answer with header `X-Netfold-Revision`: the log sequence at which the
// change holds (what `netfold wait --revision` and GET …/enforcement take).
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Principal } from '../../runtime/tokens.ts';
import { ValidationError } from '../../runtime/errors.ts';
import { LIFECYCLES, type Lifecycle } from '../../events/security-groups.ts';
import { SECURITY_GROUPS_PATH, type SecurityGroupApi, type SecurityGroupWrite } from './security-groups.ts';
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

export function registerSecurityGroupRoutes(api: FastifyInstance, deps: SecurityGroupRouteDeps): void {
  const { principal, meta } = deps;
  const sg = deps.api;
  const answer = <T>(reply: FastifyReply, status: number, w: SecurityGroupWrite<T>) => {
    void reply.header(REVISION_HEADER, String(w.revision)).status(status);
    return w.body === null ? reply.send() : reply.send(w.body);
  };
  type Params = { guid: string; relationship: string; space: string };
  const params = (req: FastifyRequest) => req.params as Params;

  api.post(SECURITY_GROUPS_PATH, async (req, reply) => answer(reply, 201, await sg.create(principal(req), req.body, meta(req))));
  api.get(SECURITY_GROUPS_PATH, async (req) => sg.list(principal(req), req.query as Record<string, unknown>));
  api.get(`${SECURITY_GROUPS_PATH}/:guid`, async (req) => sg.get(principal(req), params(req).guid));
  api.patch(`${SECURITY_GROUPS_PATH}/:guid`, async (req, reply) => answer(reply, 200, await sg.update(principal(req), params(req).guid, req.body, meta(req))));
  // Cloud Foundry answers a delete 202 with a job; netfold's delete is done when it answers.
  api.delete(`${SECURITY_GROUPS_PATH}/:guid`, async (req, reply) => answer(reply, 202, await sg.delete(principal(req), params(req).guid, meta(req))));
  api.post(`${SECURITY_GROUPS_PATH}/:guid/relationships/:relationship`, async (req, reply) => {
    const p = params(req);
    return answer(reply, 200, await sg.bind(principal(req), p.guid, lifecycleOf(p.relationship), req.body, meta(req)));
  });
  api.delete(`${SECURITY_GROUPS_PATH}/:guid/relationships/:relationship/:space`, async (req, reply) => {
    const p = params(req);
    return answer(reply, 204, await sg.unbind(principal(req), p.guid, lifecycleOf(p.relationship), p.space, meta(req)));
  });
}
