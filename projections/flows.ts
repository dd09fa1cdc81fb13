// From a cell's desired state to the flows it allows: pure, shared by the cell agent (which enforces them) and the
// policy-writer's dry run (which shows what a change would add or remove).
import type { CellState } from './cell.ts';

export type Protocol = 'tcp' | 'udp';
/** One allowed flow; `startPort === endPort` for a single port. */
export type Allow = { src: string; dst: string; protocol: Protocol; startPort: number; endPort: number };

export type RuleSet = {
  /** IPs of the local containers: traffic to them is denied unless allowed. */
  local: string[];
  allows: Allow[];
};

const cmpAllow = (a: Allow, b: Allow) =>
  a.dst < b.dst ? -1 : a.dst > b.dst ? 1 : a.src < b.src ? -1 : a.src > b.src ? 1 : a.protocol < b.protocol ? -1 : a.protocol > b.protocol ? 1 : a.startPort - b.startPort || a.endPort - b.endPort;

/** Expands a cell's state into allowed flows, sorted and without duplicates. */
export function expandRules(state: CellState): RuleSet {
  const local = new Set<string>();
  const allows = new Map<string, Allow>();
  for (const c of Object.values(state.containers)) {
    local.add(c.ip);
    for (const rule of Object.values(state.ingress[c.appId] ?? {})) {
      for (const src of Object.keys(state.sources[rule.sourceAppId] ?? {})) {
        const a: Allow = { src, dst: c.ip, protocol: rule.protocol, startPort: rule.startPort, endPort: rule.endPort };
        allows.set(`${a.src}|${a.dst}|${a.protocol}|${a.startPort}|${a.endPort}`, a);
      }
    }
  }
  return { local: [...local].sort(), allows: normalizeAllows([...allows.values()]) };
}

/**
 * Sorted, with overlapping port ranges of the same (source, destination, protocol) merged: an interval set refuses
 * overlapping elements ("File exists"), and two policies may well name overlapping ranges.
 */
export function normalizeAllows(list: Allow[]): Allow[] {
  const sorted = [...list].sort(cmpAllow);
  const out: Allow[] = [];
  for (const a of sorted) {
    const prev = out[out.length - 1];
    const ranged = a.startPort !== a.endPort;
    if (prev && ranged && prev.startPort !== prev.endPort && prev.src === a.src && prev.dst === a.dst && prev.protocol === a.protocol && a.startPort <= prev.endPort) {
      out[out.length - 1] = { ...prev, endPort: Math.max(prev.endPort, a.endPort) };
      continue;
    }
    if (prev && !ranged && prev.src === a.src && prev.dst === a.dst && prev.protocol === a.protocol && prev.startPort === a.startPort && prev.endPort === a.endPort) continue;
    out.push(a);
  }
  return out;
}

/** Does a rule set allow a new flow? (The semantics every driver implements.) */
export function allows(rules: RuleSet, src: string, dst: string, protocol: Protocol, port: number, overlayCidr: string): boolean {
  if (!rules.local.includes(dst) || !inCidr(src, overlayCidr)) return true;
  return rules.allows.some((a) => a.src === src && a.dst === dst && a.protocol === protocol && port >= a.startPort && port <= a.endPort);
}

function ipToInt(ip: string): number {
  return ip.split('.').reduce((n, o) => n * 256 + Number(o), 0);
}

export function inCidr(ip: string, cidr: string): boolean {
  const [net, bits] = cidr.split('/');
  const mask = Number(bits) === 0 ? 0 : 2 ** 32 - 2 ** (32 - Number(bits));
  return (ipToInt(ip) & mask) >>> 0 === (ipToInt(net!) & mask) >>> 0;
}

