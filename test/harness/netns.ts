// Cells and containers as network namespaces, for end-to-end tests that prove policy with real TCP connections.
// Each cell is a router namespace; each container a namespace with one veth to its cell (a /32 and a default route
// through the cell, so even same-cell traffic is forwarded through the cell's nftables). Cells are linked by a
// veth pair with routes to each other's container range. Everything is removed at teardown.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { run } from '../../services/cell-agent/dataplane.ts';
import { dict } from '../../projections/dict.ts';

/** `hostIf`: the container's veth end in its cell's namespace. */
export type NetContainer = { ns: string; ip: string; cell: string; hostIf: string };
export type Net = {
  prefix: string;
  cellNs: (cell: string) => string;
  containers: Record<string, NetContainer>;
  /** Runs the TCP tool inside a namespace. */
  tool(ns: string, ...args: string[]): ChildProcess;
  serve(container: string, ...ports: number[]): Promise<void>;
  probe(from: string, to: string, port: number, ms?: number): Promise<string>;
  /** Like probe, to any address (e.g. an IPv6 one). */
  probeAddr(from: string, addr: string, port: number, ms?: number): Promise<string>;
  /**
   * Connection attempts from `from` to `to`:port, again and again, until stopped: resolves once the first attempt
   * is done; `stop()` resolves with the counts of every outcome.
   */
  loop(from: string, to: string, port: number): Promise<{ stop(): Promise<Record<'open' | 'refused' | 'timeout' | 'error', number>> }>;
  hold(from: string, to: string, port: number): Promise<{ send(line: string): Promise<string>; close(): void }>;
};

export const isRoot = () => typeof process.getuid === 'function' && process.getuid() === 0;

const ip = (...args: string[]) => run('ip', args);

/** Removes a test's network namespace, killing what still runs in it first (a namespace with processes stays). */
export async function removeNetns(ns: string): Promise<void> {
  const pids = (await run('ip', ['netns', 'pids', ns]).catch(() => '')).split('\n').filter(Boolean);
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // already gone
    }
  }
  await ip('netns', 'del', ns).catch(() => undefined);
}

/** cells: { A: 1, B: 2 } -> container range 10.255.<n>.0/24, gateway .1; containers: name -> [cell, ip]. */
export async function buildNet(t: Test, cells: Record<string, number>, containers: Record<string, [string, string]>): Promise<Net> {
  const prefix = `nf${randomBytes(2).toString('hex')}`;
  const cellNs = (cell: string) => `${prefix}-c${cell}`;
  const created: string[] = [];
  const children: ChildProcess[] = [];
  t.teardown(async () => {
    for (const c of children) c.kill('SIGKILL');
    for (const ns of created.reverse()) await removeNetns(ns);
  });
  const addNs = async (ns: string) => {
    await ip('netns', 'add', ns);
    created.push(ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
  };
  for (const [cell, n] of Object.entries(cells)) {
    const ns = cellNs(cell);
    await addNs(ns);
    await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
    await run('ip', ['netns', 'exec', ns, 'sysctl', '-q', '-w', 'net.netfilter.nf_conntrack_tcp_loose=0']).catch(() => undefined);
    void n;
  }
  const out = dict<NetContainer>(); // keyed by container names
  let k = 0;
  for (const [name, [cell, addr]] of Object.entries(containers)) {
    const ns = `${prefix}-${name}`;
    await addNs(ns);
    const host = `${prefix}h${k}`;
    const peer = `${prefix}p${k++}`;
    const gw = `10.255.${cells[cell]}.1`;
    await ip('link', 'add', host, 'type', 'veth', 'peer', 'name', peer);
    await ip('link', 'set', host, 'netns', cellNs(cell));
    await ip('link', 'set', peer, 'netns', ns);
    await ip('-n', ns, 'link', 'set', peer, 'name', 'eth0');
    await ip('-n', ns, 'addr', 'add', `${addr}/32`, 'dev', 'eth0');
    await ip('-n', ns, 'link', 'set', 'eth0', 'up');
    await ip('-n', ns, 'route', 'add', gw, 'dev', 'eth0');
    await ip('-n', ns, 'route', 'add', 'default', 'via', gw);
    await ip('-n', cellNs(cell), 'addr', 'add', `${gw}/32`, 'dev', host);
    await ip('-n', cellNs(cell), 'link', 'set', host, 'up');
    await ip('-n', cellNs(cell), 'route', 'add', `${addr}/32`, 'dev', host);
    out[name] = { ns, ip: addr, cell, hostIf: host };
  }
  const names = Object.keys(cells);
  for (let i = 0; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const [a, b] = [names[i]!, names[j]!];
      const [la, lb] = [`${prefix}l${i}${j}`, `${prefix}l${j}${i}`];
      const net = `10.254.${i * 16 + j}`;
      await ip('link', 'add', la, 'type', 'veth', 'peer', 'name', lb);
      await ip('link', 'set', la, 'netns', cellNs(a));
      await ip('link', 'set', lb, 'netns', cellNs(b));
      await ip('-n', cellNs(a), 'addr', 'add', `${net}.1/30`, 'dev', la);
      await ip('-n', cellNs(b), 'addr', 'add', `${net}.2/30`, 'dev', lb);
      await ip('-n', cellNs(a), 'link', 'set', la, 'up');
      await ip('-n', cellNs(b), 'link', 'set', lb, 'up');
      await ip('-n', cellNs(a), 'route', 'add', `10.255.${cells[b]}.0/24`, 'via', `${net}.2`);
      await ip('-n', cellNs(b), 'route', 'add', `10.255.${cells[a]}.0/24`, 'via', `${net}.1`);
    }
  }
  const tool = (ns: string, ...args: string[]) => {
    const child = spawn('ip', ['netns', 'exec', ns, process.execPath, 'test/harness/tcp-tool.mjs', ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    children.push(child);
    return child;
  };
  return {
    prefix,
    cellNs,
    containers: out,
    tool,
    async serve(container, ...ports) {
      const line = await firstLine(tool(out[container]!.ns, 'serve', ...ports.map(String)));
      if (line !== 'ready') throw new Error(`server in ${container} did not start: ${line}`);
    },
    async probe(from, to, port, ms = 1500) {
      return firstLine(tool(out[from]!.ns, 'probe', out[to]!.ip, String(port), String(ms)));
    },
    async probeAddr(from, addr, port, ms = 1500) {
      return firstLine(tool(out[from]!.ns, 'probe', addr, String(port), String(ms)));
    },
    async loop(from, to, port) {
      const child = tool(out[from]!.ns, 'loop', out[to]!.ip, String(port), '1000');
      const lines = createInterface({ input: child.stdout! });
      const next = () =>
        new Promise<string>((resolve) => {
          lines.once('line', resolve);
          child.once('close', () => resolve('exited'));
        });
      const started = await next();
      if (started !== 'started') throw new Error(`loop ${from} -> ${to}:${port}: ${started}`);
      return {
        async stop() {
          const summary = next();
          child.stdin!.write('stop\n');
          return JSON.parse(await summary) as Record<'open' | 'refused' | 'timeout' | 'error', number>;
        },
      };
    },
    async hold(from, to, port) {
      const child = tool(out[from]!.ns, 'hold', out[to]!.ip, String(port));
      const lines = createInterface({ input: child.stdout! });
      const queue: string[] = [];
      let wake: (() => void) | undefined;
      lines.on('line', (l) => {
        queue.push(l);
        wake?.();
      });
      const next = async (ms = 5000) => {
        const deadline = Date.now() + ms;
        while (queue.length === 0) {
          const left = deadline - Date.now();
          if (left <= 0) return 'timeout';
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, left);
          });
        }
        return queue.shift()!;
      };
      const first = await next();
      if (first !== 'connected') throw new Error(`hold ${from} -> ${to}:${port}: ${first}`);
      return {
        async send(line) {
          child.stdin!.write(line + '\n');
          return next();
        },
        close: () => child.kill('SIGKILL'),
      };
    },
  };
}

/**
 * The first line a child prints, or `exited` when it ends without one. Waits for `close` (its output read to the end),
 * not `exit`: a child's exit can be seen before the line it printed just before exiting (a probe read as "exited").
 */
export function firstLine(child: ChildProcess): Promise<string> {
  return new Promise<string>((resolve) => {
    const rl = createInterface({ input: child.stdout! });
    rl.once('line', (l) => {
      rl.close();
      resolve(l);
    });
    child.once('close', () => resolve('exited'));
  });
}
