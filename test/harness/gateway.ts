// Starts a policy-writer against a test NATS fixture and offers small HTTP and intake clients.
import type { Test } from 'tap';
import { newId } from '../../runtime/ids.ts';
import { startPolicyWriter, type PolicyWriter, type PolicyWriterConfig } from '../../services/policy-writer/service.ts';
import { mintToken, type Principal } from '../../runtime/tokens.ts';
import type { Bus } from '../../runtime/nats.ts';
import type { NatsFixture } from './nats.ts';
import type { IntakeReply } from '../../services/policy-writer/intake.ts';
import { intakeCommand, intakeSubject } from '../../runtime/subjects.ts';
import type { Registry } from '../../runtime/metrics.ts';
import { subnetOfCell } from './events.ts';

export const TEST_SECRET = 'test-secret-0123456789abcdef0123456789abcdef';

export type GatewayFixture = {
  writer: PolicyWriter;
  bus: Bus;
  http(method: string, path: string, opts?: { token?: string | null; body?: unknown; rawBody?: string; headers?: Record<string, string> }): Promise<{ status: number; body: any; headers: Record<string, string> }>;
  token(p: Partial<Principal> & { scopes: string[] }): Promise<string>;
  admin: string;
  /** An intake command sent as platform component `caller` (the actor the events record: `platform:<caller>`). */
  intake(command: keyof typeof intakeCommand, body: unknown, caller?: string): Promise<IntakeReply>;
  /** Registers cells through intake: `cell-N` ids get 10.255.N.0/24; others are given as [id, subnet]. Throws on a refusal. */
  registerCells(...cells: (string | [string, string])[]): Promise<number>;
  stop(): Promise<void>;
};

export async function startGateway(t: Test, nats: NatsFixture, overrides: Partial<PolicyWriterConfig> = {}, metrics?: Registry): Promise<GatewayFixture> {
  // the test's own connection (reads, and forged or garbage messages as an attacker who may publish there): the admin,
  // who also creates the topology and buckets first; the writer runs as writer, intake is sent as platform components
  const bus = await nats.connect('gateway');
  const platforms = new Map<string, Promise<Bus>>();
  const platform = (caller: string) => {
    let p = platforms.get(caller);
    if (!p) platforms.set(caller, (p = nats.connectAs(`platform_${caller}`)));
    return p;
  };
  const writer = await startPolicyWriter({
    bus: await nats.connectAs('writer'),
    log: nats.log,
    config: { httpHost: '127.0.0.1', httpPort: 0, httpBodyLimit: 1024 * 1024, policyQuota: 150, maxPoliciesPerRequest: 1000, tokenSecret: TEST_SECRET, overlayCidr: '10.255.0.0/16', ...overrides },
    ...(metrics ? { metrics } : {}),
  });
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    await writer.stop();
  };
  t.teardown(stop);
  const token = (p: Partial<Principal> & { scopes: string[] }) => mintToken(TEST_SECRET, { user: p.user ?? 'tester', scopes: p.scopes, spaces: p.spaces ?? [] }, 3600);
  const admin = await token({ user: 'admin', scopes: ['network.admin'] });
  return {
    writer,
    bus,
    admin,
    token,
    stop,
    async http(method, path, opts = {}) {
      const headers: Record<string, string> = { ...(opts.headers ?? {}) };
      const tok = opts.token === undefined ? admin : opts.token;
      if (tok !== null) headers.authorization = `Bearer ${tok}`;
      let body: string | undefined;
      if (opts.rawBody !== undefined) body = opts.rawBody;
      else if (opts.body !== undefined) body = JSON.stringify(opts.body);
      if (body !== undefined && !headers['content-type']) headers['content-type'] = 'application/json';
      const res = await fetch(writer.url + path, { method, headers, body });
      const text = await res.text();
      return { status: res.status, body: text ? JSON.parse(text) : undefined, headers: Object.fromEntries(res.headers) };
    },
    async intake(command, body, caller = 'test') {
      const msg = await (await platform(caller)).nc.request(intakeSubject(caller, intakeCommand[command]), JSON.stringify(body), { timeout: 10_000 });
      return msg.json<IntakeReply>();
    },
    async registerCells(...cells) {
      let revision = 0;
      for (const c of cells) {
        const [cellId, subnet] = typeof c === 'string' ? [c, subnetOfCell(c)] : c;
        const msg = await (await platform('harness')).nc.request(intakeSubject('harness', intakeCommand.registerCell), JSON.stringify({ cellId, subnet }), { timeout: 10_000 });
        const r = msg.json<IntakeReply>();
        if (!r.ok) throw new Error(`registering ${cellId} ${subnet}: ${r.code} ${r.error}`);
        revision = Math.max(revision, r.revision);
      }
      return revision;
    },
  };
}

export const requestId = () => newId();

/** A CF policy body. */
export function cfPolicy(src: string, dst: string, protocol = 'tcp', start = 8080, end = start) {
  return { source: { id: src }, destination: { id: dst, protocol, ports: { start, end } } };
}
