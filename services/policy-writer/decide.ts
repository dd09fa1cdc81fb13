// Deciders: pure functions from a command and the state it concerns to the events that record it. No clock, ids
// or I/O here: envelopes are added by the caller. A repeated command decides no events. Expected refusals are
// results (`rejected`), not exceptions.
import type { AppCommand, CellCommand, ContainerCommand, PolicyCommand } from '../../events/commands.ts';
import { type DomainEvent, type PolicyRule, policyKey } from '../../events/catalogue.ts';
import {
  type AppState,
  type CellRecord,
  type ContainerState,
  type Model,
  type PolicyRecord,
  nextFreeAddress,
  nextFreeSubnet,
  overlappingCells,
  underlayHolder,
} from '../../projections/model.ts';
import type { Dict } from '../../projections/dict.ts';
import { cidrContains, cidrWithin, gatewayOf, isNetworkOrBroadcast } from '../../projections/ipv4.ts';

/** A refusal; `retryable`: the same command sent again may succeed (a race lost to another writer). */
export type Rejection = { code: string; message: string; status: 400 | 403 | 404 | 409 | 422; retryable?: boolean };
export type Decision = { ok: true; events: DomainEvent[]; note?: string } | { ok: false; rejection: Rejection };

const accept = (events: DomainEvent[], note?: string): Decision => (note ? { ok: true, events, note } : { ok: true, events });
const reject = (status: Rejection['status'], code: string, message: string): Decision => ({ ok: false, rejection: { status, code, message } });

// ---- cells ------------------------------------------------------------------------------------------------------

export type CellDecisionState = {
  cell: CellRecord | undefined;
  /** The overlay every cell's container range must lie in. */
  overlayCidr: string;
  /** Active cells (other than this one) whose range overlaps the command's named range. */
  overlapping: readonly string[];
  /** Running containers on the cell. */
  running: number;
  /** For a registration without a range: the lowest free range of the lease size; undefined when none is left. */
  freeSubnet: string | undefined;
  /** The active cell (other than this one) registered with the command's underlay address, if any. */
  underlayHolder: string | undefined;
};

/** The state a cell command is decided on, read from the model (the writer and the decider tests build it alike). */
export function cellDecisionState(m: Model, cmd: CellCommand, o: { overlayCidr: string; leasePrefix: number }): CellDecisionState {
  const cellId = cmd.data.cellId;
  const reg = cmd.type === 'RegisterCell' ? cmd.data : undefined;
  return {
    cell: m.cells[cellId],
    overlayCidr: o.overlayCidr,
    overlapping: reg?.subnet !== undefined ? overlappingCells(m, cellId, reg.subnet) : [],
    running: Object.keys(m.containersByCell[cellId] ?? {}).length,
    freeSubnet: reg && reg.subnet === undefined ? nextFreeSubnet(m, o.overlayCidr, reg.prefix ?? o.leasePrefix) : undefined,
    underlayHolder: reg?.underlay !== undefined ? underlayHolder(m, cellId, reg.underlay) : undefined,
  };
}

const prefixOfCidr = (cidr: string) => Number(cidr.split('/')[1]);

export function decideCell(cmd: CellCommand, s: CellDecisionState): Decision {
  const { cell } = s;
  switch (cmd.type) {
    case 'RegisterCell': {
      const d = cmd.data;
      if (cell?.status === 'active') {
        if (d.subnet !== undefined && cell.subnet !== d.subnet)
          return reject(409, 'cell-conflict', `cell ${d.cellId} is registered with container range ${cell.subnet}`);
        if (d.prefix !== undefined && prefixOfCidr(cell.subnet) !== d.prefix)
          return reject(409, 'cell-conflict', `cell ${d.cellId} holds the range ${cell.subnet}, not a /${d.prefix}`);
        if (d.underlay !== undefined && cell.underlay !== d.underlay)
          return reject(409, 'cell-conflict', `cell ${d.cellId} is registered with underlay address ${cell.underlay ?? '(none)'}: decommission it first`);
        return accept([], 'already-registered');
      }
      if (d.underlay !== undefined && cidrContains(s.overlayCidr, d.underlay))
        return reject(400, 'underlay-inside-overlay', `underlay address ${d.underlay} lies inside the overlay ${s.overlayCidr}`);
      if (s.underlayHolder !== undefined) return reject(409, 'underlay-in-use', `underlay address ${d.underlay} is registered by cell ${s.underlayHolder}`);
      const underlay = d.underlay ?? null;
      if (d.subnet === undefined) {
        if (s.freeSubnet === undefined)
          return reject(409, 'overlay-exhausted', `no free /${d.prefix ?? '(lease size)'} range is left in the overlay ${s.overlayCidr}`);
        return accept([{ type: 'CellRegistered', v: 2, data: { cellId: d.cellId, subnet: s.freeSubnet, underlay, leased: true } }]);
      }
      if (!cidrWithin(s.overlayCidr, d.subnet))
        return reject(400, 'subnet-outside-overlay', `container range ${d.subnet} is not inside the overlay ${s.overlayCidr}`);
      if (s.overlapping.length > 0) return reject(409, 'subnet-overlap', `container range ${d.subnet} overlaps cell ${s.overlapping[0]}`);
      return accept([{ type: 'CellRegistered', v: 2, data: { cellId: d.cellId, subnet: d.subnet, underlay, leased: false } }]);
    }
    case 'DecommissionCell': {
      if (!cell) return accept([], 'not-registered');
      if (cell.status === 'decommissioned') return accept([], 'already-decommissioned');
      if (s.running > 0) return reject(409, 'cell-busy', `cell ${cell.id} still runs ${s.running} container(s): stop them first`);
      return accept([{ type: 'CellDecommissioned', v: 1, data: { cellId: cell.id } }]);
    }
    default: {
      const never: never = cmd;
      return never;
    }
  }
}

// ---- apps -------------------------------------------------------------------------------------------------------

export type AppDecisionState = {
  app: AppState | undefined;
  /** The live app that holds the command's name, if any. */
  nameOwner: string | undefined;
};

export function decideApp(cmd: AppCommand, s: AppDecisionState): Decision {
  const { app } = s;
  switch (cmd.type) {
    case 'RegisterApp': {
      const d = cmd.data;
      if (app?.deleted) return reject(409, 'app-deleted', `app ${d.appId} was deleted; app ids are not reused`);
      if (s.nameOwner && s.nameOwner !== d.appId) return reject(409, 'app-name-taken', `app name ${d.name} is already used by another app`);
      if (!app) return accept([{ type: 'AppRegistered', v: 1, data: { ...d } }]);
      if (app.spaceId !== d.spaceId || app.orgId !== d.orgId) {
        return reject(409, 'app-conflict', `app ${d.appId} is already registered in another space or org`);
      }
      if (app.name !== d.name) return accept([{ type: 'AppRenamed', v: 1, data: { appId: d.appId, name: d.name, previousName: app.name } }]);
      return accept([], 'already-registered');
    }
    case 'RenameApp': {
      const d = cmd.data;
      if (!app) return reject(404, 'app-not-found', `app ${d.appId} is not registered`);
      if (app.deleted) return reject(409, 'app-deleted', `app ${d.appId} was deleted`);
      if (app.name === d.name) return accept([], 'already-named');
      if (s.nameOwner && s.nameOwner !== d.appId) return reject(409, 'app-name-taken', `app name ${d.name} is already used by another app`);
      return accept([{ type: 'AppRenamed', v: 1, data: { appId: d.appId, name: d.name, previousName: app.name } }]);
    }
    case 'DeleteApp': {
      if (!app) return accept([], 'not-registered');
      if (app.deleted) return accept([], 'already-deleted');
      return accept([{ type: 'AppDeleted', v: 1, data: { appId: cmd.data.appId } }]);
    }
    default: {
      const never: never = cmd;
      return never;
    }
  }
}

// ---- containers -------------------------------------------------------------------------------------------------

export type ContainerDecisionState = {
  container: ContainerState | undefined;
  app: AppState | undefined;
  /** The cell a start names. */
  cell: CellRecord | undefined;
  /** The running container that holds the IP a start names, if any. */
  ipHolder: string | undefined;
  /** For a start without an IP: the lowest free address of the cell's range (undefined: none left, or no active cell). */
  freeIp: string | undefined;
  overlayCidr: string;
};

/** The state a container command is decided on, read from the model. */
export function containerDecisionState(m: Model, cmd: ContainerCommand, overlayCidr: string): ContainerDecisionState {
  const start = cmd.type === 'StartContainer' ? cmd.data : undefined;
  return {
    container: m.containers[cmd.data.containerId],
    app: start ? m.apps[start.appId] : undefined,
    cell: start ? m.cells[start.cellId] : undefined,
    ipHolder: start?.ip !== undefined ? m.containersByIp[start.ip] : undefined,
    freeIp: start && start.ip === undefined ? nextFreeAddress(m, start.cellId) : undefined,
    overlayCidr,
  };
}

export function decideContainer(cmd: ContainerCommand, s: ContainerDecisionState): Decision {
  const { container } = s;
  switch (cmd.type) {
    case 'StartContainer': {
      const d = cmd.data;
      if (container?.status === 'stopped') return accept([], 'already-stopped');
      if (container) {
        const same =
          container.appId === d.appId &&
          container.cellId === d.cellId &&
          (d.ip === undefined || container.ip === d.ip) &&
          container.instanceIndex === d.instanceIndex &&
          (container.lifecycle ?? 'running') === (d.lifecycle ?? 'running');
        return same ? accept([], 'already-running') : reject(409, 'container-conflict', `container ${d.containerId} is already running with other details`);
      }
      if (!s.app) return reject(404, 'app-not-found', `app ${d.appId} is not registered`);
      if (s.app.deleted) return reject(409, 'app-deleted', `app ${d.appId} was deleted`);
      if (!s.cell) return reject(404, 'cell-not-found', `cell ${d.cellId} is not registered`);
      if (s.cell.status === 'decommissioned') return reject(409, 'cell-decommissioned', `cell ${d.cellId} was decommissioned`);
      if (d.ip === undefined) {
        if (s.freeIp === undefined) return reject(409, 'cell-addresses-exhausted', `no free address is left in cell ${d.cellId}'s range ${s.cell.subnet}`);
        return accept([{ type: 'ContainerStarted', v: 2, data: { ...d, ip: s.freeIp, lifecycle: d.lifecycle ?? 'running' } }], 'address-allocated');
      }
      if (!cidrContains(s.overlayCidr, d.ip)) return reject(400, 'ip-outside-overlay', `IP ${d.ip} is not inside the overlay ${s.overlayCidr}`);
      if (!cidrContains(s.cell.subnet, d.ip))
        return reject(400, 'ip-outside-cell', `IP ${d.ip} is not inside cell ${d.cellId}'s container range ${s.cell.subnet}`);
      if (isNetworkOrBroadcast(s.cell.subnet, d.ip) || d.ip === gatewayOf(s.cell.subnet))
        return reject(400, 'ip-reserved', `IP ${d.ip} is the network, gateway or broadcast address of ${s.cell.subnet}`);
      if (s.ipHolder !== undefined && s.ipHolder !== d.containerId) {
        return reject(409, 'ip-in-use', `IP ${d.ip} is held by running container ${s.ipHolder}: stop it first`);
      }
      return accept([{ type: 'ContainerStarted', v: 2, data: { ...d, ip: d.ip, lifecycle: d.lifecycle ?? 'running' } }]);
    }
    case 'StopContainer': {
      const id = cmd.data.containerId;
      if (container?.status === 'stopped') return accept([], 'already-stopped');
      if (!container) {
        // Recorded so that a start arriving after its stop (reordering) is ignored.
        return accept([{ type: 'ContainerStopped', v: 1, data: { containerId: id, appId: null, cellId: null, wasRunning: false } }], 'stopped-before-start');
      }
      return accept([{ type: 'ContainerStopped', v: 1, data: { containerId: id, appId: container.appId, cellId: container.cellId, wasRunning: true } }]);
    }
    default: {
      const never: never = cmd;
      return never;
    }
  }
}

// ---- policies ---------------------------------------------------------------------------------------------------

/** Who is asking: admins may touch every app; others only apps in their spaces. */
export type Access = { admin: boolean; spaces: readonly string[] };

export type PolicyDecisionState = {
  access: Access;
  /** Every app the command names (source and destinations); undefined when unknown. */
  apps: Dict<AppState | undefined>;
  /** The source app's current policies by key. */
  existing: Dict<PolicyRecord>;
  /** Most policies a non-admin may hold per source app. */
  quota: number;
  /** Apps that already have a tag, and how many tags are left. */
  tagged: Dict<number>;
  freeTags: number;
};

const NOT_ACCESSIBLE = 'one or more applications cannot be found or accessed';

/** Checks that the caller may name every app of a policy command. Both ends must be accessible. */
function checkAccess(access: Access, appIds: readonly string[], apps: Dict<AppState | undefined>, mustExist: boolean): Rejection | undefined {
  if (access.admin && !mustExist) return undefined;
  for (const id of appIds) {
    const app = apps[id];
    if (!app || app.deleted) {
      if (mustExist || !access.admin) return { status: 403, code: 'app-not-accessible', message: NOT_ACCESSIBLE };
      continue;
    }
    if (!access.admin && !access.spaces.includes(app.spaceId)) return { status: 403, code: 'app-not-accessible', message: NOT_ACCESSIBLE };
  }
  return undefined;
}

function uniqueRules(rules: readonly PolicyRule[]): PolicyRule[] {
  const seen = new Map<string, PolicyRule>();
  for (const r of rules) if (!seen.has(policyKey(r))) seen.set(policyKey(r), r);
  return [...seen.values()];
}

export function decidePolicies(cmd: PolicyCommand, s: PolicyDecisionState): Decision {
  const { sourceAppId, policies } = cmd.data;
  const appIds = [sourceAppId, ...policies.map((p) => p.destAppId)];
  switch (cmd.type) {
    case 'CreatePolicies': {
      const denied = checkAccess(s.access, appIds, s.apps, true);
      if (denied) return { ok: false, rejection: denied };
      const fresh = uniqueRules(policies).filter((r) => !s.existing[policyKey(r)]);
      if (fresh.length === 0) return accept([], 'already-present');
      if (!s.access.admin && Object.keys(s.existing).length + fresh.length > s.quota) {
        return reject(403, 'quota-exceeded', 'policy quota exceeded');
      }
      const untagged = new Set(appIds.filter((id) => s.tagged[id] === undefined));
      if (untagged.size > s.freeTags) return reject(409, 'tags-exhausted', 'no free tags are left for new apps in policies');
      return accept([{ type: 'PoliciesCreated', v: 1, data: { sourceAppId, policies: fresh } }]);
    }
    case 'DeletePolicies': {
      const denied = checkAccess(s.access, appIds, s.apps, false);
      if (denied) return { ok: false, rejection: denied };
      const present = uniqueRules(policies).filter((r) => s.existing[policyKey(r)]);
      if (present.length === 0) return accept([], 'not-present');
      return accept([{ type: 'PoliciesDeleted', v: 1, data: { sourceAppId, policies: present, reason: cmd.data.reason } }]);
    }
    default: {
      const never: never = cmd;
      return never;
    }
  }
}
