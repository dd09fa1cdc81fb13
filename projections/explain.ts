// Why can (or cannot) app A reach app B on a port? Pure: answered from a model.
import type { Protocol } from '../events/catalogue.ts';
import type { Model, PolicyRecord } from './model.ts';

export type Explanation = {
  allowed: boolean;
  reason: string;
  /** The policies that allow it (source, destination, protocol, ports, who created it and when). */
  policies: PolicyRecord[];
  /** Policies between the two apps that do not cover this port or protocol. */
  nearMisses: PolicyRecord[];
  /** Cells where the destination runs (where the rule is enforced). */
  cells: string[];
};

export function explain(m: Model, sourceAppId: string, destAppId: string, port: number, protocol: Protocol): Explanation {
  const src = m.apps[sourceAppId];
  const dst = m.apps[destAppId];
  const cells = [
    ...new Set(
      Object.keys(m.containersByApp[destAppId] ?? {})
        .map((id) => m.containers[id]?.cellId)
        .filter((c): c is string => !!c),
    ),
  ].sort();
  const none = (reason: string): Explanation => ({ allowed: false, reason, policies: [], nearMisses: [], cells });
  if (!src || src.deleted) return none(`source app ${sourceAppId} is ${src ? 'deleted' : 'not registered'}`);
  if (!dst || dst.deleted) return none(`destination app ${destAppId} is ${dst ? 'deleted' : 'not registered'}`);
  const between = Object.values(m.policies[sourceAppId] ?? {}).filter((p) => p.destAppId === destAppId);
  const policies = between.filter((p) => p.protocol === protocol && port >= p.startPort && port <= p.endPort);
  const nearMisses = between.filter((p) => !policies.includes(p));
  if (policies.length > 0)
    return { allowed: true, reason: `allowed by ${policies.length} polic${policies.length === 1 ? 'y' : 'ies'}`, policies, nearMisses, cells };
  const reason =
    between.length === 0
      ? `no policy from ${sourceAppId} to ${destAppId}: denied by default`
      : `policies from ${sourceAppId} to ${destAppId} exist but none covers ${protocol}/${port}`;
  return { allowed: false, reason, policies: [], nearMisses, cells };
}
