// Takes docs/console.png: runs `netfold up` in a throwaway data dir, runs `netfold demo` against it, applies a small
// policy file so the graph has more than one edge, signs in to the console in headless Chromium with the admin
// token, and screenshots it once every cell has applied the latest revision. Stops everything it started.
//   node --import tsx scripts/console-screenshot.ts [docs/console.png]
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';

const outFile = process.argv[2] ?? 'docs/console.png';
const dir = mkdtempSync(join(tmpdir(), 'netfold-screenshot-'));
const ports = { nats: '14222', http: '14002', dns: '18053', lookup: '18054' };
const flags = ['--data-dir', dir, '--nats-port', ports.nats, '--http-port', ports.http, '--dns-port', ports.dns, '--discovery-http-port', ports.lookup];
const env = { ...process.env, NATS_URL: '', NETFOLD_LOG_FORMAT: 'json', NETFOLD_LOG_LEVEL: 'warn' };
const up = spawn(process.execPath, ['bin/netfold.mjs', 'up', ...flags], { stdio: ['ignore', 'ignore', 'pipe'], env });
const run = promisify(execFile);
try {
  await new Promise<void>((resolve, reject) => {
    let banner = '';
    up.stderr!.on('data', (d: Buffer) => {
      banner += d.toString();
      if (banner.includes('stop with Ctrl-C')) resolve();
    });
    up.once('exit', (code) => reject(new Error(`netfold up exited (${code}): ${banner}`)));
  });
  const api = `http://127.0.0.1:${ports.http}`;
  const cli = (...args: string[]) => run(process.execPath, ['bin/netfold.mjs', ...args, ...flags, '--api', api], { env });
  process.stderr.write((await cli('demo')).stdout);
  const file = join(dir, 'policies.yaml');
  writeFileSync(
    file,
    [
      'version: 1',
      'spaces:',
      '  demo-space:',
      '    frontend:',
      '      - { to: backend, ports: 8080 }',
      '      - { to: backend, ports: 9000-9100, protocol: udp }',
      '    backend:',
      '      - { to: frontend, ports: 443 }',
      '',
    ].join('\n'),
  );
  await cli('app', 'register', '--id', 'demo-reports', '--name', 'reports', '--space', 'demo-space', '--org', 'demo-org');
  writeFileSync(file, readFileSync(file, 'utf8') + '    reports:\n      - { to: backend, ports: 5432 }\n');
  process.stderr.write((await cli('apply', '-f', file, '--wait')).stdout);

  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 }, deviceScaleFactor: 1 });
    await page.goto(`${api}/ui`);
    await page.fill('#token', readFileSync(join(dir, 'admin.token'), 'utf8').trim());
    await page.click('#sign-in-form button');
    await page.waitForSelector('#graph [data-edge]');
    await page.waitForFunction(() => [...document.querySelectorAll('#cells tbody tr td:nth-child(5)')].every((td) => td.textContent === 'in sync'));
    await page.fill('#explain-source', 'frontend');
    await page.fill('#explain-destination', 'backend');
    await page.fill('#explain-port', '8080');
    await page.click('#explain-form button');
    await page.waitForSelector('#explain-result .verdict');
    await page.fill('#dry-run-file', 'version: 1\nspaces:\n  demo-space:\n    frontend:\n      - { to: backend, ports: 8443 }\n');
    await page.click('#dry-run-form button');
    await page.waitForFunction(() => document.getElementById('dry-run-result')!.textContent!.startsWith('dry run'));
    await page.screenshot({ path: outFile, fullPage: true });
    process.stderr.write(`wrote ${outFile}\n`);
  } finally {
    await browser.close();
  }
} finally {
  const exited = new Promise((resolve) => up.once('exit', resolve));
  up.kill('SIGTERM');
  await exited;
  rmSync(dir, { recursive: true, force: true });
}
