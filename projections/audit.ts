// The audit trail's view of an event (pure): the apps it concerns, one line of what it did, and the filters
// `netfold audit` and the console's live feed apply.
import type { EventEnvelope, RecordedEvent } from '../events/catalogue.ts';

/** The apps an event concerns (for filtering). */
export function appsOf(e: EventEnvelope): string[] {
  switch (e.type) {
    case 'CellRegistered':
    case 'CellDecommissioned':
      return [];
    case 'AppRegistered':
    case 'AppRenamed':
    case 'AppDeleted':
      return [e.data.appId];
    case 'ContainerStarted':
      return [e.data.appId];
    case 'ContainerStopped':
      return e.data.appId ? [e.data.appId] : [];
    case 'PoliciesCreated':
    case 'PoliciesDeleted':
      return [e.data.sourceAppId, ...e.data.policies.map((p) => p.destAppId)];
    case 'SecurityGroupCreated':
    case 'SecurityGroupUpdated':
    case 'SecurityGroupDeleted':
    case 'SecurityGroupSpacesBound':
    case 'SecurityGroupSpacesUnbound':
      return [];
  }
}

/** One line of what an event did. */
function effectOf(e: EventEnvelope): string {
  const d = e.data as Record<string, unknown>;
  switch (e.type) {
    case 'CellRegistered':
      return `cell ${e.data.cellId} registered with container range ${e.data.subnet}${e.data.leased ? ' (leased)' : ''}${
        e.data.underlay ? ` at underlay ${e.data.underlay}` : ''
      }`;
    case 'CellDecommissioned':
      return `cell ${e.data.cellId} decommissioned`;
    case 'AppRegistered':
      return `app ${e.data.appId} "${e.data.name}" registered in space ${e.data.spaceId}`;
    case 'AppRenamed':
      return `app ${e.data.appId} renamed ${e.data.previousName} -> ${e.data.name}`;
    case 'AppDeleted':
      return `app ${e.data.appId} deleted`;
    case 'ContainerStarted':
      return `container ${e.data.containerId} of ${e.data.appId} started on ${e.data.cellId} at ${e.data.ip} (#${e.data.instanceIndex})`;
    case 'ContainerStopped':
      return `container ${e.data.containerId} stopped${e.data.wasRunning ? '' : ' (before any start: a later start is ignored)'}`;
    case 'PoliciesCreated':
    case 'PoliciesDeleted': {
      const verb = e.type === 'PoliciesCreated' ? 'allowed' : `revoked${e.data.reason === 'app-deleted' ? ' (app deleted)' : ''}`;
      const ports = (p: { startPort: number; endPort: number }) => (p.startPort === p.endPort ? `${p.startPort}` : `${p.startPort}-${p.endPort}`);
      return `${verb}: ${e.data.policies.map((p) => `${e.data.sourceAppId} -> ${p.destAppId} ${p.protocol}/${ports(p)}`).join(', ')}`;
    }
    case 'SecurityGroupCreated':
    case 'SecurityGroupUpdated':
    case 'SecurityGroupDeleted':
    case 'SecurityGroupSpacesBound':
    case 'SecurityGroupSpacesUnbound':
      return securityGroupEffect(e);
  }
  return JSON.stringify(d);
}

/** One line of what a security group event did. */
function securityGroupEffect(e: EventEnvelope): string {
  switch (e.type) {
    case 'SecurityGroupCreated': {
      const d = e.data;
      const global = (['running', 'staging'] as const).filter((l) => d.globallyEnabled[l]);
      return `security group ${d.groupId} "${d.name}" created with ${d.rules.length} rule(s)${global.length > 0 ? `, global for ${global.join('+')}` : ''}${
        d.runningSpaces.length + d.stagingSpaces.length > 0 ? `, bound running [${d.runningSpaces.join(',')}] staging [${d.stagingSpaces.join(',')}]` : ''
      }`;
    }
    case 'SecurityGroupUpdated': {
      const d = e.data;
      const global = (['running', 'staging'] as const).filter((l) => d.globallyEnabled[l]);
      return `security group ${d.groupId} updated: "${d.name}", ${d.rules.length} rule(s), global [${global.join(',')}]`;
    }
    case 'SecurityGroupDeleted':
      return `security group ${e.data.groupId} "${e.data.name}" deleted`;
    case 'SecurityGroupSpacesBound':
      return `security group ${e.data.groupId} bound to ${e.data.lifecycle} spaces ${e.data.spaceIds.join(', ')}`;
    case 'SecurityGroupSpacesUnbound':
      return `security group ${e.data.groupId} unbound from ${e.data.lifecycle} spaces ${e.data.spaceIds.join(', ')}`;
    default:
      return e.type;
  }
}

/** `changeSet`: the correlation id the events of one change set share (a policy file applied, one request). */
export type AuditFilter = { app?: string; actor?: string; type?: string; since?: number; until?: number; changeSet?: string };
export type AuditEntry = { revision: number; at: string; actor: string; type: string; correlationId: string; effect: string };

export function matches(rec: RecordedEvent, f: AuditFilter): boolean {
  const e = rec.event;
  if (f.app && !appsOf(e).includes(f.app)) return false;
  if (f.actor && e.actor !== f.actor && !e.actor.endsWith(`:${f.actor}`)) return false;
  if (f.type && e.type !== f.type) return false;
  if (f.changeSet && e.correlationId !== f.changeSet) return false;
  const at = Date.parse(e.at);
  if (f.since !== undefined && at < f.since) return false;
  if (f.until !== undefined && at > f.until) return false;
  return true;
}

export const auditEntry = (rec: RecordedEvent): AuditEntry => ({
  revision: rec.seq,
  at: rec.event.at,
  actor: rec.event.actor,
  type: rec.event.type,
  correlationId: rec.event.correlationId,
  effect: effectOf(rec.event),
});
