// npm run bench:dns — the discovery service: DNS queries/s over UDP (the service as its own process, answering from
// records of 1,000 cells), and the time from a container start (intake request) to its name resolving through the
// real path: policy-writer, planner, a cell agent (memory dataplane), the discovery KV, the DNS index.
// Sizes: BENCH_QUERIES (100000), BENCH_WINDOW (256), BENCH_SAMPLES (300).
import { createSocket } from 'node:dgram';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as dnsPacket from 'dns-packet';
import { Kvm } from '@nats-io/kv';
import { startNatsServer } from '../runtime/nats-server.ts';
import { connectBus } from '../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../runtime/topology.ts';
import { silentLogger } from '../runtime/logger.ts';
import { DISCOVERY_BUCKET, intakeCommand, intakeSubject } from '../runtime/subjects.ts';
import { policyWriterConfigOf, startPolicyWriter } from '../services/policy-writer/service.ts';
import { loadConfig } from '../runtime/config.ts';
import { startPlanner, defaultPlannerConfig } from '../services/topology-planner/service.ts';
import { startCellAgent, defaultCellAgentConfig } from '../services/cell-agent/agent.ts';
import { MemoryDataplane } from '../services/cell-agent/dataplane.ts';
import { startDiscovery, defaultDiscoveryConfig } from '../services/discovery/service.ts';
import { cpuSeconds, envNumber, freePort, machine, percentile, progress, startChild, stopChild } from './lib.ts';

const QUERIES = envNumber('BENCH_QUERIES', 100_000);
const WINDOW = envNumber('BENCH_WINDOW', 256);
const SAMPLES = envNumber('BENCH_SAMPLES', 300);
const results: Record<string, string | number> = {};
const dir = mkdtempSync(join(tmpdir(), 'netfold-bench-'));
const server = await startNatsServer({ storeDir: dir });
const log = silentLogger();
const bus = await connectBus({ servers: server.url, name: 'bench', log });
await ensureTopology(bus.jsm, defaultTopologyOptions, log);

// ---- 1. queries/s ----
{
  progress('records for 1,000 cells');
  const kv = await new Kvm(bus.js).create(DISCOVERY_BUCKET, { history: 1 });
  for (let c = 0; c < 1000; c++) {
    const names: Record<string, string[]> = {};
    for (let a = 0; a < 50; a++) {
      const ip = `10.${c >> 8}.${c & 255}.${a + 2}`;
      names[`app${c * 50 + a}.apps.internal`] = [ip];
      names[`0.app${c * 50 + a}.apps.internal`] = [ip];
    }
    await kv.put(`cell-${c}`, JSON.stringify({ cellId: `cell-${c}`, at: new Date().toISOString(), names }));
  }
  const dnsPort = await freePort();
  // NETFOLD_DNS_RATE_LIMIT=0: every query comes from one source address, which the per-source limit would hold to 100/s.
  const child = await startChild(
    'services/discovery/main.ts',
    { NATS_URL: server.url, NETFOLD_DNS_PORT: String(dnsPort), NETFOLD_DISCOVERY_HTTP_PORT: '0', NETFOLD_LOG_LEVEL: 'info', NETFOLD_DNS_RATE_LIMIT: '0' },
    'discovery-started',
  );
  progress(`${QUERIES} queries over UDP, ${WINDOW} in flight`);
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const packets = Array.from({ length: 1000 }, (_, i) =>
    dnsPacket.encode({ id: i, type: 'query', questions: [{ type: 'A', name: `app${(i * 7919) % 50000}.apps.internal` }] }),
  );
  sock.setRecvBufferSize(8 << 20);
  let received = 0;
  let answersOk = 0;
  let lastAt = performance.now();
  sock.on('message', (m) => {
    received++;
    lastAt = performance.now();
    if ((m[3]! & 0x0f) === 0 && m.readUInt16BE(6) === 1) answersOk++;
  });
  const cpu0 = cpuSeconds(child.pid!);
  const t0 = performance.now();
  // Keep about WINDOW queries outstanding: send more whenever answers come back (checked on every turn).
  let sent = 0;
  let lost = 0;
  while (sent < QUERIES) {
    while (sent < QUERIES && sent - received - lost < WINDOW) sock.send(packets[sent++ % packets.length]!, dnsPort, '127.0.0.1');
    await new Promise((r) => setImmediate(r));
    if (performance.now() - lastAt > 200) {
      lost = sent - received; // datagrams that will not come back (UDP may drop under load)
      lastAt = performance.now();
    }
  }
  while (received < sent && performance.now() - lastAt < 500) await new Promise((r) => setTimeout(r, 10));
  const ms = lastAt - t0;
  results['UDP queries answered per second'] = Math.round((answersOk / ms) * 1000);
  results['answers with one A record'] = `${answersOk} of ${sent} sent`;
  results['discovery CPU during the run (cores)'] = Math.round(((cpuSeconds(child.pid!) - cpu0) / (ms / 1000)) * 100) / 100;
  sock.close();
  await stopChild(child);
  await kv.destroy();
}

// ---- 2. container start -> name resolves ----
{
  progress(`${SAMPLES} container starts, each resolved as soon as possible`);
  const writer = await startPolicyWriter({
    bus,
    log,
    config: policyWriterConfigOf(loadConfig({ 'http-port': '0' }, {}), 'x'.repeat(32)), // the defaults, any free port
  });
  const planner = await startPlanner({ bus, log, config: defaultPlannerConfig });
  const agent = await startCellAgent({ bus, log, config: { ...defaultCellAgentConfig, cellId: 'cell-1' }, dataplane: new MemoryDataplane('10.255.0.0/16') });
  const discovery = await startDiscovery({ bus, log, config: { ...defaultDiscoveryConfig, dnsPort: 0, httpPort: 0, rateLimit: 0 } }); // one source, polling
  const request = async (subject: string, body: unknown) => {
    const r = (await bus.nc.request(subject, JSON.stringify(body), { timeout: 10_000 })).json<{ ok: boolean; error?: string }>();
    if (!r.ok) throw new Error(r.error);
  };
  await request(intakeSubject('bench', intakeCommand.registerCell), { cellId: 'cell-1', subnet: '10.255.0.0/16' });
  await request(intakeSubject('bench', intakeCommand.registerApp), { appId: 'svc', name: 'svc', spaceId: 's', orgId: 'o' });
  const sock = createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', () => r()));
  const lat: number[] = [];
  for (let i = 0; i < SAMPLES; i++) {
    const ip = `10.255.${1 + (i >> 7)}.${1 + (i & 127)}`;
    const q = dnsPacket.encode({ id: i, type: 'query', questions: [{ type: 'A', name: `${i}.svc.apps.internal` }] });
    const t0 = performance.now();
    await request(intakeSubject('bench', intakeCommand.startContainer), { containerId: `c${i}`, appId: 'svc', cellId: 'cell-1', instanceIndex: i, ip });
    for (;;) {
      const answer = await new Promise<Buffer | null>((resolve) => {
        const timer = setTimeout(() => resolve(null), 100);
        sock.once('message', (m) => {
          clearTimeout(timer);
          resolve(m);
        });
        sock.send(q, discovery.dnsPort, '127.0.0.1');
      });
      if (answer && answer.readUInt16BE(0) === i && (answer[3]! & 0x0f) === 0) break;
    }
    lat.push(performance.now() - t0);
  }
  lat.sort((a, b) => a - b);
  results['container start -> name resolves: p50 (ms)'] = Math.round(percentile(lat, 50) * 10) / 10;
  results['container start -> name resolves: p99 (ms)'] = Math.round(percentile(lat, 99) * 10) / 10;
  results['container start -> name resolves: max (ms)'] = Math.round(lat[lat.length - 1]! * 10) / 10;
  sock.close();
  await discovery.stop();
  await agent.stop();
  await planner.stop();
  await writer.stop();
}
await bus.close();
await server.stop();
rmSync(dir, { recursive: true, force: true });
console.log(JSON.stringify({ machine: machine(), sizes: { QUERIES, WINDOW, SAMPLES }, results }, null, 2));
console.log(['', '| measurement | figure |', '|---|---|', ...Object.entries(results).map(([k, v]) => `| ${k} | ${v} |`)].join('\n'));
