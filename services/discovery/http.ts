// The HTTP lookup, for tools: GET /v1/registration/<name> → { name, hosts: [{ ip_address, cell_id }] } (404 when
// there are none), /healthz and /metrics (the service's registry).
import Fastify, { type FastifyInstance } from 'fastify';
import { CONTENT_TYPE, type Registry } from '../../runtime/metrics.ts';
import type { DiscoveryIndex } from './records.ts';

/** The fully qualified name a lookup asks for: lower case, no trailing dot, in the zone (appended when absent). */
export function registrationName(raw: string, zone: string): string {
  const name = raw.toLowerCase().replace(/\.$/, '');
  return name === zone || name.endsWith(`.${zone}`) ? name : `${name}.${zone}`;
}

export type HttpLookupOptions = { index: DiscoveryIndex; zone: string; metrics: Registry };

/** The routes, not yet listening (tests call `inject`). */
export function buildHttpLookup(opts: HttpLookupOptions): FastifyInstance {
  const { index, zone, metrics } = opts;
  const http = Fastify({ logger: false });
  http.get('/healthz', async () => ({ ok: true, cells: index.cells }));
  http.get('/metrics', async (_req, reply) => reply.type(CONTENT_TYPE).send(metrics.render()));
  http.get('/v1/registration/:name', async (req, reply) => {
    const fqdn = registrationName(String((req.params as { name: string }).name), zone);
    const hosts = index.lookup(fqdn).map((h) => ({ ip_address: h.ip, cell_id: h.cellId }));
    if (hosts.length === 0) return reply.status(404).send({ code: 'not-found', error: `no instances of ${fqdn}` });
    return { name: fqdn, hosts };
  });
  return http;
}

export type HttpLookup = { url: string; stop(): Promise<void> };

export async function startHttpLookup(opts: HttpLookupOptions & { host: string; port: number }): Promise<HttpLookup> {
  const http = buildHttpLookup(opts);
  const url = await http.listen({ host: opts.host, port: opts.port });
  return {
    url,
    async stop() {
      await http.close();
    },
  };
}
