// Readable logs: one coloured human line per entry on a terminal, pino JSON lines everywhere else, either forced
// with --log-format / NETFOLD_LOG_FORMAT. The terminal case runs under a real pseudo-terminal (`script`).
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { prettyLine, resolveLogFormat } from '../runtime/logger.ts';
import { ConfigError } from '../runtime/errors.ts';

const ESC = '\x1b[';
const line = JSON.stringify({
  level: 40,
  time: '2026-11-29T10:00:01.250Z',
  pid: 1,
  name: 'netfold',
  service: 'policy-writer',
  component: 'http',
  revision: 7,
  note: 'two words',
  msg: 'append-ignored-by-fold',
});

t.test('a pretty line: time, level, where, message, then the fields', async (t) => {
  const plain = prettyLine(line, false);
  t.equal(plain, '10:00:01.250  WARN   policy-writer/http  append-ignored-by-fold  revision=7 note="two words"\n');
  t.notOk(plain.includes(ESC), 'no colour codes when colour is off');
  const coloured = prettyLine(line, true);
  t.ok(coloured.includes(`${ESC}33mWARN `), 'warn is yellow');
  t.equal(coloured.replace(/\x1b\[[0-9;]*m/g, ''), plain, 'the same text under the colours');
  const err = prettyLine(
    JSON.stringify({ level: 50, time: '2026-11-29T10:00:01.250Z', msg: 'x-failed', err: { message: 'boom', stack: 'Error: boom\n    at f' } }),
    false,
  );
  t.match(err, /ERROR {2}x-failed\n {4}Error: boom\n {8}at f\n$/, 'the error stack under the line, indented');
  t.equal(prettyLine('not json', false), 'not json\n', 'anything else passes through');
});

t.test('auto is pretty on a terminal and JSON elsewhere; a bad format is a config error', async (t) => {
  t.equal(resolveLogFormat('auto', true), 'pretty');
  t.equal(resolveLogFormat('auto', false), 'json');
  t.equal(resolveLogFormat('json', true), 'json');
  t.equal(resolveLogFormat('pretty', false), 'pretty');
  t.throws(() => resolveLogFormat('fancy', true), ConfigError);
});

const PROBE = ['--import', 'tsx', 'test/harness/log-probe.ts'];
const run = (format: string, env: Record<string, string> = {}) =>
  spawnSync(process.execPath, [...PROBE, format], { encoding: 'utf8', env: { ...process.env, ...env } });

t.test('a process whose stdout is a pipe logs JSON unless told otherwise', async (t) => {
  const json = run('-');
  t.match(JSON.parse(json.stdout.trim()), { level: 30, component: 'probe', n: 1, msg: 'probe-line' });
  const forced = run('-', { NETFOLD_LOG_FORMAT: 'pretty' });
  t.match(forced.stdout, /^\d\d:\d\d:\d\d\.\d{3} {2}INFO {3}probe {2}probe-line {2}n=1\n$/, 'NETFOLD_LOG_FORMAT=pretty: a human line, no colours into a pipe');
  t.notOk(forced.stdout.includes(ESC));
});

t.test(
  'on a terminal: coloured human lines; --log-format json forces JSON',
  { skip: existsSync('/usr/bin/script') ? false : 'no script(1) for a pseudo-terminal' },
  async (t) => {
    const underTty = (format: string) => {
      const r = spawnSync('script', ['-qec', [process.execPath, ...PROBE, format].join(' '), '/dev/null'], {
        encoding: 'utf8',
        env: { ...process.env, NO_COLOR: '' },
      });
      return r.stdout;
    };
    const tty = underTty('-');
    t.ok(tty.includes(`${ESC}32mINFO `), 'green INFO on a terminal');
    t.match(tty.replace(/\x1b\[[0-9;]*m/g, ''), /INFO {3}probe {2}probe-line {2}n=1/);
    const json = underTty('json');
    t.match(json, /\{"level":30,.*"msg":"probe-line"\}/, 'JSON when forced, terminal or not');
    t.notOk(json.includes(`${ESC}32m`));
  },
);

t.test(
  'netfold up on a terminal: the banner first, then its start-up lines, human-readable; Ctrl-C stops it',
  { skip: existsSync('/usr/bin/script') ? false : 'no script(1) for a pseudo-terminal' },
  async (t) => {
    const { spawn } = await import('node:child_process');
    const { mkdtempSync, rmSync } = await import('node:fs');
    const { tmpdir } = await import('node:os');
    const { join } = await import('node:path');
    const dataDir = mkdtempSync(join(tmpdir(), 'netfold-up-tty-'));
    t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
    const cmd = `${process.execPath} bin/netfold.mjs up --data-dir ${dataDir} --nats-port=-1 --http-port 0 --dns-port 0 --discovery-http-port 0 --simulate-cells 1`;
    const child = spawn('script', ['-qec', cmd, '/dev/null'], { stdio: ['pipe', 'pipe', 'pipe'], env: { ...process.env, NATS_URL: '', NO_COLOR: '' } });
    t.teardown(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let out = '';
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (/stop with Ctrl-C[\s\S]*cell-agent-started/.test(out)) resolve();
      });
      void exited.then(() => reject(new Error(`netfold up ended early: ${out}`)));
    });
    const plain = out.replace(/\x1b\[[0-9;]*m/g, '');
    const banner = plain.indexOf('netfold is up.');
    t.ok(banner >= 0, 'the banner is there');
    t.equal(plain.slice(0, banner).trim(), '', 'nothing comes before the banner');
    t.match(plain.slice(banner), /console: +http:\/\/127\.0\.0\.1:\d+\/ui/);
    t.match(plain, /\d\d:\d\d:\d\d\.\d{3} {2}INFO {3}policy-writer {2}policy-writer-started {2}url=http/, 'start-up lines after it, one human line each');
    t.notMatch(plain, /^\{"level"/m, 'no JSON on a terminal');
    child.stdin!.write('\x03'); // Ctrl-C on the terminal: SIGINT to netfold up
    await exited;
    t.match(out.replace(/\x1b\[[0-9;]*m/g, ''), /stopped|stopping/i, 'it stops cleanly');
  },
);
