// Assembles the policy-writer: model follower, writer, HTTP gateway and platform intake.
import { newId } from '../../runtime/ids.ts';
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { EventLog, LogFollower } from '../../runtime/event-log.ts';
import { type Model, liveModelFold } from '../../projections/model.ts';
import { quarantineGauge, quarantineReporter } from '../../runtime/quarantine-report.ts';
import { buildHttpGateway, registeredRoutes } from './http.ts';
import type { RegisteredRoute } from './openapi.ts';
import { Intake } from './intake.ts';
import { SecurityGroupApi } from './security-groups.ts';
import { PolicyApi, PolicyFiles } from './policy-api.ts';
import { Writer } from './writer.ts';
import { waitEnforced } from '../topology-planner/enforcement.ts';
import { Registry } from '../../runtime/metrics.ts';
import { checkTokenSecret } from '../../runtime/tokens.ts';
import type { Config } from '../../runtime/config.ts';

export type PolicyWriterConfig = {
  httpHost: string;
  httpPort: number;
  httpBodyLimit: number;
  policyQuota: number;
  maxPoliciesPerRequest: number;
  tokenSecret: string;
  overlayCidr: string;
  /** Prefix length of a leased cell range (default 24). */
  leasePrefix?: number;
  /** Seconds; default 7 days (`--token-max-ttl`). */
  tokenMaxTtl?: number;
  /** Default 10 s (`--http-request-timeout-ms`). */
  httpRequestTimeoutMs?: number;
  /** Default 5 s (`--http-keep-alive-timeout-ms`). */
  httpKeepAliveTimeoutMs?: number;
};

/** The policy-writer settings of the shared configuration, with the token secret as resolved (`resolveTokenSecret`). */
export function policyWriterConfigOf(c: Config, tokenSecret: string): PolicyWriterConfig {
  return {
    httpHost: c.httpHost,
    httpPort: c.httpPort,
    httpBodyLimit: c.httpBodyLimit,
    policyQuota: c.policyQuota,
    maxPoliciesPerRequest: c.maxPoliciesPerRequest,
    tokenSecret,
    overlayCidr: c.overlayCidr,
    leasePrefix: c.leasePrefix,
    tokenMaxTtl: c.tokenMaxTtl,
    httpRequestTimeoutMs: c.httpRequestTimeoutMs,
    httpKeepAliveTimeoutMs: c.httpKeepAliveTimeoutMs,
  };
}

export type PolicyWriter = {
  /** Base URL of the HTTP gateway. */
  url: string;
  writer: Writer;
  follower: LogFollower<Model>;
  /** Every route the gateway registered (test/openapi.test.ts checks each is in /openapi.json). */
  routes: readonly RegisteredRoute[];
  stop(): Promise<void>;
};

export async function startPolicyWriter(deps: {
  bus: Bus;
  log: Logger;
  config: PolicyWriterConfig;
  now?: () => Date;
  newId?: () => string;
  metrics?: Registry;
}): Promise<PolicyWriter> {
  checkTokenSecret(deps.config.tokenSecret);
  const metrics = deps.metrics ?? new Registry();
  const log = deps.log.child({ service: 'policy-writer' });
  const eventLog = new EventLog(deps.bus);
  const follower = new LogFollower<Model>(deps.bus, liveModelFold, log, { metrics });
  await follower.start();
  const writer = new Writer({
    log,
    eventLog,
    follower,
    now: deps.now ?? (() => new Date()),
    newId: deps.newId ?? newId,
    policyQuota: deps.config.policyQuota,
    overlayCidr: deps.config.overlayCidr,
    leasePrefix: deps.config.leasePrefix ?? 24,
  });
  const api = new PolicyApi({ writer, maxPoliciesPerRequest: deps.config.maxPoliciesPerRequest });
  const http = buildHttpGateway({
    api,
    securityGroups: new SecurityGroupApi({ writer }),
    files: new PolicyFiles(writer, log),
    console: { bus: deps.bus, follower },
    enforcement: (revision, waitMs) => waitEnforced(deps.bus, revision, waitMs),
    tokenSecret: deps.config.tokenSecret,
    log,
    bodyLimitBytes: deps.config.httpBodyLimit,
    tokenMaxTtlSeconds: deps.config.tokenMaxTtl,
    requestTimeoutMs: deps.config.httpRequestTimeoutMs,
    keepAliveTimeoutMs: deps.config.httpKeepAliveTimeoutMs,
    metrics,
  });
  const address = await http.listen({ host: deps.config.httpHost, port: deps.config.httpPort });
  const intake = new Intake(deps.bus.nc, writer, log, metrics);
  metrics.onCollect(() => {
    metrics.gauge('netfold_writer_revision', 'event-log revision the writer has folded').set({}, follower.seq);
    metrics.gauge('netfold_writer_events_appended', 'events this writer appended since start').set({}, writer.stats.appended);
    metrics.gauge('netfold_writer_conflicts', 'appends retried after another writer moved the aggregate').set({}, writer.stats.conflicts);
    quarantineGauge(metrics, 'policy-writer', follower.state);
  });
  const reportQuarantine = quarantineReporter(log);
  reportQuarantine(follower.state);
  follower.onFold((state) => reportQuarantine(state));
  intake.start();
  log.info({ url: address, revision: follower.seq }, 'policy-writer-started');
  return {
    url: address,
    writer,
    follower,
    routes: registeredRoutes(http),
    async stop() {
      await intake.stop();
      await http.close();
      await follower.stop();
      log.info('policy-writer-stopped');
    },
  };
}
