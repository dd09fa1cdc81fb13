// netfold's own gateway routes beside the Cloud Foundry API: policy files (apply, export). Registered inside the
// authenticated part of the gateway; each declared with `route` (openapi.ts), so /openapi.json documents it.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Principal } from '../../runtime/tokens.ts';
import { toNetfoldError } from '../../runtime/errors.ts';
import { route } from './openapi.ts';
import type { CommandMeta } from './writer.ts';
import type { PolicyFiles } from './policy-api.ts';
import { APPLY_BODY, APPLY_QUERY, APPLY_RESULT_SCHEMA, EXPORT_QUERY } from './schemas.ts';

export const NETFOLD_BASE = '/netfold/v1';

export type NetfoldRouteDeps = {
  files: PolicyFiles;
  principal: (req: FastifyRequest) => Principal;
  metaOf: (req: FastifyRequest) => CommandMeta;
};

/** Open event streams per HTTP server, ended when the gateway closes (a stream never ends on its own). */
const openStreams = new WeakMap<object, Set<() => void>>();

/** Ends every event stream still open on a gateway (its preClose hook), so closing never waits for them. */
export function endEventStreams(server: object): void {
  for (const end of openStreams.get(server) ?? []) end();
}

/** Server-sent events on a hijacked reply: `send(event, data)`, then `end()`; `closed` resolves when the client is gone. */
export function eventStream(req: FastifyRequest, reply: FastifyReply): { send(event: string, data: unknown): void; end(): void; closed: Promise<void> } {
  reply.hijack();
  reply.raw.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' });
  reply.raw.flushHeaders();
  const streams = openStreams.get(req.server.server) ?? openStreams.set(req.server.server, new Set()).get(req.server.server)!;
  const end = () => {
    streams.delete(end);
    if (!reply.raw.writableEnded) reply.raw.end();
  };
  streams.add(end);
  const closed = new Promise<void>((resolve) => reply.raw.once('close', () => resolve()));
  void closed.then(() => streams.delete(end));
  return {
    send: (event, data) => {
      if (!reply.raw.writableEnded) reply.raw.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
    },
    end,
    closed,
  };
}

export function netfoldRoutes(api: FastifyInstance, d: NetfoldRouteDeps): void {
  route(
    api,
    {
      method: 'POST',
      url: `${NETFOLD_BASE}/apply`,
      summary: 'apply a policy file (YAML or JSON) as one change set',
      description:
        'The difference between the file and the log is computed here: `dry_run=true` shows it per policy and per cell and appends nothing; ' +
        "`prune=true` also deletes the policies of the file's spaces and source apps that it no longer has. With `Accept: text/event-stream` " +
        'the answer is a stream of `progress` events ({done, total} policies) ending with a `result` (or `error`) event.',
      tags: ['policy files'],
      auth: true,
      querystring: APPLY_QUERY,
      body: APPLY_BODY,
      responses: {
        200: {
          description: 'applied (or already so), or the dry run; with Accept: text/event-stream, progress events and then the result',
          schema: APPLY_RESULT_SCHEMA,
          also: [{ contentType: 'text/event-stream' }],
        },
      },
    },
    async (req, reply) => {
      const q = req.query as { dry_run?: boolean; prune?: boolean };
      const text = (req.body as { document: string }).document;
      const args = [d.principal(req), text, { prune: q.prune === true, dryRun: q.dry_run === true }, d.metaOf(req)] as const;
      if (!String(req.headers.accept ?? '').includes('text/event-stream')) return d.files.apply(...args);
      const stream = eventStream(req, reply);
      try {
        stream.send('result', await d.files.apply(...args, (p) => stream.send('progress', p)));
      } catch (err) {
        stream.send('error', toNetfoldError(err).toBody());
      }
      stream.end();
      return reply;
    },
  );
  route(
    api,
    {
      method: 'GET',
      url: `${NETFOLD_BASE}/export`,
      summary: 'the policies the token may change, as a policy file',
      tags: ['policy files'],
      auth: true,
      querystring: EXPORT_QUERY,
      responses: { 200: { description: 'the policy file (YAML, or JSON with format=json)', contentType: 'text/yaml' } },
    },
    async (req, reply) => {
      const format = (req.query as { format?: 'yaml' | 'json' }).format ?? 'yaml';
      const { revision, text } = d.files.export(d.principal(req), format);
      return reply
        .type(format === 'json' ? 'application/json' : 'text/yaml; charset=utf-8')
        .header('x-netfold-revision', String(revision))
        .send(text);
    },
  );
}
