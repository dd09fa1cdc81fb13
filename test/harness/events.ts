// Builders for recorded events, for fold and decider tests (given / when / then).
import { readFileSync } from 'node:fs';
import { type DomainEvent, type RecordedEvent, parseEvent } from '../../events/catalogue.ts';
import { eventSubject } from '../../runtime/subjects.ts';
import { type Model, foldEvents, initialModel } from '../../projections/model.ts';

const BASE_TIME = Date.parse('2026-01-01T00:00:00.000Z');
const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';

/** A deterministic ULID-shaped id for test event n. */
export function testId(n: number): string {
  let s = '';
  let v = n;
  for (let i = 0; i < 26; i++) {
    s = CROCKFORD[v % 32] + s;
    v = Math.floor(v / 32);
  }
  return s;
}

export function subjectOf(e: DomainEvent): string {
  switch (e.type) {
    case 'CellRegistered':
    case 'CellDecommissioned':
      return eventSubject.cell(e.data.cellId);
    case 'AppRegistered':
    case 'AppRenamed':
    case 'AppDeleted':
      return eventSubject.app(e.data.appId);
    case 'ContainerStarted':
    case 'ContainerStopped':
      return eventSubject.container(e.data.containerId);
    case 'PoliciesCreated':
    case 'PoliciesDeleted':
      return eventSubject.policy(e.data.sourceAppId);
    case 'SecurityGroupCreated':
    case 'SecurityGroupUpdated':
    case 'SecurityGroupDeleted':
    case 'SecurityGroupSpacesBound':
    case 'SecurityGroupSpacesUnbound':
      return eventSubject.securityGroup(e.data.groupId);
  }
}

/** Records events as if appended in order from sequence `firstSeq`. */
export function record(events: DomainEvent[], firstSeq = 1, actor = 'user:test'): RecordedEvent[] {
  return events.map((e, i) => {
    const seq = firstSeq + i;
    return {
      seq,
      subject: subjectOf(e),
      event: { ...e, id: testId(seq), at: new Date(BASE_TIME + seq * 1000).toISOString(), actor, correlationId: `c${seq}` },
    };
  });
}

export function modelOf(events: DomainEvent[]): Model {
  return foldEvents(initialModel(), record(events));
}

/** The container range of test cell `cell-N` (N = 1..255): 10.255.N.0/24; other ids get none (register by hand). */
export function subnetOfCell(cellId: string): string {
  const n = /^cell-(\d+)$/.exec(cellId);
  if (!n || Number(n[1]) < 1 || Number(n[1]) > 255) throw new Error(`no default subnet for test cell ${cellId}`);
  return `10.255.${Number(n[1])}.0/24`;
}

export const ev = {
  cell: (cellId = 'cell-1', subnet = subnetOfCell(cellId), underlay: string | null = null, leased = false): DomainEvent => ({
    type: 'CellRegistered',
    v: 2,
    data: { cellId, subnet, underlay, leased },
  }),
  decommissioned: (cellId = 'cell-1'): DomainEvent => ({ type: 'CellDecommissioned', v: 1, data: { cellId } }),
  registered: (appId: string, name = appId, spaceId = 's1', orgId = 'o1'): DomainEvent => ({
    type: 'AppRegistered',
    v: 1,
    data: { appId, name, spaceId, orgId },
  }),
  renamed: (appId: string, name: string, previousName: string): DomainEvent => ({ type: 'AppRenamed', v: 1, data: { appId, name, previousName } }),
  deleted: (appId: string): DomainEvent => ({ type: 'AppDeleted', v: 1, data: { appId } }),
  started: (
    containerId: string,
    appId: string,
    cellId = 'cell-1',
    ip = '10.255.1.2',
    instanceIndex = 0,
    lifecycle: 'running' | 'staging' = 'running',
  ): DomainEvent => ({
    type: 'ContainerStarted',
    v: 2,
    data: { containerId, appId, cellId, ip, instanceIndex, lifecycle },
  }),
  stopped: (containerId: string, appId: string | null = null, cellId: string | null = null, wasRunning = appId !== null): DomainEvent => ({
    type: 'ContainerStopped',
    v: 1,
    data: { containerId, appId, cellId, wasRunning },
  }),
  created: (sourceAppId: string, destAppId: string, startPort = 8080, endPort = startPort, protocol: 'tcp' | 'udp' = 'tcp'): DomainEvent => ({
    type: 'PoliciesCreated',
    v: 1,
    data: { sourceAppId, policies: [{ destAppId, protocol, startPort, endPort }] },
  }),
  removed: (sourceAppId: string, destAppId: string, startPort = 8080, endPort = startPort, protocol: 'tcp' | 'udp' = 'tcp'): DomainEvent => ({
    type: 'PoliciesDeleted',
    v: 1,
    data: { sourceAppId, policies: [{ destAppId, protocol, startPort, endPort }], reason: 'requested' },
  }),
};

/** A recorded log (test/fixtures/<file>, one `{ seq, subject, event }` per line), every event parsed as read back. */
export function loadFixture(file: string): RecordedEvent[] {
  return readFileSync(new URL(`../fixtures/${file}`, import.meta.url), 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((line, i) => {
      const raw = JSON.parse(line) as { seq: number; subject: string; event: unknown };
      const parsed = parseEvent(raw.event);
      if (!parsed.ok) throw new Error(`${file}:${i + 1}: ${JSON.stringify(parsed.issues)}`);
      return { seq: raw.seq, subject: raw.subject, event: parsed.value };
    });
}
