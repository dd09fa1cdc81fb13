// The discovery record: what a cell agent puts in the discovery bucket (key = its cell id) after every apply and on
// every heartbeat, and what the discovery service answers DNS from. One owner for its shape, building and parsing.
//   { cellId, at, names: { "app.apps.internal": ["10.255.1.2", …], "0.app.apps.internal": [...] } }
import type { CellState } from './cell.ts';
import { type Dict, dict } from './dict.ts';
import { IPV4_PATTERN } from './ipv4.ts';

export type DiscoveryRecord = { cellId: string; at: string; names: Dict<string[]> };

/** The record of a cell's discovery names (from its desired state's `names` section), IPs sorted. */
export function discoveryRecordOf(cellId: string, at: Date, names: CellState['names']): DiscoveryRecord {
  const out = dict<string[]>();
  for (const [name, ips] of Object.entries(names)) out[name] = Object.keys(ips).sort();
  return { cellId, at: at.toISOString(), names: out };
}

/**
 * The names of a record read from the bucket: every name whose value is a list of IPv4 addresses (anything else in
 * a record — another shape, a name such as `__proto__` — is left out or an ordinary key); null when the record is
 * not JSON or has no names object.
 */
export function parseDiscoveryRecord(data: Uint8Array | string): Dict<string[]> | null {
  let r: unknown;
  try {
    r = JSON.parse(typeof data === 'string' ? data : new TextDecoder().decode(data));
  } catch {
    return null;
  }
  const names = typeof r === 'object' && r !== null ? (r as { names?: unknown }).names : undefined;
  if (typeof names !== 'object' || names === null || Array.isArray(names)) return null;
  const out = dict<string[]>();
  for (const [name, ips] of Object.entries(names)) {
    if (Array.isArray(ips) && ips.every((ip) => typeof ip === 'string' && IPV4_PATTERN.test(ip))) out[name] = ips as string[];
  }
  return out;
}
