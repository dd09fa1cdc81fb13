// `netfold demo`: a scripted tour against a running `netfold up` (npm start): registers two apps, starts their
// containers on the simulated cells, adds a policy, waits until it is enforced on every cell, resolves the names
// through DNS, and shows the audit trail and an explanation. Safe to run again (every step is idempotent).
import { cidrRange, intToIp } from '../projections/ipv4.ts';
import { kvLatest } from '../runtime/buckets.ts';
import { Resolver } from 'node:dns/promises';
import type { Bus } from '../runtime/nats.ts';
import { intakeCommand, intakeSubject, CELL_STATUS_BUCKET } from '../runtime/subjects.ts';
import { waitEnforced } from '../services/topology-planner/enforcement.ts';
import { NetfoldError } from '../runtime/errors.ts';
import type { PolicyRule } from '../events/catalogue.ts';
import { audit, explainAt, modelAt } from './operators.ts';

/** `bus` reads (the operator's role on a secured server); `platform` sends the platform's intake commands (`demo`). */
export type DemoOptions = { bus: Bus; platform: Bus; api: string; token: string; dnsPort: number; say: (line: string) => void };

export async function demo(o: DemoOptions): Promise<void> {
  const { bus, say } = o;
  const intake = async (subject: string, body: object) => {
    const r = (await o.platform.nc.request(subject, JSON.stringify(body), { timeout: 10_000 })).json<{
      ok: boolean;
      revision?: number;
      error?: string;
      code?: string;
    }>();
    if (!r.ok) throw new NetfoldError(r.error ?? 'refused', r.code ?? 'refused', 400, false);
    return r.revision!;
  };
  const model = await modelAt(bus, undefined);
  const cells = [...(await kvLatest(bus, CELL_STATUS_BUCKET)).keys()].filter((c) => model.cells[c]?.status === 'active').sort();
  if (cells.length < 2)
    throw new NetfoldError('the demo needs at least two cells: run "npm start" (3 simulated cells by default) first', 'no-cells', 400, false);
  say(`1. cells reporting: ${cells.join(', ')}`);

  say('2. the platform registers two apps and starts their containers');
  const d = demoData(cells.map((cellId) => ({ cellId, subnet: model.cells[cellId]!.subnet })));
  for (const app of d.apps) await intake(intakeSubject('demo', intakeCommand.registerApp), app);
  for (const c of d.containers) {
    await intake(intakeSubject('demo', intakeCommand.startContainer), c);
    say(`   ${c.containerId} on ${c.cellId} at ${c.ip}`);
  }

  say('3. a developer allows frontend -> backend on tcp 8080 (Cloud Foundry policy API)');
  const res = await fetch(`${o.api}/networking/v1/external/policies`, {
    method: 'POST',
    headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      policies: d.policy.rules.map((r) => ({
        source: { id: d.policy.sourceAppId },
        destination: { id: r.destAppId, protocol: r.protocol, ports: { start: r.startPort, end: r.endPort } },
      })),
    }),
  });
  const body = (await res.json()) as { revision?: number; error?: string };
  if (!res.ok) throw new NetfoldError(body.error ?? `HTTP ${res.status}`, 'policy-refused', res.status, false);
  say(`   appended at revision ${body.revision}`);

  const e = await waitEnforced(bus, body.revision!, 15_000);
  say(`4. revision ${body.revision} ${e.enforced ? 'is enforced on every cell' : 'is NOT yet enforced everywhere'}:`);
  for (const c of e.cells) say(`   ${c.cellId}: planned ${c.planned}, applied ${c.applied ?? '-'} ${c.ok ? 'ok' : 'waiting'}`);
  if (!e.enforced) throw new NetfoldError('the policy was not enforced within 15 s', 'not-enforced', 504, true);

  const resolver = new Resolver({ timeout: 2000, tries: 2 });
  resolver.setServers([`127.0.0.1:${o.dnsPort}`]);
  for (const name of ['backend.apps.internal', '1.backend.apps.internal', 'frontend.apps.internal']) {
    say(`5. DNS ${name} -> ${(await resolver.resolve4(name)).sort().join(', ')}`);
  }

  say('6. audit: the last changes');
  for (const a of (await audit(bus, { app: 'demo-backend' })).slice(-4)) say(`   #${a.revision} ${a.at} ${a.actor} ${a.effect}`);

  const m = await modelAt(bus, undefined);
  for (const port of [8080, 9090]) {
    const x = await explainAt(bus, m, 'demo-frontend', 'demo-backend', port, 'tcp');
    say(`7. explain frontend -> backend tcp/${port}: ${x.allowed ? 'ALLOWED' : 'DENIED'} (${x.reason})`);
  }
  say('done. Try: npx netfold audit, npx netfold cells, npx netfold replay, npx netfold policy remove --from demo-frontend --to demo-backend --port 8080');
}

/**
 * The demo's apps, containers and policy, for the given cells (sorted by id): the tour makes them through the
 * platform's intake and the policy API, `netfold up` seeds them straight into a fresh log (`--demo-data seed`). Both
 * make the very same commands, so either may come first and the other changes nothing.
 */
export function demoData(cells: readonly { cellId: string; subnet: string }[]): {
  apps: { appId: string; name: string; spaceId: string; orgId: string }[];
  containers: { containerId: string; appId: string; instanceIndex: number; cellId: string; ip: string }[];
  policy: { sourceAppId: string; rules: PolicyRule[] };
} {
  const sorted = [...cells].sort((a, b) => (a.cellId < b.cellId ? -1 : a.cellId > b.cellId ? 1 : 0));
  const starts: [string, string, number][] = [
    ['demo-frontend-0', 'demo-frontend', 0],
    ['demo-backend-0', 'demo-backend', 0],
    ['demo-backend-1', 'demo-backend', 1],
  ];
  return {
    apps: [
      { appId: 'demo-frontend', name: 'frontend', spaceId: 'demo-space', orgId: 'demo-org' },
      { appId: 'demo-backend', name: 'backend', spaceId: 'demo-space', orgId: 'demo-org' },
    ],
    containers: starts.map(([containerId, appId, instanceIndex], i) => {
      const cell = sorted[i % sorted.length]!;
      // An address in the cell's registered container range (the writer refuses any other).
      const range = cidrRange(cell.subnet);
      return { containerId, appId, instanceIndex, cellId: cell.cellId, ip: intToIp(range.first + Math.min(10 + i, range.size - 2)) };
    }),
    policy: { sourceAppId: 'demo-frontend', rules: [{ destAppId: 'demo-backend', protocol: 'tcp', startPort: 8080, endPort: 8080 }] },
  };
}
