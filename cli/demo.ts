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
  await intake(intakeSubject('demo', intakeCommand.registerApp), { appId: 'demo-frontend', name: 'frontend', spaceId: 'demo-space', orgId: 'demo-org' });
  await intake(intakeSubject('demo', intakeCommand.registerApp), { appId: 'demo-backend', name: 'backend', spaceId: 'demo-space', orgId: 'demo-org' });
  const starts: [string, string, number][] = [
    ['demo-frontend-0', 'demo-frontend', 0],
    ['demo-backend-0', 'demo-backend', 0],
    ['demo-backend-1', 'demo-backend', 1],
  ];
  for (const [i, [containerId, appId, index]] of starts.entries()) {
    const cellId = cells[i % cells.length]!;
    // An address in the cell's registered container range (the writer refuses any other).
    const range = cidrRange(model.cells[cellId]!.subnet);
    const ip = intToIp(range.first + Math.min(10 + i, range.size - 2));
    await intake(intakeSubject('demo', intakeCommand.startContainer), { containerId, appId, instanceIndex: index, cellId, ip });
    say(`   ${containerId} on ${cellId} at ${ip}`);
  }

  say('3. a developer allows frontend -> backend on tcp 8080 (Cloud Foundry policy API)');
  const res = await fetch(`${o.api}/networking/v1/external/policies`, {
    method: 'POST',
    headers: { authorization: `Bearer ${o.token}`, 'content-type': 'application/json' },
    body: JSON.stringify({
      policies: [{ source: { id: 'demo-frontend' }, destination: { id: 'demo-backend', protocol: 'tcp', ports: { start: 8080, end: 8080 } } }],
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
