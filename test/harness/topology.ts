// Hosts for the topology tests, as network namespaces: each cell is a "host" namespace with its own underlay
// address, and containers are namespaces made ONLY by invoking netfold-cni the way a container runtime does (network
// configuration on stdin, CNI_* in the environment, the plugin running in the host's namespace).
//
//   kind 'vxlan'   a router namespace with one /30 link per host (172.31.<k>.0/30): hosts share no L2, only routes
//   kind 'routed'  a switch namespace with a bridge: every host on one L2 segment (172.30.0.0/24)
//
// The plugin in a host namespace reaches NATS through a management link to the test's namespace: the root side of
// every such link holds 169.254.77.1 (`MGMT_ADDRESS`, where the test's nats-server listens), the host side
// 169.254.77.<10+k>. Everything is removed at teardown (processes inside first, then the namespaces).
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { Test } from 'tap';
import { run } from '../../services/cell-agent/dataplane.ts';
import { firstLine, removeNetns } from './netns.ts';

export const MGMT_ADDRESS = '169.254.77.1';
/** How a runtime runs netfold-cni: the package's executable. */
export const NETFOLD_CNI = [process.execPath, new URL('../../bin/netfold-cni.mjs', import.meta.url).pathname];

export type Host = { cellId: string; ns: string; underlay: string; index: number };
export type CniCall = { stdout: string; code: number; body: Record<string, any> | undefined };

export type Underlay = {
  kind: 'vxlan' | 'routed';
  prefix: string;
  hosts: Map<string, Host>;
  /** A new host namespace on the underlay (with its management link). */
  addHost(cellId: string): Promise<Host>;
  /** Removes a host namespace (its containers must be gone). */
  removeHost(cellId: string): Promise<void>;
  /** An empty namespace for a container; returns its path (CNI_NETNS). */
  newContainerNs(name: string): Promise<string>;
  /** Runs netfold-cni (or another plugin from CNI_PATH) in a host's namespace, as a runtime does. */
  plugin(host: string, argv: string[], env: Record<string, string>, config: unknown): Promise<CniCall>;
  /** The test tool in a container namespace. */
  serve(nsPath: string, proto: 'tcp' | 'udp', ...ports: number[]): Promise<void>;
  probe(nsPath: string, ip: string, port: number, proto?: 'tcp' | 'udp', ms?: number): Promise<string>;
  /** `ip -j …` in a host namespace, parsed. */
  ipJson(host: string, ...args: string[]): Promise<Record<string, unknown>[]>;
  ipIn(host: string, ...args: string[]): Promise<string>;
};

const ip = (...args: string[]) => run('ip', args);
const NETNS_DIR = '/var/run/netns';

export async function buildUnderlay(t: Test, kind: 'vxlan' | 'routed', cellIds: string[]): Promise<Underlay> {
  const prefix = `nt${randomBytes(2).toString('hex')}`;
  const created: string[] = [];
  const children: ChildProcess[] = [];
  const hosts = new Map<string, Host>();
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const ns of created.reverse()) await removeNetns(ns);
  });
  const addNs = async (ns: string, forwarding: boolean) => {
    await ip('netns', 'add', ns);
    created.push(ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
    const sysctls = forwarding ? ['net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0'] : [];
    if (sysctls.length > 0) await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', ...sysctls]);
  };
  const hub = `${prefix}-${kind === 'vxlan' ? 'router' : 'switch'}`;
  await addNs(hub, kind === 'vxlan');
  if (kind === 'routed') {
    await ip('-n', hub, 'link', 'add', 'br0', 'type', 'bridge');
    await ip('-n', hub, 'link', 'set', 'br0', 'up');
  }
  let next = 1;
  const underlay: Underlay = {
    kind,
    prefix,
    hosts,
    async addHost(cellId) {
      const k = next++;
      const ns = `${prefix}-h${k}`;
      await addNs(ns, true);
      await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_tcp_loose=0']).catch(() => undefined);
      const [u, h] = [`${prefix}u${k}`, `${prefix}x${k}`];
      await ip('link', 'add', u, 'type', 'veth', 'peer', 'name', h);
      await ip('link', 'set', u, 'netns', ns);
      await ip('link', 'set', h, 'netns', hub);
      await ip('-n', ns, 'link', 'set', u, 'name', 'eth0');
      await ip('-n', ns, 'link', 'set', 'eth0', 'up');
      await ip('-n', hub, 'link', 'set', h, 'up');
      let address: string;
      if (kind === 'vxlan') {
        address = `172.31.${k}.2`;
        await ip('-n', ns, 'addr', 'add', `${address}/30`, 'dev', 'eth0');
        await ip('-n', hub, 'addr', 'add', `172.31.${k}.1/30`, 'dev', h);
        await ip('-n', ns, 'route', 'add', 'default', 'via', `172.31.${k}.1`);
      } else {
        address = `172.30.0.${k + 1}`;
        await ip('-n', ns, 'addr', 'add', `${address}/24`, 'dev', 'eth0');
        await ip('-n', hub, 'link', 'set', h, 'master', 'br0');
      }
      // The management link to the test's namespace (NATS).
      const [m, mh] = [`${prefix}m${k}`, `${prefix}n${k}`];
      await ip('link', 'add', m, 'type', 'veth', 'peer', 'name', mh);
      await ip('link', 'set', mh, 'netns', ns);
      await ip('addr', 'add', `${MGMT_ADDRESS}/32`, 'dev', m);
      await ip('link', 'set', m, 'up');
      await ip('route', 'add', `169.254.77.${10 + k}/32`, 'dev', m);
      await ip('-n', ns, 'addr', 'add', `169.254.77.${10 + k}/32`, 'dev', mh);
      await ip('-n', ns, 'link', 'set', mh, 'up');
      await ip('-n', ns, 'route', 'add', `${MGMT_ADDRESS}/32`, 'dev', mh);
      const host = { cellId, ns, underlay: address, index: k };
      hosts.set(cellId, host);
      return host;
    },
    async removeHost(cellId) {
      const host = hosts.get(cellId);
      if (!host) return;
      hosts.delete(cellId);
      await removeNetns(host.ns);
    },
    async newContainerNs(name) {
      const ns = `${prefix}-k${name}`;
      await addNs(ns, false);
      return `${NETNS_DIR}/${ns}`;
    },
    async plugin(hostId, argv, env, config) {
      const host = hosts.get(hostId)!;
      const child = spawn('ip', ['netns', 'exec', host.ns, ...argv], {
        env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...env },
        stdio: ['pipe', 'pipe', 'pipe'],
      });
      children.push(child);
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (d: Buffer) => out.push(d));
      child.stderr.on('data', (d: Buffer) => err.push(d));
      child.stdin.end(JSON.stringify(config));
      const code = await new Promise<number>((resolve) => child.once('close', (c) => resolve(c ?? -1)));
      const stdout = Buffer.concat(out).toString();
      let body: Record<string, any> | undefined;
      try {
        body = stdout.trim() === '' ? undefined : JSON.parse(stdout);
      } catch {
        body = { unparsable: stdout, stderr: Buffer.concat(err).toString().slice(0, 2000) };
      }
      return { stdout, code, body };
    },
    async serve(nsPath, proto, ...ports) {
      const ns = nsPath.slice(NETNS_DIR.length + 1);
      const child = spawn(
        'ip',
        ['netns', 'exec', ns, process.execPath, 'test/harness/tcp-tool.mjs', proto === 'tcp' ? 'serve' : 'serve-udp', ...ports.map(String)],
        {
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      children.push(child);
      const line = await firstLine(child);
      if (line !== 'ready') throw new Error(`server in ${ns} did not start: ${line}`);
    },
    async probe(nsPath, addr, port, proto = 'tcp', ms = 1500) {
      const ns = nsPath.slice(NETNS_DIR.length + 1);
      const child = spawn(
        'ip',
        ['netns', 'exec', ns, process.execPath, 'test/harness/tcp-tool.mjs', proto === 'tcp' ? 'probe' : 'probe-udp', addr, String(port), String(ms)],
        {
          stdio: ['ignore', 'pipe', 'inherit'],
        },
      );
      children.push(child);
      return firstLine(child);
    },
    async ipJson(hostId, ...args) {
      const text = await ip('-n', hosts.get(hostId)!.ns, '-j', ...args);
      return text.trim() === '' ? [] : (JSON.parse(text) as Record<string, unknown>[]);
    },
    ipIn: (hostId, ...args) => ip('-n', hosts.get(hostId)!.ns, ...args),
  };
  for (const cellId of cellIds) await underlay.addHost(cellId);
  return underlay;
}
