// The kernel side of netfold-cni, through iproute2: a veth pair from the host (the cell) into the container's network
// namespace, the container's address as a /32 with a default route via the cell's gateway address, and on the host
// side the gateway address and a /32 route to the container (so even same-cell traffic is routed through the cell,
// where the policy dataplane's forward hook sees it). Commands inside the container's namespace run through
// `nsenter --net=<CNI_NETNS>` (any path the runtime gives, not only a name under /var/run/netns).
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { run } from '../services/cell-agent/dataplane.ts';

export type Plumbing = { netns: string; ifname: string; hostIf: string; ip: string; gateway: string };

export interface LinkOps {
  /** Creates the pair and addresses; returns both ends' MACs. Leaves nothing behind when it fails. */
  add(p: Plumbing): Promise<{ hostMac: string; mac: string }>;
  /** Removes the pair (the host end takes the container end with it); true when there was something to remove. */
  del(p: { netns: string; ifname: string; hostIf: string }): Promise<boolean>;
  /** What is not as `add` left it, or undefined when all is. */
  check(p: Plumbing): Promise<string | undefined>;
}

/** The host end's name: `nf` and 12 hex digits of the container id and interface name (15 characters at most). */
export function hostIfOf(containerId: string, ifname: string): string {
  return `nf${createHash('sha256').update(`${containerId}\u0000${ifname}`).digest('hex').slice(0, 12)}`;
}

type Json = Record<string, unknown>;
const list = (text: string): Json[] => (text.trim() === '' ? [] : (JSON.parse(text) as Json[]));

export class IpLinkOps implements LinkOps {
  #inNs(netns: string, args: string[], input?: string): Promise<string> {
    return run('nsenter', [`--net=${netns}`, 'ip', ...args], input);
  }

  async add(p: Plumbing): Promise<{ hostMac: string; mac: string }> {
    const peer = `${p.hostIf.slice(0, 13)}p`; // not a hex digit: never another pair's host end
    await run('ip', ['link', 'del', p.hostIf]).catch(() => undefined); // a half-made pair from an earlier ADD
    await run('ip', ['link', 'add', p.hostIf, 'type', 'veth', 'peer', 'name', peer]);
    try {
      await run('ip', ['link', 'set', peer, 'netns', p.netns]);
      const inside = [
        `link set ${peer} name ${p.ifname}`,
        `address add ${p.ip}/32 dev ${p.ifname}`,
        `link set ${p.ifname} up`,
        'link set lo up',
        `route add ${p.gateway} dev ${p.ifname} scope link`,
        `route add default via ${p.gateway} dev ${p.ifname}`,
      ];
      await this.#inNs(p.netns, ['-batch', '-'], inside.join('\n') + '\n');
      const host = [`address add ${p.gateway}/32 dev ${p.hostIf}`, `link set ${p.hostIf} up`, `route add ${p.ip}/32 dev ${p.hostIf} scope link`];
      await run('ip', ['-batch', '-'], host.join('\n') + '\n');
      const hostMac = String(list(await run('ip', ['-j', 'link', 'show', 'dev', p.hostIf]))[0]?.address ?? '');
      const mac = String(list(await this.#inNs(p.netns, ['-j', 'link', 'show', 'dev', p.ifname]))[0]?.address ?? '');
      return { hostMac, mac };
    } catch (err) {
      await run('ip', ['link', 'del', p.hostIf]).catch(() => undefined);
      throw err;
    }
  }

  async del(p: { netns: string; ifname: string; hostIf: string }): Promise<boolean> {
    // The container end goes with the host end (a veth pair dies whole); nothing else in the namespace is ours.
    return run('ip', ['link', 'del', p.hostIf]).then(
      () => true,
      (err: Error) => {
        if (/Cannot find device|does not exist/.test(err.message)) return false; // DEL of something unknown succeeds
        throw err;
      },
    );
  }

  async check(p: Plumbing): Promise<string | undefined> {
    if (!existsSync(p.netns)) return `the namespace ${p.netns} does not exist`;
    const host = list(await run('ip', ['-j', 'address', 'show', 'dev', p.hostIf]).catch(() => '[]'))[0];
    if (!host) return `the host end ${p.hostIf} of the veth pair is missing`;
    if (!hasAddress(host, p.gateway) || !(host.flags as string[] | undefined)?.includes('UP')) return `${p.hostIf} is down or lacks ${p.gateway}/32`;
    const toContainer = list(await run('ip', ['-j', 'route', 'show', `${p.ip}/32`]));
    if (!toContainer.some((r) => r.dev === p.hostIf)) return `the host has no route to ${p.ip} via ${p.hostIf}`;
    const inside = list(await this.#inNs(p.netns, ['-j', 'address', 'show', 'dev', p.ifname]).catch(() => '[]'))[0];
    if (!inside) return `${p.ifname} is missing in ${p.netns}`;
    if (!hasAddress(inside, p.ip)) return `${p.ifname} lacks ${p.ip}/32`;
    const routes = list(await this.#inNs(p.netns, ['-j', 'route', 'show', 'default']));
    if (!routes.some((r) => r.gateway === p.gateway && r.dev === p.ifname)) return `no default route via ${p.gateway} on ${p.ifname}`;
    return undefined;
  }
}

function hasAddress(link: Json, ip: string): boolean {
  const addrs = Array.isArray(link.addr_info) ? (link.addr_info as Json[]) : [];
  return addrs.some((a) => a.family === 'inet' && a.local === ip && a.prefixlen === 32);
}
