// Prometheus text metrics of every service (one registry, as under `netfold up`): the exposition parses and the
// counters move with the work done.
import t, { type Test } from 'tap';
import { Resolver } from 'node:dns/promises';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { Registry } from '../runtime/metrics.ts';
import { startStack } from './harness/stack.ts';
import { startDiscovery, defaultDiscoveryConfig } from '../services/discovery/service.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';

type Sample = { name: string; labels: Record<string, string>; value: number };

/** A strict reader of the text format: every family has HELP and TYPE, every sample line parses. */
function parse(t: Test, text: string): Sample[] {
  const samples: Sample[] = [];
  const typed = new Set<string>();
  for (const line of text.trimEnd().split('\n')) {
    if (line.startsWith('# HELP ')) continue;
    const type = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram)$/.exec(line);
    if (type) {
      typed.add(type[1]!);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.]+(?:e[+-]?[0-9]+)?|\+Inf|NaN)$/.exec(line);
    if (!m) {
      t.fail(`not a sample line: ${line}`);
      continue;
    }
    const labels: Record<string, string> = {};
    for (const l of (m[3] ?? '').match(/[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"/g) ?? []) {
      const at = l.indexOf('=');
      labels[l.slice(0, at)] = l.slice(at + 2, -1);
    }
    const family = m[1]!.replace(/_(bucket|sum|count)$/, '');
    if (!typed.has(m[1]!) && !typed.has(family)) t.fail(`sample before its TYPE: ${line}`);
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return samples;
}

const value = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v)).reduce((n, s) => n + s.value, 0);

t.test('metrics parse and move', async (t) => {
  const nats = await startNats(t);
  const metrics = new Registry();
  const gw = await startGateway(t, nats, {}, metrics);
  await gw.registerCells('cell-1');
  const stack = await startStack(t, nats, ['cell-1'], { metrics, agent: { driftIntervalMs: 100 } });
  const plane = stack.planes['cell-1']!;
  const agent = stack.agents['cell-1']!;
  const discovery = await startDiscovery({ bus: await nats.connectAs('discovery'), log: nats.log, config: { ...defaultDiscoveryConfig, dnsPort: 0, httpPort: 0 }, metrics });
  t.teardown(() => discovery.stop());

  const scrape = async () => {
    const res = await fetch(`${gw.writer.url}/metrics`);
    t.match(res.headers.get('content-type'), /^text\/plain; version=0\.0\.4/);
    return parse(t, await res.text());
  };
  const before = await scrape();

  await gw.intake('registerApp', { appId: 'web', name: 'web', spaceId: 's', orgId: 'o' });
  await gw.intake('registerApp', { appId: 'api', name: 'api', spaceId: 's', orgId: 'o' });
  await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
  await gw.intake('startContainer', { containerId: 'api-0', appId: 'api', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.3' });
  const add = await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('web', 'api')] } });
  await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [] } });
  t.equal((await waitEnforced(gw.bus, add.body.revision, 10_000)).enforced, true);
  const resolver = new Resolver({ timeout: 2000, tries: 1 });
  resolver.setServers([`127.0.0.1:${discovery.dnsPort}`]);
  await eventually(async () => ((await resolver.resolve4('api.apps.internal').catch(() => [])).length === 1 ? true : undefined), 10_000, 'name resolves');
  await resolver.resolve4('nope.apps.internal').catch(() => undefined);
  plane.tamper();
  await eventually(() => (agent.status()?.driftRepairs === 1 ? true : undefined), 5000, 'a repair');

  const after = await scrape();
  t.equal(value(before, 'netfold_gateway_requests_total', { route: '/networking/v1/external/policies', status: '200' }), 0);
  t.equal(value(after, 'netfold_gateway_requests_total', { route: '/networking/v1/external/policies', method: 'POST', status: '200' }), 1, 'gateway requests by route and status');
  t.equal(value(after, 'netfold_gateway_requests_total', { status: '400' }), 1);
  t.equal(value(after, 'netfold_intake_requests_total', { command: 'StartContainer', code: 'ok' }), 2);
  t.ok(value(after, 'netfold_planner_events_folded_total') >= add.body.revision, 'events folded');
  t.ok(value(after, 'netfold_planner_outputs_total', { kind: 'delta' }) > 0);
  t.ok(value(after, 'netfold_propagation_seconds_count', { cell: 'cell-1' }) > 0, 'propagation delay, per cell');
  t.ok(value(after, 'netfold_propagation_seconds_bucket', { cell: 'cell-1', le: '+Inf' }) === value(after, 'netfold_propagation_seconds_count', { cell: 'cell-1' }));
  t.ok(value(after, 'netfold_agent_apply_seconds_count', { cell: 'cell-1' }) > 0, 'apply duration');
  t.equal(value(after, 'netfold_agent_rules', { cell: 'cell-1', kind: 'allows' }), 1, 'rule counts');
  t.equal(value(after, 'netfold_agent_drift_repairs_total', { cell: 'cell-1' }), 1, 'drift repairs');
  t.ok(value(after, 'netfold_dns_queries_total', { rcode: 'NOERROR' }) >= 1, 'DNS queries by answer code');
  t.ok(value(after, 'netfold_dns_queries_total', { rcode: 'NXDOMAIN' }) >= 1);
  t.equal(value(after, 'netfold_writer_revision'), (await gw.writer.follower.seq));
  const dnsScrape = parse(t, await (await fetch(`${discovery.httpUrl.replace(/\/$/, '')}/metrics`)).text());
  t.ok(value(dnsScrape, 'netfold_dns_queries_total') >= 2, 'the discovery service serves /metrics too');
});
