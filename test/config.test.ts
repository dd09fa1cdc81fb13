// The configuration table is the one owner of the settings: each one reaches exactly the services it names, through
// the mapping functions the standalone mains and `netfold up` both use, and the README's table lists exactly the
// table's flags, environment variables and defaults. Pure: no NATS, no processes.
import t, { type Test } from 'tap';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONSUMERS, SETTINGS, loadConfig, resolveTokenSecret, type Config, type Consumer, type Setting } from '../runtime/config.ts';
import { serviceWiringOf } from '../runtime/service-main.ts';
import { policyWriterConfigOf } from '../services/policy-writer/service.ts';
import { plannerConfigOf } from '../services/topology-planner/service.ts';
import { discoveryConfigOf } from '../services/discovery/service.ts';
import { cellAgentConfigOf, dataplaneConfigOf } from '../services/cell-agent/config.ts';
import { upPlan } from '../cli/up.ts';

const root = mkdtempSync(join(tmpdir(), 'netfold-config-'));
t.teardown(() => rmSync(root, { recursive: true, force: true }));
/** Two data dirs, each with a generated token secret that names its dir, so a secret read from one shows where it came from. */
const baseDir = mkdtempSync(join(root, 'base-'));
const sampleDir = mkdtempSync(join(root, 'sample-'));
for (const dir of [baseDir, sampleDir]) writeFileSync(join(dir, 'token-secret'), `generated-in:${dir}`.padEnd(48, '-') + '\n', { mode: 0o600 });

/** Every run starts from the defaults plus what a standalone agent needs; the environment is empty unless set. */
const BASE_FLAGS: Record<string, string> = { 'data-dir': baseDir, 'cell-id': 'cell-base' };

/** A distinctive value for each string setting (a setting added without one fails below: give it one). */
const STRING_SAMPLES: Partial<Record<keyof Config, string>> = {
  demoData: 'none',
  natsUrl: 'nats://10.9.8.7:4999,nats://10.9.8.6:4999',
  natsCreds: '/sample/creds/writer.creds.json',
  natsTlsCa: '/sample/tls/ca.pem',
  natsTlsCert: '/sample/tls/client.pem',
  natsTlsKey: '/sample/tls/client-key.pem',
  dataDir: sampleDir,
  httpHost: '127.0.0.9',
  tokenSecret: 'sample-token-secret-'.padEnd(48, 'z'),
  logLevel: 'debug',
  logFormat: 'json',
  plannerId: 'planner-sample',
  domain: 'sample.example',
  cellId: 'cell-sample',
  networkDriver: 'vxlan',
  underlayAddress: '192.0.2.77',
  dataplane: 'render',
  netns: 'ns-sample',
  egressDefault: 'allow',
  overlayCidr: '10.77.0.0/16',
  cellSubnet: '10.255.77.0/24',
  dnsHost: '127.0.0.9',
};

/** A non-default value inside the setting's bounds, as it is typed on the command line. */
function sampleText(s: Setting): string | undefined {
  if (s.kind === 'string') return STRING_SAMPLES[s.key];
  if (s.kind === 'duration') return `${(s.min ?? 0) + 7}s`;
  const def = s.def === undefined ? undefined : Number(s.def);
  const inRange = (n: number) => n >= (s.min ?? -Infinity) && n <= (s.max ?? Infinity) && n !== def;
  return String([(def ?? 0) * 3 + 7, (s.min ?? 0) + 7, s.max ?? 0, s.min ?? 0].find(inRange));
}

/**
 * What each consumer is given, built the way its code builds it. The services: their `…ConfigOf`, as in their
 * main.ts (and in `upPlan`); `service-main`: the shared wiring, for a service with and without a metrics port of
 * its own; `up`: everything `netfold up` starts with. The CLI reads the config directly: declared, not checked here.
 */
const BUILD: Record<Exclude<Consumer, 'cli'>, (c: Config) => unknown> = {
  'policy-writer': (c) => policyWriterConfigOf(c, resolveTokenSecret(c, false)),
  'topology-planner': (c) => plannerConfigOf(c),
  discovery: (c) => discoveryConfigOf(c),
  'cell-agent': (c) => ({ agent: cellAgentConfigOf(c), dataplane: dataplaneConfigOf(c) }),
  'service-main': (c) => ({ planner: serviceWiringOf(c, 9470), agent: serviceWiringOf(c, 9471), writer: serviceWiringOf(c, undefined) }),
  up: (c) => upPlan(c, resolveTokenSecret(c, true)),
};
const CHECKED = Object.keys(BUILD) as Exclude<Consumer, 'cli'>[];

/**
 * Agent settings `netfold up` replaces for its simulated cells: it names them (sim-cell-N), registers their ranges
 * itself (each agent gets its registered range as its cell subnet) and gives them the memory dataplane.
 */
const UP_SIMULATED_CELLS_REPLACE: readonly (keyof Config)[] = ['cellId', 'cellSubnet', 'dataplane', 'netns', 'networkDriver'];

/** Where `netfold up` keeps each service's config (an agent's: the first simulated cell's; how many is up's own setting). */
const UP_PART: Record<'policy-writer' | 'topology-planner' | 'discovery' | 'cell-agent', (plan: ReturnType<typeof upPlan>) => unknown> = {
  'policy-writer': (p) => p.writer,
  'topology-planner': (p) => p.planner,
  discovery: (p) => p.discovery,
  'cell-agent': (p) => ({ agent: p.cells[0]?.agent, dataplane: p.cells[0]?.dataplane }),
};

/** Leaves of a JSON value by path. */
function leaves(value: unknown, path = '', out = new Map<string, unknown>()): Map<string, unknown> {
  if (value !== null && typeof value === 'object') {
    const entries = Array.isArray(value) ? value.map((v, i) => [String(i), v] as const) : Object.entries(value);
    if (entries.length === 0) out.set(path, Array.isArray(value) ? [] : {});
    for (const [k, v] of entries) leaves(v, path ? `${path}.${k}` : k, out);
  } else {
    out.set(path, value);
  }
  return out;
}

/** The leaves that differ between two builds: path → the new value. */
function changed(before: unknown, after: unknown): Map<string, unknown> {
  const a = leaves(before);
  const b = leaves(after);
  const out = new Map<string, unknown>();
  for (const path of new Set([...a.keys(), ...b.keys()])) if (JSON.stringify(a.get(path)) !== JSON.stringify(b.get(path))) out.set(path, b.get(path));
  return out;
}

/** Whether a field holds the setting's value: the value itself, one item of a comma list, or a path/URL made from it. */
function carries(field: unknown, value: unknown): boolean {
  if (field === value) return true;
  if (typeof field !== 'string') return false;
  return field.includes(String(value)) || (typeof value === 'string' && value.split(',').includes(field));
}

function describe(diff: Map<string, unknown>): string {
  return diff.size === 0 ? 'nothing changed' : [...diff].map(([p, v]) => `${p}=${JSON.stringify(v)}`).join(', ');
}

const base = loadConfig(BASE_FLAGS, {});
const built = Object.fromEntries(CHECKED.map((c) => [c, BUILD[c](base)])) as Record<Exclude<Consumer, 'cli'>, unknown>;

t.test('every setting names its consumers, at least one of them checked here', async (t) => {
  for (const s of SETTINGS) {
    t.ok(s.services.length > 0 && s.services.every((c) => (CONSUMERS as readonly string[]).includes(c)), `--${s.flag}: consumers ${s.services.join(', ')}`);
    t.ok(
      s.services.some((c) => c !== 'cli'),
      `--${s.flag}: read by a service, service-main or up (a CLI-only setting needs a mapping to check)`,
    );
  }
});

/** The checks for one setting set to its sample, by flag or by environment variable. */
function checkSetting(t: Test, s: Setting, how: 'flag' | 'env', config: Config): void {
  const value = config[s.key];
  for (const consumer of CHECKED) {
    const diff = changed(built[consumer], BUILD[consumer](config));
    if (s.services.includes(consumer)) {
      const at = [...diff].filter(([, v]) => carries(v, value)).map(([p]) => p);
      t.ok(at.length > 0, `--${s.flag} (${how}) reaches ${consumer}${at.length > 0 ? ` at ${at.join(', ')}` : `: ${describe(diff)}`}`);
    } else {
      t.equal(describe(diff), 'nothing changed', `--${s.flag} (${how}): not read by ${consumer}, as the table says`);
    }
  }
  // netfold up: each service it starts gets the setting exactly when the standalone service does.
  const plan = upPlan(config, resolveTokenSecret(config, true));
  const basePlan = built.up as ReturnType<typeof upPlan>;
  for (const service of Object.keys(UP_PART) as (keyof typeof UP_PART)[]) {
    const applies = s.services.includes(service) && !(service === 'cell-agent' && UP_SIMULATED_CELLS_REPLACE.includes(s.key));
    const diff = changed(UP_PART[service](basePlan), UP_PART[service](plan));
    if (applies) {
      t.ok(
        [...diff.values()].some((v) => carries(v, value)),
        `--${s.flag} (${how}) reaches netfold up's ${service}: ${describe(diff)}`,
      );
    } else {
      t.equal(describe(diff), 'nothing changed', `--${s.flag} (${how}): not read by netfold up's ${service}`);
    }
  }
  // ... through the very mapping the standalone service uses.
  t.same(plan.writer, BUILD['policy-writer'](config), `--${s.flag} (${how}): up's writer config is policyWriterConfigOf`);
  t.same(plan.planner, plannerConfigOf(config), `--${s.flag} (${how}): up's planner config is plannerConfigOf`);
  t.same(plan.discovery, discoveryConfigOf(config), `--${s.flag} (${how}): up's discovery config is discoveryConfigOf`);
  for (const cell of plan.cells) {
    const standalone = { ...config, cellId: cell.cellId, cellSubnet: cell.subnet, dataplane: 'memory', netns: undefined, networkDriver: 'none' };
    t.same(
      cell.agent,
      cellAgentConfigOf(standalone),
      `--${s.flag} (${how}): ${cell.cellId} gets what a standalone agent with --cell-id ${cell.cellId} --cell-subnet ${cell.subnet} would`,
    );
    t.same(cell.dataplane, dataplaneConfigOf(standalone), `--${s.flag} (${how}): ${cell.cellId}'s dataplane as a standalone --dataplane memory`);
  }
}

for (const s of SETTINGS) {
  t.test(`--${s.flag} / ${s.env}`, async (t) => {
    const text = sampleText(s);
    if (text === undefined) return t.fail(`no sample value for --${s.flag}: add one to STRING_SAMPLES`);
    const byFlag = loadConfig({ ...BASE_FLAGS, [s.flag]: text }, {});
    const flagsWithout = Object.fromEntries(Object.entries(BASE_FLAGS).filter(([f]) => f !== s.flag));
    const byEnv = loadConfig(flagsWithout, { [s.env]: text });
    t.not(byFlag[s.key], base[s.key], `the sample ${text} is not the default`);
    t.same(byEnv, byFlag, 'the environment variable sets the same value as the flag');
    t.same(loadConfig({ ...BASE_FLAGS, [s.flag]: text }, { [s.env]: 'ignored' }), byFlag, 'the flag wins over the environment');
    checkSetting(t, s, 'flag', byFlag);
    checkSetting(t, s, 'env', byEnv);
  });
}

t.test('every main.ts and netfold up build their service configs with the mappings', async (t) => {
  const source = (path: string) => readFileSync(path, 'utf8');
  t.match(source('services/policy-writer/main.ts'), /policyWriterConfigOf\(config, resolveTokenSecret\(config, false\)\)/);
  t.match(source('services/topology-planner/main.ts'), /plannerConfigOf\(config\)/);
  t.match(source('services/discovery/main.ts'), /discoveryConfigOf\(config\)/);
  t.match(source('services/cell-agent/main.ts'), /cellAgentConfigOf\(config\)[\s\S]*dataplaneConfigOf\(config\)/);
  const up = source('cli/up.ts');
  t.match(up, /const plan = upPlan\(config, tokenSecret\)/);
  for (const part of ['plan.writer', 'plan.planner', 'plan.discovery', 'cell.agent', 'cell.dataplane'])
    t.ok(up.includes(part), `netfold up starts with ${part}`);
});

t.test("README's configuration table lists exactly the settings, in order, with their defaults", async (t) => {
  const readme = readFileSync('README.md', 'utf8');
  const section = readme.slice(readme.indexOf('## Configuration'), readme.indexOf('\n## ', readme.indexOf('## Configuration') + 1));
  const rows = section
    .split('\n')
    .filter((l) => l.startsWith('| `--'))
    .map((l) =>
      l
        .split('|')
        .slice(1, -1)
        .map((cell) => cell.trim()),
    );
  t.same(
    rows.map((r) => r[0]),
    SETTINGS.map((s) => `\`--${s.flag}\``),
    'flags',
  );
  t.same(
    rows.map((r) => r[1]),
    SETTINGS.map((s) => `\`${s.env}\``),
    'environment variables',
  );
  for (const [i, s] of SETTINGS.entries()) {
    const cell = rows[i]?.[2] ?? '';
    if (s.def === undefined) t.notMatch(cell, /^`/, `--${s.flag}: no default value, so the README says what unset means ("${cell}")`);
    else t.equal(cell, `\`${s.def}\``, `--${s.flag}: default`);
  }
});

t.test('a lease larger than the overlay is refused at start-up', async (t) => {
  t.throws(
    () => loadConfig({ ...BASE_FLAGS, 'overlay-cidr': '10.255.0.0/20', 'lease-prefix': '18' }, {}),
    /--lease-prefix .* must not be shorter than the overlay/,
  );
  t.throws(() => loadConfig({ ...BASE_FLAGS, 'lease-prefix': '31' }, {}), /lease-prefix/);
  t.equal(loadConfig({ ...BASE_FLAGS, 'overlay-cidr': '10.255.0.0/20', 'lease-prefix': '20' }, {}).leasePrefix, 20);
});
