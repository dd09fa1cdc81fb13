// Network drivers: what builds the path between cells, one interface, chosen per deployment (`--network-driver`).
// Each driver turns the topology (every active cell's range and underlay address, from the cell's desired state)
// into kernel objects — links, routes, neighbour and forwarding entries — and makes the kernel hold exactly those:
// it reads back what it owns (`ip -j`, `bridge -j`), computes the difference (pure: `planNetwork`) and sends only
// that difference in one `ip -batch` and one `bridge -batch` call. The same reconcile serves a topology change
// (incremental: a cell joining adds its route, neighbour and forwarding entry, nothing else is touched) and a drift
// check (a deleted route or entry comes back; anything of ours that should not be there goes).
//
//   vxlan   one VXLAN device per cell (`nfvx0`: VNI, UDP port, MTU configurable; local = the cell's underlay address,
//           no learning). Its MAC and VTEP address are derived from the cell's range (02:4e + the network address;
//           the network address as a /32), so every cell computes every other cell's without another exchange. Per
//           remote cell: a route `<range> via <its VTEP> dev nfvx0 onlink`, a permanent neighbour `<its VTEP> →
//           <its MAC>` and a forwarding entry `<its MAC> dst <its underlay address>`. Works across hosts that share
//           no L2 (the underlay routes the UDP packets).
//   routed  per remote cell a route `<range> via <its underlay address>` (hosts on one L2 segment).
//   none    nothing: another system plumbs the network; netfold enforces policy only.
//
// Routes are tagged with protocol 211 (ours): only those are read back, changed or removed.
import { NetfoldError } from '../../runtime/errors.ts';
import { CIDR_PATTERN, IPV4_PATTERN, cidrRange, cidrWithin, intToIp, isCanonicalCidr } from '../../projections/ipv4.ts';
import type { TopologyEntry } from '../../projections/cell.ts';
import { run } from './dataplane.ts';

const NETWORK_DRIVERS = ['none', 'routed', 'vxlan'] as const;
export type NetworkDriverKind = (typeof NETWORK_DRIVERS)[number];

/** The route protocol number netfold's routes carry (`ip route … proto 211`): what it owns. */
export const ROUTE_PROTO = 211;

class NetworkError extends NetfoldError {
  constructor(message: string, code = 'network-failed', cause?: unknown) {
    super(message, code, 500, true, cause);
    this.name = 'NetworkError';
  }
}

/** This cell and the others, as the driver routes them. `self` is undefined while the cell has no underlay address. */
export type Topology = { self: (TopologyEntry & { cellId: string }) | undefined; peers: Map<string, TopologyEntry> };

/**
 * The topology of one cell from its desired state's `topology` section. An entry that is not a canonical range inside
 * the overlay with an IPv4 underlay address is left out and named in `invalid` (never programmed), as is a second
 * cell claiming an underlay address or overlapping range already taken (the planner never sends either).
 */
export function topologyOf(entries: Readonly<Record<string, TopologyEntry>>, cellId: string, overlayCidr: string): { topology: Topology; invalid: string[] } {
  const peers = new Map<string, TopologyEntry>();
  const invalid: string[] = [];
  let self: Topology['self'];
  const seen: TopologyEntry[] = [];
  for (const id of Object.keys(entries).sort()) {
    const e = entries[id] as Partial<TopologyEntry> | undefined;
    const ok =
      typeof e?.subnet === 'string' &&
      typeof e.underlay === 'string' &&
      CIDR_PATTERN.test(e.subnet) &&
      isCanonicalCidr(e.subnet) &&
      cidrWithin(overlayCidr, e.subnet) &&
      IPV4_PATTERN.test(e.underlay) &&
      !seen.some((s) => s.underlay === e.underlay || s.subnet === e.subnet);
    if (!ok) {
      invalid.push(id);
      continue;
    }
    const entry = { subnet: e.subnet!, underlay: e.underlay! };
    seen.push(entry);
    if (id === cellId) self = { cellId: id, ...entry };
    else peers.set(id, entry);
  }
  return { topology: { self, peers }, invalid };
}

// ---- what the kernel should hold ---------------------------------------------------------------------------------

export type VxlanOptions = { device: string; vni: number; port: number; mtu: number };
export const DEFAULT_VXLAN: VxlanOptions = { device: 'nfvx0', vni: 4211, port: 4789, mtu: 1450 };

export type LinkSpec = { name: string; vni: number; port: number; mtu: number; local: string; mac: string; address: string };
export type RouteSpec = { dst: string; via: string; dev: string | null; onlink: boolean };
export type NeighSpec = { ip: string; mac: string; dev: string };
export type FdbSpec = { mac: string; dst: string; dev: string };

/** Everything of ours in the kernel: the desired or the read-back state. */
export type NetworkObjects = { link: LinkSpec | null; routes: RouteSpec[]; neighs: NeighSpec[]; fdb: FdbSpec[] };

/** The VXLAN MAC of the cell holding `subnet`: 02:4e (locally administered) and its network address. */
export function vtepMacOf(subnet: string): string {
  const n = cidrRange(subnet).first;
  return ['02', '4e', ...[n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].map((b) => b.toString(16).padStart(2, '0'))].join(':');
}

/** The VTEP address of the cell holding `subnet`: its network address (never a container's). */
export const vtepAddressOf = (subnet: string): string => intToIp(cidrRange(subnet).first);

/** What a driver wants in the kernel for a topology. `vxlan` needs the cell's own entry (its underlay address). */
export function desiredObjects(kind: NetworkDriverKind, topology: Topology, vxlan: VxlanOptions = DEFAULT_VXLAN): NetworkObjects {
  const none: NetworkObjects = { link: null, routes: [], neighs: [], fdb: [] };
  const peers = [...topology.peers.values()].sort((a, b) => cidrRange(a.subnet).first - cidrRange(b.subnet).first);
  if (kind === 'none') return none;
  if (kind === 'routed') return { ...none, routes: peers.map((p) => ({ dst: p.subnet, via: p.underlay, dev: null, onlink: false })) };
  const self = topology.self;
  if (!self) return none;
  const dev = vxlan.device;
  return {
    link: {
      name: dev,
      vni: vxlan.vni,
      port: vxlan.port,
      mtu: vxlan.mtu,
      local: self.underlay,
      mac: vtepMacOf(self.subnet),
      address: vtepAddressOf(self.subnet),
    },
    routes: peers.map((p) => ({ dst: p.subnet, via: vtepAddressOf(p.subnet), dev, onlink: true })),
    neighs: peers.map((p) => ({ ip: vtepAddressOf(p.subnet), mac: vtepMacOf(p.subnet), dev })),
    fdb: peers.map((p) => ({ mac: vtepMacOf(p.subnet), dst: p.underlay, dev })),
  };
}

// ---- the difference --------------------------------------------------------------------------------------------------

/** The commands that turn `actual` into `desired`: `ip -batch` lines and `bridge -batch` lines, and how many objects change. */
export type NetworkPlan = { ip: string[]; bridge: string[]; changes: number; recreateLink: boolean };

const sameLink = (a: LinkSpec, b: LinkSpec) =>
  a.name === b.name && a.vni === b.vni && a.port === b.port && a.mtu === b.mtu && a.local === b.local && a.mac === b.mac && a.address === b.address;
const routeKey = (r: RouteSpec) => `${r.dst}|${r.via}|${r.dev ?? ''}|${r.onlink}`;
const neighKey = (n: NeighSpec) => `${n.ip}|${n.mac}|${n.dev}`;
const fdbKey = (f: FdbSpec) => `${f.mac}|${f.dst}|${f.dev}`;

function routeLine(verb: 'replace' | 'del', r: RouteSpec): string {
  if (verb === 'del') return `route del ${r.dst} proto ${ROUTE_PROTO}`;
  return `route replace ${r.dst} via ${r.via}${r.dev ? ` dev ${r.dev}` : ''}${r.onlink ? ' onlink' : ''} proto ${ROUTE_PROTO}`;
}

/**
 * The difference between what the kernel holds of ours and what it should. Pure. A link whose attributes differ is
 * deleted and created again (a VXLAN device cannot change its VNI or port in place); its routes, neighbours and
 * forwarding entries went with it, so all wanted ones are added again.
 */
export function planNetwork(desired: NetworkObjects, actual: NetworkObjects): NetworkPlan {
  const ip: string[] = [];
  const bridge: string[] = [];
  let changes = 0;
  let recreateLink = false;
  let current = actual;
  if (actual.link && (!desired.link || !sameLink(actual.link, desired.link))) {
    ip.push(`link del ${actual.link.name}`);
    changes += 1;
    current = { link: null, routes: actual.routes.filter((r) => r.dev === null || r.dev !== actual.link!.name), neighs: [], fdb: [] };
  }
  if (desired.link && (!current.link || !sameLink(current.link, desired.link))) {
    const l = desired.link;
    recreateLink = true;
    changes += 1;
    ip.push(
      `link add ${l.name} type vxlan id ${l.vni} local ${l.local} dstport ${l.port} nolearning`,
      `link set ${l.name} address ${l.mac} mtu ${l.mtu} up`,
      `address add ${l.address}/32 dev ${l.name}`,
    );
    current = { ...current, link: l, neighs: [], fdb: [], routes: current.routes.filter((r) => r.dev !== l.name) };
  }
  const diff = <T>(want: T[], have: T[], key: (x: T) => string) => {
    const wantKeys = new Set(want.map(key));
    const haveKeys = new Set(have.map(key));
    return { add: want.filter((x) => !haveKeys.has(key(x))), del: have.filter((x) => !wantKeys.has(key(x))) };
  };
  // Neighbours and forwarding entries before the routes that use them; deletions of routes before their neighbours.
  const n = diff(desired.neighs, current.neighs, neighKey);
  const f = diff(desired.fdb, current.fdb, fdbKey);
  const r = diff(desired.routes, current.routes, routeKey);
  const wantedDst = new Set(desired.routes.map((x) => x.dst));
  for (const x of r.del) if (!wantedDst.has(x.dst)) ip.push(routeLine('del', x)); // a changed route is replaced below
  for (const x of n.del) ip.push(`neigh del ${x.ip} dev ${x.dev}`);
  for (const x of n.add) ip.push(`neigh replace ${x.ip} lladdr ${x.mac} dev ${x.dev} nud permanent`);
  for (const x of f.del) bridge.push(`fdb del ${x.mac} dev ${x.dev} dst ${x.dst} self`);
  for (const x of f.add) bridge.push(`fdb append ${x.mac} dev ${x.dev} dst ${x.dst} self permanent`);
  for (const x of r.add) ip.push(routeLine('replace', x));
  changes += n.add.length + n.del.length + f.add.length + f.del.length + r.add.length + r.del.length;
  return { ip, bridge, changes, recreateLink };
}

// ---- reading the kernel back -----------------------------------------------------------------------------------------

type Json = Record<string, unknown>;
const asList = (text: string): Json[] => {
  const v: unknown = text.trim() === '' ? [] : JSON.parse(text);
  return Array.isArray(v) ? (v.filter((x) => typeof x === 'object' && x !== null) as Json[]) : [];
};

/** Our routes from `ip -j route show proto 211`. */
export function parseRoutes(text: string): RouteSpec[] {
  return asList(text)
    .filter((r) => typeof r.dst === 'string' && typeof r.gateway === 'string')
    .map((r) => ({
      dst: (r.dst as string).includes('/') ? (r.dst as string) : `${r.dst as string}/32`,
      via: r.gateway as string,
      dev: null as string | null,
      onlink: Array.isArray(r.flags) && r.flags.includes('onlink'),
      rawDev: typeof r.dev === 'string' ? r.dev : null,
    }))
    .map(({ rawDev, ...r }) => ({ ...r, dev: r.onlink ? rawDev : null }));
}

/** Permanent neighbours from `ip -j neigh show dev D`. */
export function parseNeighs(text: string, dev: string): NeighSpec[] {
  return asList(text)
    .filter((n) => typeof n.dst === 'string' && typeof n.lladdr === 'string' && Array.isArray(n.state) && n.state.includes('PERMANENT'))
    .map((n) => ({ ip: n.dst as string, mac: (n.lladdr as string).toLowerCase(), dev }));
}

/** Forwarding entries with a remote destination from `bridge -j fdb show dev D`. */
export function parseFdb(text: string, dev: string): FdbSpec[] {
  return asList(text)
    .filter((f) => typeof f.mac === 'string' && typeof f.dst === 'string')
    .map((f) => ({ mac: (f.mac as string).toLowerCase(), dst: f.dst as string, dev }));
}

/** The VXLAN link from `ip -j -d address show dev D` (null when absent or not a VXLAN device). */
export function parseLink(text: string): LinkSpec | null {
  const l = asList(text)[0];
  const info = l?.linkinfo as Json | undefined;
  const data = info?.info_data as Json | undefined;
  if (!l || info?.info_kind !== 'vxlan' || !data) return null;
  const addrs = (Array.isArray(l.addr_info) ? (l.addr_info as Json[]) : []).filter((a) => a.family === 'inet');
  const v4 = addrs.find((a) => a.prefixlen === 32);
  return {
    name: String(l.ifname),
    vni: Number(data.id),
    port: Number(data.port),
    mtu: Number(l.mtu),
    local: String(data.local ?? ''),
    mac: String(l.address ?? '').toLowerCase(),
    // An IPv4 address other than our one /32, or a link that is down, reads as "not ours": it is made again.
    address: addrs.length === 1 && v4 && Array.isArray(l.flags) && l.flags.includes('UP') ? String(v4.local) : '',
  };
}

// ---- the drivers --------------------------------------------------------------------------------------------------------

export interface NetworkDriver {
  readonly kind: NetworkDriverKind;
  /**
   * Makes the kernel hold exactly what `topology` needs of this driver: reads back what it owns, applies only the
   * difference; returns how many objects it changed (0: the kernel already held it).
   */
  reconcile(topology: Topology): Promise<number>;
}

/** `none`: another system plumbs the network. */
class NoNetworkDriver implements NetworkDriver {
  readonly kind = 'none';
  async reconcile(): Promise<number> {
    return 0;
  }
}

export type KernelNetworkOptions = { kind: 'routed' | 'vxlan'; netns?: string; vxlan?: VxlanOptions };

/** `routed` and `vxlan`, through iproute2 (in `netns` when given). */
class KernelNetworkDriver implements NetworkDriver {
  readonly kind: 'routed' | 'vxlan';
  readonly #ns: string[];
  readonly #vxlan: VxlanOptions;
  #forwarding = false;

  constructor(o: KernelNetworkOptions) {
    this.kind = o.kind;
    this.#ns = o.netns ? ['-n', o.netns] : [];
    this.#vxlan = o.vxlan ?? DEFAULT_VXLAN;
  }

  async reconcile(topology: Topology): Promise<number> {
    await this.#ensureForwarding();
    const desired = desiredObjects(this.kind, topology, this.#vxlan);
    const plan = planNetwork(desired, await this.read());
    if (plan.changes === 0) return 0;
    try {
      // -force: one failing line does not hold the others back; the failure is reported and the next check retries it.
      if (plan.ip.length > 0) await run('ip', [...this.#ns, '-force', '-batch', '-'], plan.ip.join('\n') + '\n');
      if (plan.bridge.length > 0) await run('bridge', [...this.#ns, '-force', '-batch', '-'], plan.bridge.join('\n') + '\n');
    } catch (err) {
      throw new NetworkError(`programming the ${this.kind} network failed: ${(err as Error).message}`, 'network-failed', err);
    }
    return plan.changes;
  }

  /** What the kernel holds of ours now. */
  async read(): Promise<NetworkObjects> {
    const dev = this.#vxlan.device;
    const routes = parseRoutes(await run('ip', [...this.#ns, '-j', 'route', 'show', 'proto', String(ROUTE_PROTO)]));
    const linkText = await run('ip', [...this.#ns, '-j', '-d', 'address', 'show', 'dev', dev]).catch(() => '[]');
    const link = parseLink(linkText);
    if (!link) return { link: linkText.trim() === '[]' ? null : await this.#foreignLink(dev), routes, neighs: [], fdb: [] };
    const neighs = parseNeighs(await run('ip', [...this.#ns, '-j', 'neigh', 'show', 'dev', dev]), dev);
    const fdb = parseFdb(await run('bridge', [...this.#ns, '-j', 'fdb', 'show', 'dev', dev]), dev);
    return { link, routes, neighs, fdb };
  }

  /** A device of our name that is not ours as it should be: reported as a link to delete (name only). */
  async #foreignLink(dev: string): Promise<LinkSpec | null> {
    const exists = await run('ip', [...this.#ns, 'link', 'show', 'dev', dev]).then(
      () => true,
      () => false,
    );
    return exists ? { name: dev, vni: -1, port: -1, mtu: -1, local: '', mac: '', address: '' } : null;
  }

  /** A cell routes for its containers: IPv4 forwarding on (once per process; a reboot resets it, a restart sets it again). */
  async #ensureForwarding(): Promise<void> {
    if (this.#forwarding) return;
    const sysctl = ['sysctl', '-q', '-w', 'net.ipv4.ip_forward=1'];
    await run(this.#ns.length > 0 ? 'ip' : sysctl[0]!, this.#ns.length > 0 ? ['netns', 'exec', this.#ns[1]!, ...sysctl] : sysctl.slice(1));
    this.#forwarding = true;
  }
}

export function createNetworkDriver(kind: NetworkDriverKind, o: { netns?: string; vxlan?: VxlanOptions } = {}): NetworkDriver {
  if (kind === 'none') return new NoNetworkDriver();
  return new KernelNetworkDriver({ kind, ...o });
}
