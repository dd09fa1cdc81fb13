// The gateway's contract: /openapi.json is a valid OpenAPI 3.1 document (checked by a real validator), it lists
// every route the running gateway registered — whatever file or plugin registered it — and its request schemas are
// the ones the gateway validates with: a body the document's schema refuses, the gateway refuses with the same paths.
import t from 'tap';
import Fastify from 'fastify';
import { Ajv } from 'ajv';
import { Validator } from '@seriousme/openapi-schema-validator';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { type RegisteredRoute, openApiDocument, recordRoutes, route } from '../services/policy-writer/openapi.ts';

type Doc = { paths: Record<string, Record<string, any>> };

/** Routes registered but missing from the document (HEAD routes fastify adds for GETs aside). */
function undocumented(routes: readonly RegisteredRoute[], doc: Doc): string[] {
  return routes
    .filter((r) => r.method !== 'HEAD')
    .filter((r) => !doc.paths[r.url.replace(/:([A-Za-z0-9_]+)/g, '{$1}')]?.[r.method.toLowerCase()])
    .map((r) => `${r.method} ${r.url}`);
}

t.test('the check finds a route registered without a declaration', async (t) => {
  const app = Fastify();
  const routes = recordRoutes(app);
  route(
    app,
    { method: 'GET', url: '/declared/:id', summary: 'declared', tags: ['x'], auth: false, responses: { 200: { description: 'ok' } } },
    async () => ({}),
  );
  app.get('/sneaked-in', async () => ({}));
  await app.ready();
  const doc = openApiDocument(routes, { title: 't', version: '1' }) as Doc;
  t.same(undocumented(routes, doc), ['GET /sneaked-in']);
  t.ok(doc.paths['/declared/{id}']?.get, 'path parameters in OpenAPI spelling');
  t.same(doc.paths['/declared/{id}']!.get.parameters[0], { name: 'id', in: 'path', required: true, schema: { type: 'string' } });
  t.equal((await new Validator().validate(doc as never)).valid, true);
  const broken = { ...doc, paths: { '/x': { get: { responses: 'none' } } } };
  t.equal((await new Validator().validate(broken as never)).valid, false, 'the validator does refuse a broken document');
  await app.close();
});

t.test('/openapi.json: valid OpenAPI, every registered route in it, the same schemas as validation', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats, { maxPoliciesPerRequest: 5 });
  const res = await fetch(`${gw.writer.url}/openapi.json`);
  t.equal(res.status, 200);
  const doc = (await res.json()) as Doc & { openapi: string };
  t.equal(doc.openapi, '3.1.0');

  const validation = await new Validator().validate(doc as never);
  t.same(validation.errors ?? [], [], 'no errors from the OpenAPI schema validator');
  t.equal(validation.valid, true);

  const registered = gw.writer.routes.filter((r) => r.method !== 'HEAD');
  t.ok(registered.length >= 9, `${registered.length} routes registered`);
  t.same(undocumented(gw.writer.routes, doc), [], 'every registered route is documented');
  for (const path of ['/networking/v1/external/policies', '/networking/v1/external/policies/delete', '/openapi.json', '/healthz'])
    t.ok(doc.paths[path], `${path} documented`);
  const list = doc.paths['/networking/v1/external/policies']!.get;
  t.same(list.security, [{ bearer: [] }], 'listing needs a bearer token');
  t.same(
    list.parameters.map((p: { name: string }) => p.name),
    ['id', 'source_id', 'dest_id'],
  );

  // One source of truth: the document's body schema and the gateway agree, limit included (--max-policies-per-request 5).
  const bodySchema = doc.paths['/networking/v1/external/policies']!.post.requestBody.content['application/json'].schema;
  const check = new Ajv({ allErrors: true, strict: false }).compile(bodySchema);
  const bad = { policies: [cfPolicy('a1', 'a2', 'icmp'), { source: { id: 'a1', tag: '01' }, destination: cfPolicy('a1', 'a2').destination }] };
  const tooMany = { policies: Array.from({ length: 6 }, (_, i) => cfPolicy('a1', 'a2', 'tcp', i + 1)) };
  t.equal(check(bad), false, 'the document refuses a bad protocol and a client tag');
  t.equal(check(tooMany), false, 'and six policies where five are allowed');
  t.equal(check({ policies: [cfPolicy('a1', 'a2')] }), true, 'and takes a good body');
  const r = await gw.http('POST', '/networking/v1/external/policies', { body: bad });
  t.equal(r.status, 400);
  t.equal(r.body.code, 'invalid-input');
  t.same(
    r.body.issues.map((i: { path: string }) => i.path).sort(),
    ['policies[0].destination.protocol', 'policies[1].source.tag'],
    'the gateway reports both problems, at the same paths',
  );
  t.match(r.body.issues.find((i: { path: string }) => i.path === 'policies[1].source.tag').message, /assigned by the server/);
  const many = await gw.http('POST', '/networking/v1/external/policies', { body: tooMany });
  t.equal(many.status, 400);
  t.match(many.body.error, /at most 5/);
  const q = await gw.http('GET', '/networking/v1/external/enforcement?revision=-1&wait_ms=99999');
  t.equal(q.status, 400);
  t.same(q.body.issues.map((i: { path: string }) => i.path).sort(), ['revision', 'wait_ms'], 'query strings too');
});
