// Configuration: every setting has a flag, an environment variable and a default. Flags win over the
// environment. The README's configuration table lists the same settings (test/config.test.ts checks it), and each
// setting names who reads it: a service gets its settings from one function (`plannerConfigOf`,
// `discoveryConfigOf`, `policyWriterConfigOf`, `cellAgentConfigOf` / `dataplaneConfigOf`) that both its standalone
// main.ts and `netfold up` call, so a flag cannot reach one and not the other.
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ConfigError } from './errors.ts';
import { PRIVATE_MODE, isExposed, writePrivateFile } from './private-file.ts';
import { checkTokenSecret, parseDuration } from './tokens.ts';
import { DEFAULT_DOMAIN } from '../projections/cell.ts';
import { IPV4_PATTERN } from '../projections/ipv4.ts';

export type Config = {
  /** Existing NATS server(s); when unset, `netfold up` runs an embedded one. */
  natsUrl: string | undefined;
  dataDir: string;
  natsPort: number;
  /** This process's NATS credential file (`{ name, seed, inboxPrefix }`, runtime/authz.ts); unset: no credential. */
  natsCreds: string | undefined;
  /** TLS to NATS: the CA to trust, and this process's client certificate and key (paths). */
  natsTlsCa: string | undefined;
  natsTlsCert: string | undefined;
  natsTlsKey: string | undefined;
  replicas: number;
  httpHost: string;
  httpPort: number;
  httpBodyLimit: number;
  /** Milliseconds a client has to send a whole request (headers and body); 408 and close after. */
  httpRequestTimeoutMs: number;
  /** Milliseconds an idle keep-alive connection is kept open. */
  httpKeepAliveTimeoutMs: number;
  policyQuota: number;
  maxPoliciesPerRequest: number;
  tokenSecret: string | undefined;
  /** Seconds: the longest lifetime (exp − iat) of a bearer token, checked by the gateway and `token mint`. */
  tokenMaxTtl: number;
  logLevel: string;
  /** A stop on SIGINT/SIGTERM that takes longer exits the process anyway (1). */
  shutdownTimeoutMs: number;
  /** Log lines: `auto` (pretty on a terminal, JSON otherwise), `pretty` or `json`. */
  logFormat: string;
  plannerId: string;
  domain: string;
  checkpointIntervalMs: number;
  cellId: string | undefined;
  dataplane: string;
  /** Egress from a container no security group applies to, outside the overlay: `deny` (default) or `allow`. */
  egressDefault: string;
  netns: string | undefined;
  overlayCidr: string;
  /** Prefix length of the range leased to a cell that registers without one (24: a /24 per cell). */
  leasePrefix: number;
  /** This cell's container range(s), comma-separated CIDRs inside the overlay (`--cell-subnet`); empty when unset. */
  cellSubnet: string | undefined;
  driftIntervalMs: number;
  /** What builds the path between cells: `none` (another system), `routed` (routes via underlay addresses), `vxlan`. */
  networkDriver: string;
  vxlanVni: number;
  vxlanPort: number;
  vxlanMtu: number;
  /** This cell's underlay (host) address; when set, the agent programs nothing unless its registration says the same. */
  underlayAddress: string | undefined;
  pollIntervalMs: number;
  dnsHost: string;
  dnsPort: number;
  dnsTtl: number;
  /** Most A records in one DNS answer (a random selection of the instances). */
  dnsMaxAnswers: number;
  /** UDP responses per second per source address (0: no limit), with a burst, and 1 in `slip` over-limit queries answered truncated. */
  dnsRateLimit: number;
  dnsRateLimitBurst: number;
  dnsRateLimitSlip: number;
  discoveryHttpPort: number;
  discoveryExpiryMs: number;
  simulateCells: number;
  /** `netfold up`: `seed` puts the demo's apps, containers and policy into a fresh log (none yet); `none` leaves it empty. */
  demoData: string;
  metricsPort: number | undefined;
};

/**
 * Who reads a setting. The four services get theirs through their `…ConfigOf(config)` mapping, the same in their
 * standalone main.ts and in `netfold up`; `service-main`: the wiring every standalone main.ts shares
 * (runtime/service-main.ts: NATS, streams, logger, metrics server); `up`: `netfold up` (cli/up.ts), itself or through
 * a service it starts (`upPlan`); `cli`: the other commands (cli/main.ts).
 */
export const CONSUMERS = ['policy-writer', 'topology-planner', 'discovery', 'cell-agent', 'service-main', 'up', 'cli'] as const;
export type Consumer = (typeof CONSUMERS)[number];

export type Setting = {
  key: keyof Config;
  flag: string;
  env: string;
  def: string | undefined;
  kind: 'string' | 'int' | 'duration';
  min?: number;
  max?: number;
  /** Who reads it (test/config.test.ts checks that exactly these see a change of it). */
  services: readonly Consumer[];
};

export const SETTINGS: readonly Setting[] = [
  { key: 'natsUrl', flag: 'nats-url', env: 'NATS_URL', def: undefined, kind: 'string', services: ['service-main', 'up', 'cli'] },
  { key: 'dataDir', flag: 'data-dir', env: 'NETFOLD_DATA_DIR', def: '.netfold', kind: 'string', services: ['policy-writer', 'up', 'cli'] },
  { key: 'natsPort', flag: 'nats-port', env: 'NETFOLD_NATS_PORT', def: '4222', kind: 'int', min: -1, max: 65535, services: ['service-main', 'up', 'cli'] },
  { key: 'natsCreds', flag: 'nats-creds', env: 'NATS_CREDS', def: undefined, kind: 'string', services: ['service-main', 'up', 'cli'] },
  { key: 'natsTlsCa', flag: 'nats-tls-ca', env: 'NETFOLD_NATS_TLS_CA', def: undefined, kind: 'string', services: ['service-main', 'up', 'cli'] },
  { key: 'natsTlsCert', flag: 'nats-tls-cert', env: 'NETFOLD_NATS_TLS_CERT', def: undefined, kind: 'string', services: ['service-main', 'up', 'cli'] },
  { key: 'natsTlsKey', flag: 'nats-tls-key', env: 'NETFOLD_NATS_TLS_KEY', def: undefined, kind: 'string', services: ['service-main', 'up', 'cli'] },
  {
    key: 'replicas',
    flag: 'replicas',
    env: 'NETFOLD_REPLICAS',
    def: '1',
    kind: 'int',
    min: 1,
    max: 5,
    services: ['topology-planner', 'discovery', 'cell-agent', 'service-main', 'up'],
  },
  {
    key: 'httpHost',
    flag: 'http-host',
    env: 'NETFOLD_HTTP_HOST',
    def: '127.0.0.1',
    kind: 'string',
    services: ['policy-writer', 'discovery', 'service-main', 'up', 'cli'],
  },
  { key: 'httpPort', flag: 'http-port', env: 'NETFOLD_HTTP_PORT', def: '4002', kind: 'int', min: 0, max: 65535, services: ['policy-writer', 'up', 'cli'] },
  {
    key: 'httpBodyLimit',
    flag: 'http-body-limit',
    env: 'NETFOLD_HTTP_BODY_LIMIT',
    def: '1048576',
    kind: 'int',
    min: 1024,
    max: 64 * 1024 * 1024,
    services: ['policy-writer', 'up'],
  },
  {
    key: 'httpRequestTimeoutMs',
    flag: 'http-request-timeout-ms',
    env: 'NETFOLD_HTTP_REQUEST_TIMEOUT_MS',
    def: '10000',
    kind: 'int',
    min: 100,
    max: 600_000,
    services: ['policy-writer', 'up'],
  },
  {
    key: 'httpKeepAliveTimeoutMs',
    flag: 'http-keep-alive-timeout-ms',
    env: 'NETFOLD_HTTP_KEEP_ALIVE_TIMEOUT_MS',
    def: '5000',
    kind: 'int',
    min: 100,
    max: 600_000,
    services: ['policy-writer', 'up'],
  },
  { key: 'policyQuota', flag: 'policy-quota', env: 'NETFOLD_POLICY_QUOTA', def: '150', kind: 'int', min: 1, max: 1_000_000, services: ['policy-writer', 'up'] },
  {
    key: 'maxPoliciesPerRequest',
    flag: 'max-policies-per-request',
    env: 'NETFOLD_MAX_POLICIES_PER_REQUEST',
    def: '1000',
    kind: 'int',
    min: 1,
    max: 100_000,
    services: ['policy-writer', 'up'],
  },
  { key: 'tokenSecret', flag: 'token-secret', env: 'NETFOLD_TOKEN_SECRET', def: undefined, kind: 'string', services: ['policy-writer', 'up', 'cli'] },
  {
    key: 'tokenMaxTtl',
    flag: 'token-max-ttl',
    env: 'NETFOLD_TOKEN_MAX_TTL',
    def: '7d',
    kind: 'duration',
    min: 60,
    max: 365 * 86400,
    services: ['policy-writer', 'up', 'cli'],
  },
  { key: 'logLevel', flag: 'log-level', env: 'NETFOLD_LOG_LEVEL', def: 'info', kind: 'string', services: ['service-main', 'up'] },
  {
    key: 'shutdownTimeoutMs',
    flag: 'shutdown-timeout-ms',
    env: 'NETFOLD_SHUTDOWN_TIMEOUT_MS',
    def: '15000',
    kind: 'int',
    min: 100,
    max: 600_000,
    services: ['service-main', 'up'],
  },
  { key: 'logFormat', flag: 'log-format', env: 'NETFOLD_LOG_FORMAT', def: 'auto', kind: 'string', services: ['service-main', 'up'] },
  { key: 'plannerId', flag: 'planner-id', env: 'NETFOLD_PLANNER_ID', def: 'planner', kind: 'string', services: ['topology-planner', 'up'] },
  { key: 'domain', flag: 'domain', env: 'NETFOLD_DOMAIN', def: DEFAULT_DOMAIN, kind: 'string', services: ['topology-planner', 'discovery', 'up', 'cli'] },
  {
    key: 'checkpointIntervalMs',
    flag: 'checkpoint-interval-ms',
    env: 'NETFOLD_CHECKPOINT_INTERVAL_MS',
    def: '5000',
    kind: 'int',
    min: 100,
    max: 3_600_000,
    services: ['topology-planner', 'up'],
  },
  { key: 'cellId', flag: 'cell-id', env: 'NETFOLD_CELL_ID', def: undefined, kind: 'string', services: ['cell-agent'] },
  { key: 'dataplane', flag: 'dataplane', env: 'NETFOLD_DATAPLANE', def: 'nftables', kind: 'string', services: ['cell-agent'] },
  { key: 'netns', flag: 'netns', env: 'NETFOLD_NETNS', def: undefined, kind: 'string', services: ['cell-agent'] },
  { key: 'egressDefault', flag: 'egress-default', env: 'NETFOLD_EGRESS_DEFAULT', def: 'deny', kind: 'string', services: ['cell-agent', 'up'] },
  {
    key: 'overlayCidr',
    flag: 'overlay-cidr',
    env: 'NETFOLD_OVERLAY_CIDR',
    def: '10.255.0.0/16',
    kind: 'string',
    services: ['policy-writer', 'cell-agent', 'up'],
  },
  { key: 'networkDriver', flag: 'network-driver', env: 'NETFOLD_NETWORK_DRIVER', def: 'none', kind: 'string', services: ['cell-agent'] },
  { key: 'vxlanVni', flag: 'vxlan-vni', env: 'NETFOLD_VXLAN_VNI', def: '4211', kind: 'int', min: 1, max: 16_777_215, services: ['cell-agent', 'up'] },
  { key: 'vxlanPort', flag: 'vxlan-port', env: 'NETFOLD_VXLAN_PORT', def: '4789', kind: 'int', min: 1, max: 65535, services: ['cell-agent', 'up'] },
  { key: 'vxlanMtu', flag: 'vxlan-mtu', env: 'NETFOLD_VXLAN_MTU', def: '1450', kind: 'int', min: 576, max: 9000, services: ['cell-agent', 'up'] },
  { key: 'underlayAddress', flag: 'underlay-address', env: 'NETFOLD_UNDERLAY_ADDRESS', def: undefined, kind: 'string', services: ['cell-agent', 'up'] },
  { key: 'leasePrefix', flag: 'lease-prefix', env: 'NETFOLD_LEASE_PREFIX', def: '24', kind: 'int', min: 16, max: 30, services: ['policy-writer', 'up'] },
  { key: 'cellSubnet', flag: 'cell-subnet', env: 'NETFOLD_CELL_SUBNET', def: undefined, kind: 'string', services: ['cell-agent'] },
  {
    key: 'driftIntervalMs',
    flag: 'drift-interval-ms',
    env: 'NETFOLD_DRIFT_INTERVAL_MS',
    def: '500',
    kind: 'int',
    min: 50,
    max: 3_600_000,
    services: ['cell-agent', 'up'],
  },
  {
    key: 'pollIntervalMs',
    flag: 'poll-interval-ms',
    env: 'NETFOLD_POLL_INTERVAL_MS',
    def: '0',
    kind: 'int',
    min: 0,
    max: 3_600_000,
    services: ['cell-agent', 'up'],
  },
  { key: 'dnsHost', flag: 'dns-host', env: 'NETFOLD_DNS_HOST', def: '127.0.0.1', kind: 'string', services: ['discovery', 'up'] },
  { key: 'dnsPort', flag: 'dns-port', env: 'NETFOLD_DNS_PORT', def: '8053', kind: 'int', min: 0, max: 65535, services: ['discovery', 'up', 'cli'] },
  { key: 'dnsTtl', flag: 'dns-ttl', env: 'NETFOLD_DNS_TTL', def: '0', kind: 'int', min: 0, max: 86_400, services: ['discovery', 'up'] },
  { key: 'dnsMaxAnswers', flag: 'dns-max-answers', env: 'NETFOLD_DNS_MAX_ANSWERS', def: '32', kind: 'int', min: 1, max: 1000, services: ['discovery', 'up'] },
  {
    key: 'dnsRateLimit',
    flag: 'dns-rate-limit',
    env: 'NETFOLD_DNS_RATE_LIMIT',
    def: '100',
    kind: 'int',
    min: 0,
    max: 1_000_000,
    services: ['discovery', 'up'],
  },
  {
    key: 'dnsRateLimitBurst',
    flag: 'dns-rate-limit-burst',
    env: 'NETFOLD_DNS_RATE_LIMIT_BURST',
    def: '100',
    kind: 'int',
    min: 1,
    max: 1_000_000,
    services: ['discovery', 'up'],
  },
  {
    key: 'dnsRateLimitSlip',
    flag: 'dns-rate-limit-slip',
    env: 'NETFOLD_DNS_RATE_LIMIT_SLIP',
    def: '2',
    kind: 'int',
    min: 0,
    max: 10,
    services: ['discovery', 'up'],
  },
  {
    key: 'discoveryHttpPort',
    flag: 'discovery-http-port',
    env: 'NETFOLD_DISCOVERY_HTTP_PORT',
    def: '8054',
    kind: 'int',
    min: 0,
    max: 65535,
    services: ['discovery', 'up'],
  },
  {
    key: 'discoveryExpiryMs',
    flag: 'discovery-expiry-ms',
    env: 'NETFOLD_DISCOVERY_EXPIRY_MS',
    def: '180000',
    kind: 'int',
    min: 100,
    max: 86_400_000,
    services: ['discovery', 'up'],
  },
  { key: 'simulateCells', flag: 'simulate-cells', env: 'NETFOLD_SIMULATE_CELLS', def: '3', kind: 'int', min: 0, max: 1000, services: ['up'] },
  { key: 'demoData', flag: 'demo-data', env: 'NETFOLD_DEMO_DATA', def: 'seed', kind: 'string', services: ['up'] },
  { key: 'metricsPort', flag: 'metrics-port', env: 'NETFOLD_METRICS_PORT', def: undefined, kind: 'int', min: 0, max: 65535, services: ['service-main'] },
];

/** Builds the config from parsed flags (by flag name) and the environment. */
export function loadConfig(flags: Record<string, string | boolean | undefined> = {}, env: NodeJS.ProcessEnv = process.env): Config {
  const out: Record<string, string | number | undefined> = {};
  for (const s of SETTINGS) {
    const fromFlag = flags[s.flag];
    const text = typeof fromFlag === 'string' ? fromFlag : env[s.env] !== undefined && env[s.env] !== '' ? env[s.env] : s.def;
    if (text === undefined) {
      out[s.key] = undefined;
      continue;
    }
    if (s.kind === 'int') {
      const n = Number(text);
      if (!Number.isInteger(n) || n < (s.min ?? -Infinity) || n > (s.max ?? Infinity)) {
        throw new ConfigError(`--${s.flag} / ${s.env} must be an integer between ${s.min} and ${s.max}, got "${text}"`);
      }
      out[s.key] = n;
    } else if (s.kind === 'duration') {
      let n: number;
      try {
        n = parseDuration(text);
      } catch {
        throw new ConfigError(`--${s.flag} / ${s.env} must be a duration (e.g. 90s, 15m, 24h, 7d), got "${text}"`);
      }
      if (n < (s.min ?? 0) || n > (s.max ?? Infinity)) {
        throw new ConfigError(`--${s.flag} / ${s.env} must be between ${s.min} s and ${s.max} s, got "${text}"`);
      }
      out[s.key] = n;
    } else {
      out[s.key] = text;
    }
  }
  const config = out as unknown as Config;
  if (config.cellId !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/.test(config.cellId)) {
    throw new ConfigError(`--cell-id / NETFOLD_CELL_ID must be 1-128 letters, digits, "-" or "_", got "${config.cellId}"`);
  }
  if (!['nftables', 'memory', 'render'].includes(config.dataplane)) {
    throw new ConfigError(`--dataplane / NETFOLD_DATAPLANE must be nftables, memory or render, got "${config.dataplane}"`);
  }
  if (!/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/.test(config.overlayCidr)) {
    throw new ConfigError(`--overlay-cidr / NETFOLD_OVERLAY_CIDR must be an IPv4 CIDR, got "${config.overlayCidr}"`);
  }
  if (!['deny', 'allow'].includes(config.egressDefault)) {
    throw new ConfigError(`--egress-default / NETFOLD_EGRESS_DEFAULT must be deny or allow, got "${config.egressDefault}"`);
  }
  if (!['none', 'routed', 'vxlan'].includes(config.networkDriver)) {
    throw new ConfigError(`--network-driver / NETFOLD_NETWORK_DRIVER must be none, routed or vxlan, got "${config.networkDriver}"`);
  }
  if (config.underlayAddress !== undefined && !IPV4_PATTERN.test(config.underlayAddress)) {
    throw new ConfigError(`--underlay-address / NETFOLD_UNDERLAY_ADDRESS must be an IPv4 address, got "${config.underlayAddress}"`);
  }
  if (config.leasePrefix < Number(config.overlayCidr.split('/')[1])) {
    throw new ConfigError(`--lease-prefix / NETFOLD_LEASE_PREFIX (/${config.leasePrefix}) must not be shorter than the overlay's (${config.overlayCidr})`);
  }
  if (config.cellSubnet !== undefined) {
    for (const c of config.cellSubnet.split(',')) {
      if (!/^(\d{1,3}\.){3}\d{1,3}\/\d{1,2}$/.test(c.trim()))
        throw new ConfigError(`--cell-subnet / NETFOLD_CELL_SUBNET must be a comma list of IPv4 CIDRs, got "${config.cellSubnet}"`);
    }
  }
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(config.plannerId)) {
    throw new ConfigError(`--planner-id / NETFOLD_PLANNER_ID must be 1-64 letters, digits, "-" or "_", got "${config.plannerId}"`);
  }
  if (!/^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/.test(config.domain)) {
    throw new ConfigError(`--domain / NETFOLD_DOMAIN must be a lower-case DNS name, got "${config.domain}"`);
  }
  config.dataDir = resolve(config.dataDir);
  return config;
}

/** The NATS servers to connect to: `--nats-url` (comma-separated), else the local server on `--nats-port`. */
export function natsServersOf(config: Pick<Config, 'natsUrl' | 'natsPort'>): string[] {
  return (config.natsUrl ?? `nats://127.0.0.1:${config.natsPort}`).split(',');
}

/** How this process signs in to NATS and encrypts the connection: what `--nats-creds` and `--nats-tls-*` say. */
export type NatsClientSettings = {
  /** The credential file (runtime/authz.ts `readCredentialFile`); undefined: connect without one. */
  credsFile: string | undefined;
  /** nats.js's `tls` option; undefined when no `--nats-tls-*` is set. */
  tls: { caFile?: string; certFile?: string; keyFile?: string } | undefined;
};

export function natsClientOf(config: Pick<Config, 'natsCreds' | 'natsTlsCa' | 'natsTlsCert' | 'natsTlsKey'>): NatsClientSettings {
  const tls = {
    ...(config.natsTlsCa !== undefined && { caFile: config.natsTlsCa }),
    ...(config.natsTlsCert !== undefined && { certFile: config.natsTlsCert }),
    ...(config.natsTlsKey !== undefined && { keyFile: config.natsTlsKey }),
  };
  return { credsFile: config.natsCreds, tls: Object.keys(tls).length > 0 ? tls : undefined };
}

/**
 * The token secret: configured, or generated once and kept in the data dir (mode 0600; an existing file readable by
 * others is made 0600 when we may). Refused (ConfigError `weak-token-secret`) when shorter than 32 bytes.
 */
export function resolveTokenSecret(config: Pick<Config, 'tokenSecret' | 'dataDir'>, create: boolean): string {
  if (config.tokenSecret) {
    checkTokenSecret(config.tokenSecret);
    return config.tokenSecret;
  }
  const file = join(config.dataDir, 'token-secret');
  if (existsSync(file)) {
    if (isExposed(file)) {
      try {
        chmodSync(file, PRIVATE_MODE);
      } catch {
        // not ours to change (another user's data dir): reading it is still allowed
      }
    }
    const secret = readFileSync(file, 'utf8').trim();
    checkTokenSecret(secret);
    return secret;
  }
  if (!create) throw new ConfigError(`no token secret: set NETFOLD_TOKEN_SECRET or run "netfold up" once to create ${file}`);
  const secret = randomBytes(32).toString('hex');
  writePrivateFile(file, secret + '\n');
  return secret;
}
