// The CNI specification 1.0.0 as netfold-cni speaks it: the environment (`CNI_COMMAND`, `CNI_CONTAINERID`,
// `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`), the network configuration on stdin (with netfold's own keys),
// the result of ADD (merged into a `prevResult` when chained) and the error object. Pure: no I/O.
import { NetfoldError } from '../runtime/errors.ts';
import { ID_PATTERN } from '../events/fields.ts';
import { IPV4_PATTERN } from '../projections/ipv4.ts';

export const CNI_VERSION = '1.0.0';
export const SUPPORTED_VERSIONS = [CNI_VERSION] as const;

/** The spec's well-known error codes (1-99); netfold's own start at 100. */
export const CNI_CODES = {
  incompatibleVersion: 1,
  unsupportedField: 2,
  unknownContainer: 3,
  invalidEnvironment: 4,
  ioFailure: 5,
  decodeFailure: 6,
  invalidConfig: 7,
  tryAgainLater: 11,
  /** netfold refused the container start (the intake's code is in `details`). */
  startRefused: 100,
  /** CHECK: the container's interface, address or route is not as ADD left it. */
  checkFailed: 101,
  /** The start was not enforced by the cell (the ready gate) in time. */
  notEnforced: 102,
} as const;

/** A failure reported as the spec's error object (`{ cniVersion, code, msg, details }`) with a non-zero exit. */
export class CniError extends NetfoldError {
  readonly cniCode: number;
  readonly details: string;
  constructor(cniCode: number, msg: string, details = '', cause?: unknown) {
    super(msg, `cni-${cniCode}`, 500, cniCode === CNI_CODES.tryAgainLater, cause);
    this.name = 'CniError';
    this.cniCode = cniCode;
    this.details = details;
  }
}

const COMMANDS = ['ADD', 'DEL', 'CHECK', 'VERSION'] as const;
export type CniCommand = (typeof COMMANDS)[number];

export type CniEnv = {
  command: CniCommand;
  containerId: string;
  /** Path of the container's network namespace; empty for a DEL whose namespace is gone. */
  netns: string;
  ifname: string;
  /** `CNI_ARGS`: `K=V;K2=V2`. */
  args: Map<string, string>;
  path: string;
};

/** The CNI_ARGS keys netfold reads: the app the container belongs to, its instance index, and (optionally) its netfold id. */
export const ARG_APP = 'NETFOLD_APP_ID';
export const ARG_INDEX = 'NETFOLD_INSTANCE_INDEX';
export const ARG_CONTAINER = 'NETFOLD_CONTAINER_ID';
const KNOWN_ARGS = new Set([ARG_APP, ARG_INDEX, ARG_CONTAINER, 'IgnoreUnknown']);

/** The environment of one invocation; a missing or malformed variable is error 4. */
export function parseCniEnv(env: Readonly<Record<string, string | undefined>>): CniEnv {
  const bad = (msg: string) => new CniError(CNI_CODES.invalidEnvironment, msg);
  const command = env.CNI_COMMAND;
  if (!command || !(COMMANDS as readonly string[]).includes(command)) throw bad(`CNI_COMMAND must be one of ${COMMANDS.join(', ')}, got "${command ?? ''}"`);
  const out: CniEnv = { command: command as CniCommand, containerId: '', netns: env.CNI_NETNS ?? '', ifname: '', args: new Map(), path: env.CNI_PATH ?? '' };
  if (command === 'VERSION') return out;
  const containerId = env.CNI_CONTAINERID ?? '';
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(containerId)) throw bad('CNI_CONTAINERID is required: letters, digits, "_", "." and "-"');
  out.containerId = containerId;
  const ifname = env.CNI_IFNAME ?? '';
  if (!/^[A-Za-z0-9_.-]{1,15}$/.test(ifname) || ifname === '.' || ifname === '..') throw bad('CNI_IFNAME is required: an interface name of 1-15 characters');
  out.ifname = ifname;
  if (command !== 'DEL' && out.netns === '') throw bad(`CNI_NETNS is required for ${command}`);
  if (out.netns !== '' && !out.netns.startsWith('/')) throw bad('CNI_NETNS must be an absolute path');
  for (const part of (env.CNI_ARGS ?? '').split(';').filter((p) => p !== '')) {
    const eq = part.indexOf('=');
    if (eq <= 0) throw bad(`CNI_ARGS: "${part}" is not KEY=VALUE`);
    out.args.set(part.slice(0, eq), part.slice(eq + 1));
  }
  const ignoreUnknown = ['1', 'true'].includes((out.args.get('IgnoreUnknown') ?? '').toLowerCase());
  const unknown = [...out.args.keys()].filter((k) => !KNOWN_ARGS.has(k));
  if (unknown.length > 0 && !ignoreUnknown) throw bad(`CNI_ARGS: unknown key(s) ${unknown.join(', ')} (set IgnoreUnknown=1 to ignore them)`);
  return out;
}

// ---- the network configuration --------------------------------------------------------------------------------------

export type CniInterface = { name: string; mac?: string; sandbox?: string };
export type CniIp = { address: string; gateway?: string; interface?: number };
export type CniRoute = { dst: string; gw?: string };
export type CniResult = { cniVersion: string; interfaces?: CniInterface[]; ips?: CniIp[]; routes?: CniRoute[]; dns?: Record<string, unknown> };

export type NetfoldCniConfig = {
  cniVersion: string;
  name: string;
  type: string;
  /** The cell this host is (its registration holds the range containers get addresses from). */
  cellId: string;
  /** NATS server(s), comma-separated. */
  natsUrl: string;
  /** A platform credential file (`netfold creds --platform cni`); the caller token is its id. */
  natsCreds: string | undefined;
  /** Without a credential: the platform component id the start is recorded for (`platform:<id>`). */
  platformId: string;
  /** Wait until the cell's agent enforces the start (the ready gate) before ADD returns. */
  waitReady: boolean;
  readyTimeoutMs: number;
  prevResult: CniResult | undefined;
};

const CONFIG_KEYS = new Set([
  'cniVersion',
  'name',
  'type',
  'args',
  'ipMasq',
  'ipam',
  'dns',
  'runtimeConfig',
  'capabilities',
  'prevResult',
  'cellId',
  'natsUrl',
  'natsCreds',
  'platformId',
  'waitReady',
  'readyTimeoutMs',
]);

/** The configuration on stdin: not JSON is error 6, a version other than 1.0.0 error 1, anything else wrong error 7. */
export function parseCniConfig(stdin: string, command: CniCommand): NetfoldCniConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(stdin);
  } catch (err) {
    throw new CniError(CNI_CODES.decodeFailure, 'the network configuration on stdin is not JSON', (err as Error).message);
  }
  const invalid = (msg: string) => new CniError(CNI_CODES.invalidConfig, msg);
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) throw invalid('the network configuration must be a JSON object');
  const o = raw as Record<string, unknown>;
  if (typeof o.cniVersion !== 'string') throw invalid('cniVersion is required');
  if (!(SUPPORTED_VERSIONS as readonly string[]).includes(o.cniVersion)) {
    throw new CniError(CNI_CODES.incompatibleVersion, `cniVersion ${o.cniVersion} is not supported`, `supported: ${SUPPORTED_VERSIONS.join(', ')}`);
  }
  const cfg: NetfoldCniConfig = {
    cniVersion: o.cniVersion,
    name: '',
    type: '',
    cellId: '',
    natsUrl: '',
    natsCreds: undefined,
    platformId: 'cni',
    waitReady: true,
    readyTimeoutMs: 10_000,
    prevResult: undefined,
  };
  if (command === 'VERSION') return cfg;
  const unknown = Object.keys(o).filter((k) => !CONFIG_KEYS.has(k));
  if (unknown.length > 0) throw new CniError(CNI_CODES.unsupportedField, `unsupported field(s) in the network configuration: ${unknown.join(', ')}`);
  if (typeof o.name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(o.name)) throw invalid('name is required: letters, digits, "_", "." and "-"');
  if (typeof o.type !== 'string' || o.type === '') throw invalid('type is required');
  if (o.ipam !== undefined) throw new CniError(CNI_CODES.unsupportedField, "ipam is not used: netfold-cni takes addresses from the cell's lease");
  if (typeof o.cellId !== 'string' || !ID_PATTERN.test(o.cellId)) throw invalid("cellId is required: the id of this host's cell");
  if (typeof o.natsUrl !== 'string' || o.natsUrl.trim() === '') throw invalid('natsUrl is required');
  if (o.natsCreds !== undefined && (typeof o.natsCreds !== 'string' || !o.natsCreds.startsWith('/'))) throw invalid('natsCreds must be an absolute path');
  if (o.platformId !== undefined && (typeof o.platformId !== 'string' || !ID_PATTERN.test(o.platformId))) throw invalid('platformId must be an id');
  if (o.waitReady !== undefined && typeof o.waitReady !== 'boolean') throw invalid('waitReady must be true or false');
  const t = o.readyTimeoutMs;
  if (t !== undefined && (typeof t !== 'number' || !Number.isInteger(t) || t < 1 || t > 60_000))
    throw invalid('readyTimeoutMs must be an integer from 1 to 60000');
  Object.assign(cfg, { name: o.name, type: o.type, cellId: o.cellId, natsUrl: o.natsUrl });
  if (typeof o.natsCreds === 'string') cfg.natsCreds = o.natsCreds;
  if (typeof o.platformId === 'string') cfg.platformId = o.platformId;
  if (typeof o.waitReady === 'boolean') cfg.waitReady = o.waitReady;
  if (typeof t === 'number') cfg.readyTimeoutMs = t;
  if (o.prevResult !== undefined) cfg.prevResult = parsePrevResult(o.prevResult);
  if (command === 'CHECK' && !cfg.prevResult) throw invalid('CHECK needs prevResult (the result of ADD)');
  return cfg;
}

function parsePrevResult(v: unknown): CniResult {
  const invalid = (msg: string) => new CniError(CNI_CODES.invalidConfig, `prevResult: ${msg}`);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw invalid('must be an object');
  const r = v as Record<string, unknown>;
  for (const k of ['interfaces', 'ips', 'routes'] as const) if (r[k] !== undefined && !Array.isArray(r[k])) throw invalid(`${k} must be a list`);
  const ips = (r.ips ?? []) as unknown[];
  for (const ip of ips) {
    const a = (ip as Record<string, unknown> | null)?.address;
    if (typeof a !== 'string' || !/^[0-9.]+\/\d{1,2}$/.test(a) || !IPV4_PATTERN.test(a.split('/')[0]!))
      throw invalid('every ips[].address must be an IPv4 CIDR');
  }
  return { ...(r as CniResult), cniVersion: typeof r.cniVersion === 'string' ? r.cniVersion : CNI_VERSION };
}

/** The container netfold records: its id (CNI_ARGS NETFOLD_CONTAINER_ID, or CNI_CONTAINERID), app and instance index. */
export function containerOf(env: CniEnv): { containerId: string; appId: string | undefined; instanceIndex: number | undefined } {
  const invalid = (msg: string) => new CniError(CNI_CODES.invalidEnvironment, msg);
  const containerId = env.args.get(ARG_CONTAINER) ?? env.containerId;
  if (!ID_PATTERN.test(containerId))
    throw invalid(`the container id "${containerId}" is not a netfold id (1-128 letters, digits, "-", "_"): set ${ARG_CONTAINER}`);
  const appId = env.args.get(ARG_APP);
  if (appId !== undefined && !ID_PATTERN.test(appId)) throw invalid(`CNI_ARGS ${ARG_APP} must be an app id`);
  const index = env.args.get(ARG_INDEX);
  if (index !== undefined && !/^\d{1,7}$/.test(index)) throw invalid(`CNI_ARGS ${ARG_INDEX} must be a non-negative integer`);
  return { containerId, appId, instanceIndex: index === undefined ? undefined : Number(index) };
}

/** What ADD plumbed, as the spec's result; a chained prevResult's interfaces, ips and routes come first, ours after. */
export function addResult(
  prev: CniResult | undefined,
  made: { hostIf: string; hostMac: string; ifname: string; mac: string; netns: string; ip: string; gateway: string },
): CniResult {
  const interfaces = [...(prev?.interfaces ?? [])];
  interfaces.push({ name: made.hostIf, mac: made.hostMac }, { name: made.ifname, mac: made.mac, sandbox: made.netns });
  return {
    cniVersion: CNI_VERSION,
    interfaces,
    ips: [...(prev?.ips ?? []), { address: `${made.ip}/32`, gateway: made.gateway, interface: interfaces.length - 1 }],
    routes: [...(prev?.routes ?? []), { dst: '0.0.0.0/0', gw: made.gateway }],
    dns: prev?.dns ?? {},
  };
}

/** The spec's error object for any failure (a non-CniError is an I/O failure, code 5). */
export function errorBody(err: unknown): { cniVersion: string; code: number; msg: string; details: string } {
  if (err instanceof CniError) return { cniVersion: CNI_VERSION, code: err.cniCode, msg: err.message, details: err.details };
  const e = err instanceof Error ? err : new Error(String(err));
  return { cniVersion: CNI_VERSION, code: CNI_CODES.ioFailure, msg: e.message.slice(0, 500), details: e.name };
}
