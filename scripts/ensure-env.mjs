#!/usr/bin/env node
// Makes a fresh machine ready to run netfold: installs node modules when they are missing and, when running as
// root, the Debian packages the product and its tests need (nats-server; nftables, dnsutils and the reference CNI
// plugins for tests).
// Plain JavaScript with no dependencies: it runs before anything is installed.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const forTests = process.argv.includes('--for=test');

function onPath(command) {
  return spawnSync('sh', ['-c', `command -v ${command}`], { stdio: 'ignore' }).status === 0;
}

function run(command, args) {
  console.error(`netfold: running ${command} ${args.join(' ')}`);
  execFileSync(command, args, { stdio: ['ignore', 'inherit', 'inherit'], cwd: root });
}

if (!existsSync(join(root, 'node_modules', '.package-lock.json'))) {
  run('npm', existsSync(join(root, 'package-lock.json')) ? ['ci', '--no-audit', '--no-fund'] : ['install', '--no-audit', '--no-fund']);
}

const wanted = [{ command: 'nats-server', pkg: 'nats-server' }];
if (forTests) {
  wanted.push({ command: 'nft', pkg: 'nftables' }, { command: 'ip', pkg: 'iproute2' }, { command: 'dig', pkg: 'dnsutils' });
  // The reference CNI plugins (portmap to chain netfold-cni with; bridge and host-local for bench:cni) and iptables, which portmap drives.
  wanted.push({ command: '/usr/lib/cni/portmap', pkg: 'containernetworking-plugins' }, { command: 'iptables', pkg: 'iptables' });
  // ping, for the egress tests' ICMP rules (security groups allow ICMP by type and code).
  wanted.push({ command: 'ping', pkg: 'iputils-ping' });
  // Headless Chromium for the web console's browser test (test/console.test.ts drives it with playwright-core).
  wanted.push({ command: 'chromium', pkg: 'chromium' });
}
const missing = wanted.filter((w) => !onPath(w.command));
if (missing.length > 0) {
  const pkgs = missing.map((m) => m.pkg);
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  if (!isRoot || !onPath('apt-get')) {
    console.error(`netfold: missing ${missing.map((m) => m.command).join(', ')}. Install with: sudo apt-get install -y ${pkgs.join(' ')}`);
    process.exit(1);
  }
  run('apt-get', ['update', '-qq']);
  run('apt-get', ['install', '-y', '-qq', ...pkgs]);
}
