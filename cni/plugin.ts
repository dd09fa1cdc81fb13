// netfold-cni: one invocation of the plugin, as the CNI specification 1.0.0 defines it. The environment and the
// network configuration are validated completely before anything is done (a bad one changes nothing and answers the
// spec's error object); then
//   ADD    reports the start through intake (platform role, no IP: the writer gives the container the lowest free
//          address of the cell's lease and records it), plumbs a veth pair into the container's namespace with that
//          address and a default route via the cell's gateway (the lease's first address), optionally waits until the
//          cell's agent enforces the start (the ready gate), and prints the result (a chained prevResult merged in).
//          A failure after the start was reported undoes the plumbing and reports the stop.
//   DEL    removes the pair and reports the stop; idempotent (DEL of something unknown succeeds).
//   CHECK  verifies the interface, address and routes ADD made (from prevResult).
//   VERSION the versions supported.
// The bus and the kernel are behind `CniDeps`, so the decisions here are tested without either.
import type { IntakeReply } from '../services/policy-writer/intake.ts';
import type { ReadyReply } from '../services/cell-agent/ready-gate.ts';
import { type IntakeCommandName, intakeCommand } from '../runtime/subjects.ts';
import { gatewayOf } from '../projections/ipv4.ts';
import { type LinkOps, hostIfOf } from './link.ts';
import {
  ARG_APP,
  ARG_INDEX,
  CNI_CODES,
  CNI_VERSION,
  CniError,
  type CniEnv,
  type NetfoldCniConfig,
  SUPPORTED_VERSIONS,
  addResult,
  containerOf,
  errorBody,
  parseCniConfig,
  parseCniEnv,
} from './spec.ts';

/** What one invocation talks to: netfold's intake and ready gate (over NATS), and the kernel. */
export type CniBus = {
  intake(command: IntakeCommandName, body: Record<string, unknown>): Promise<IntakeReply>;
  ready(cellId: string, containerId: string, timeoutMs: number): Promise<ReadyReply>;
  close(): Promise<void>;
};

export type CniDeps = { link: LinkOps; connect: (config: NetfoldCniConfig) => Promise<CniBus> };

export type CniOutcome = { stdout: string; exitCode: number };

/** Runs one invocation; never throws: every failure is the spec's error object on stdout and exit code 1. */
export async function runCni(env: Readonly<Record<string, string | undefined>>, stdin: string, deps: CniDeps): Promise<CniOutcome> {
  try {
    const e = parseCniEnv(env);
    if (e.command === 'VERSION') return ok({ cniVersion: CNI_VERSION, supportedVersions: [...SUPPORTED_VERSIONS] });
    const config = parseCniConfig(stdin, e.command);
    if (e.command === 'ADD') return ok(await add(e, config, deps));
    if (e.command === 'DEL') return (await del(e, config, deps), { stdout: '', exitCode: 0 });
    await check(e, config, deps.link);
    return { stdout: '', exitCode: 0 };
  } catch (err) {
    return { stdout: JSON.stringify(errorBody(err)) + '\n', exitCode: 1 };
  }
}

const ok = (body: unknown): CniOutcome => ({ stdout: JSON.stringify(body) + '\n', exitCode: 0 });

async function connected(config: NetfoldCniConfig, deps: CniDeps): Promise<CniBus> {
  try {
    return await deps.connect(config);
  } catch (err) {
    throw new CniError(CNI_CODES.tryAgainLater, `netfold is not reachable at ${config.natsUrl}`, (err as Error).message, err);
  }
}

/** An intake reply that refuses: retryable ones (a lost race, NATS unavailable) are "try again later". */
function refused(reply: Extract<IntakeReply, { ok: false }>, what: string): CniError {
  return new CniError(reply.retryable ? CNI_CODES.tryAgainLater : CNI_CODES.startRefused, `netfold refused the ${what}: ${reply.error}`, reply.code);
}

async function request(bus: CniBus, command: IntakeCommandName, body: Record<string, unknown>): Promise<IntakeReply> {
  try {
    return await bus.intake(command, body);
  } catch (err) {
    throw new CniError(CNI_CODES.tryAgainLater, 'netfold did not answer the intake request', (err as Error).message, err);
  }
}

async function add(e: CniEnv, config: NetfoldCniConfig, deps: CniDeps): Promise<unknown> {
  const { containerId, appId, instanceIndex } = containerOf(e);
  if (appId === undefined || instanceIndex === undefined) {
    throw new CniError(CNI_CODES.invalidEnvironment, `ADD needs CNI_ARGS ${ARG_APP}=<app id>;${ARG_INDEX}=<instance index>`);
  }
  const bus = await connected(config, deps);
  try {
    const reply = await request(bus, intakeCommand.startContainer, { containerId, appId, instanceIndex, cellId: config.cellId });
    if (!reply.ok) throw refused(reply, 'container start');
    if (!reply.ip || !reply.subnet) {
      throw new CniError(CNI_CODES.startRefused, `container ${containerId} was stopped before: netfold never starts a container id again`, reply.note ?? '');
    }
    const plumbing = { netns: e.netns, ifname: e.ifname, hostIf: hostIfOf(containerId, e.ifname), ip: reply.ip, gateway: gatewayOf(reply.subnet) };
    try {
      const macs = await deps.link.add(plumbing);
      if (config.waitReady) {
        const ready = await bus.ready(config.cellId, containerId, config.readyTimeoutMs).catch((err: Error) => ({ ready: false as const, error: err.message }));
        if (!ready.ready) throw new CniError(CNI_CODES.notEnforced, `cell ${config.cellId} did not enforce the start of ${containerId} in time`, ready.error);
      }
      return addResult(config.prevResult, { ...plumbing, ...macs });
    } catch (err) {
      // Undo: no interface left, and the start recorded as stopped (the address is free again).
      await deps.link.del(plumbing).catch(() => undefined);
      await bus.intake(intakeCommand.stopContainer, { containerId }).catch(() => undefined);
      throw err instanceof CniError ? err : new CniError(CNI_CODES.ioFailure, `plumbing ${e.ifname} into ${e.netns} failed`, (err as Error).message, err);
    }
  } finally {
    await bus.close();
  }
}

async function del(e: CniEnv, config: NetfoldCniConfig, deps: CniDeps): Promise<void> {
  const { containerId } = containerOf(e);
  try {
    await deps.link.del({ netns: e.netns, ifname: e.ifname, hostIf: hostIfOf(containerId, e.ifname) });
  } catch (err) {
    throw new CniError(CNI_CODES.ioFailure, `removing ${e.ifname} of ${containerId} failed`, (err as Error).message, err);
  }
  const bus = await connected(config, deps);
  try {
    const reply = await request(bus, intakeCommand.stopContainer, { containerId });
    if (!reply.ok) throw refused(reply, 'container stop');
  } finally {
    await bus.close();
  }
}

async function check(e: CniEnv, config: NetfoldCniConfig, link: LinkOps): Promise<void> {
  const { containerId } = containerOf(e);
  const prev = config.prevResult!;
  const interfaces = prev.interfaces ?? [];
  const mine = (prev.ips ?? []).find((ip) => {
    const i = ip.interface === undefined ? undefined : interfaces[ip.interface];
    return i?.name === e.ifname && i.sandbox === e.netns;
  });
  if (!mine?.gateway) throw new CniError(CNI_CODES.invalidConfig, `prevResult has no address of ${e.ifname} in ${e.netns}`);
  const problem = await link.check({
    netns: e.netns,
    ifname: e.ifname,
    hostIf: hostIfOf(containerId, e.ifname),
    ip: mine.address.split('/')[0]!,
    gateway: mine.gateway,
  });
  if (problem) throw new CniError(CNI_CODES.checkFailed, `CHECK of ${e.ifname} failed: ${problem}`);
}
