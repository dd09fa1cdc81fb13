// Trust on the bus, against a real secured nats-server: every role (runtime/authz.ts) does what it needs through the
// product's own code paths, and the server refuses, with a permissions violation, what it must not do. The role ×
// action matrix below is observed, not assumed: each cell runs the action as that role and records the server's
// answer; the test then compares it with the expected matrix and prints it (the same actions succeed as admin, so
// a check that cannot fail would show up as "allowed" there).
import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { errors as natsErrors, headers, type NatsConnection } from '@nats-io/nats-core';
import { DeliverPolicy } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { Objm } from '@nats-io/obj';
import { eventually, startNats } from './harness/nats.ts';
import { TEST_SECRET } from './harness/gateway.ts';
import { permissionsOf, ROLES, type Principal } from '../runtime/authz.ts';
import type { Bus } from '../runtime/nats.ts';
import { EventLog } from '../runtime/event-log.ts';
import { BucketWriter, kvLatest } from '../runtime/buckets.ts';
import { StreamPublisher, isPermissionViolation, kvLayout, objLayout } from '../runtime/nats-adapter.ts';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET, EVENTS_STREAM, INTAKE_QUEUE, PLANNER_CHECKPOINT_BUCKET, PLANNER_MEMBERS_BUCKET } from '../runtime/subjects.ts';
import { INTAKE_SUBJECTS, eventSubject, intakeCommand, intakeSubject, readySubject } from '../runtime/subjects.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, EMPTY_CELL_HASH, cellSubject, outputMessage } from '../projections/cell-stream.ts';
import { emptyCellState } from '../projections/cell.ts';
import { startPolicyWriter } from '../services/policy-writer/service.ts';
import type { IntakeReply } from '../services/policy-writer/intake.ts';
import { CellFeed } from '../services/cell-agent/feed.ts';
import { Membership } from '../services/topology-planner/membership.ts';
import { CheckpointStore } from '../services/topology-planner/checkpointer.ts';
import { enforcementOf } from '../services/topology-planner/enforcement.ts';
import { followRecords } from '../services/discovery/follower.ts';
import { DiscoveryIndex } from '../services/discovery/records.ts';
import { discoveryRecordOf } from '../projections/discovery-record.ts';
import { subnetOfCell } from './harness/events.ts';

const SECURED: Principal[] = [
  { role: 'writer' },
  { role: 'planner' },
  { role: 'agent', cellId: 'cell-1' },
  { role: 'agent', cellId: 'cell-2' },
  { role: 'platform', id: 'cc' },
  { role: 'discovery' },
  { role: 'operator' },
];
/** The matrix's columns: each role once (the agent is the agent of cell-1). */
const COLUMNS = ['writer', 'planner', 'agent_cell-1', 'platform_cc', 'discovery', 'operator', 'admin'] as const;
type Column = (typeof COLUMNS)[number];
type Outcome = 'allowed' | 'refused' | `error: ${string}`;

/** A connection and the permission violations the server has reported on it. */
type Conn = { bus: Bus; violations: Error[] };

function watchViolations(bus: Bus): Conn {
  const violations: Error[] = [];
  void (async () => {
    for await (const s of bus.nc.status()) {
      if (s.type === 'error' && s.error instanceof natsErrors.PermissionViolationError) violations.push(s.error);
    }
  })();
  return { bus, violations };
}

/**
 * Runs `action` and reads the server's answer: `refused` when the server reported a permissions violation (the
 * -ERR arrives before the PONG of the flush that follows; setImmediate lets the status iterator deliver it),
 * `allowed` when the action completed, otherwise the error it failed with.
 */
async function outcomeOf(c: Conn, action: (bus: Bus) => Promise<unknown>): Promise<Outcome> {
  const before = c.violations.length;
  let failure: unknown;
  try {
    await action(c.bus);
  } catch (err) {
    failure = err;
  }
  await c.bus.nc.flush();
  await new Promise((r) => setImmediate(r));
  if (c.violations.length > before || isPermissionViolation(failure)) return 'refused';
  if (failure === undefined) return 'allowed';
  const code = (failure as { code?: unknown }).code;
  return `error: ${code === undefined ? (failure as Error).message : String(code)}`;
}

/** A subscription that is kept until the server has seen it (flush), then dropped. */
async function subscribeOnce(nc: NatsConnection, subject: string, queue?: string): Promise<void> {
  const sub = nc.subscribe(subject, queue ? { queue } : {});
  try {
    await nc.flush();
  } finally {
    sub.unsubscribe();
  }
}

/** A plain publish; a refused one is reported by the server as a permissions violation before the flush returns. */
async function publishOnce(nc: NatsConnection, subject: string): Promise<void> {
  nc.publish(subject, 'x');
  await nc.flush();
}

/** A JetStream publish answered with a PubAck (a refused subject rejects the request at once). */
async function publishToStream(nc: NatsConnection, subject: string, body: string, hdrs?: ReturnType<typeof headers>): Promise<void> {
  const reply = await nc.request(subject, body, { timeout: 5000, ...(hdrs && { headers: hdrs }) });
  const ack = reply.json<{ seq?: number; error?: { err_code: number } }>();
  if (typeof ack.seq !== 'number') throw Object.assign(new Error('stream refused the message'), { code: ack.error?.err_code });
}

async function jsApi(nc: NatsConnection, subject: string, body: unknown = {}): Promise<void> {
  const r = (await nc.request(subject, JSON.stringify(body), { timeout: 5000 })).json<{ error?: { err_code: number } }>();
  if (r.error) throw Object.assign(new Error('JetStream API error'), { code: r.error.err_code });
}

const OBJ_STREAM = objLayout.stream(PLANNER_CHECKPOINT_BUCKET);

/** Actions that leave the topology in place; the expected roles that may do each. */
const ACTIONS: { action: string; allowed: Column[]; run: (bus: Bus) => Promise<unknown> }[] = [
  { action: 'JetStream account info ($JS.API.INFO)', allowed: ['writer', 'planner', 'agent_cell-1', 'discovery', 'operator', 'admin'], run: (b) => b.jsm.getAccountInfo() },
  {
    action: 'publish a forged event on nf.evt.policy.forged',
    allowed: ['writer', 'admin'],
    run: (b) => publishToStream(b.nc, eventSubject.policy('forged'), JSON.stringify({ forged: true })),
  },
  { action: 'read events (ordered consumer on NF_EVENTS)', allowed: ['writer', 'planner', 'operator', 'admin'], run: (b) => firstEvent(b) },
  {
    action: 'last-by-subject read in NF_EVENTS',
    allowed: ['writer', 'planner', 'operator', 'admin'],
    run: (b) => new EventLog(b).lastSubjectSeq(eventSubject.cell('cell-1')),
  },
  { action: 'serve intake (nf.cmd.*.*.* in queue policy-writer)', allowed: ['writer', 'admin'], run: (b) => subscribeOnce(b.nc, INTAKE_SUBJECTS, INTAKE_QUEUE) },
  { action: 'subscribe nf.cmd.> (no queue)', allowed: ['admin'], run: (b) => subscribeOnce(b.nc, 'nf.cmd.>') },
  {
    action: 'intake request as itself (nf.cmd.cc.app.register)',
    allowed: ['platform_cc', 'admin'],
    run: (b) => b.nc.request(intakeSubject('cc', intakeCommand.registerApp), JSON.stringify({ appId: 'a1', name: 'a1', spaceId: 's', orgId: 'o' }), { timeout: 10_000 }),
  },
  {
    action: 'intake request as another caller (nf.cmd.other.app.register)',
    allowed: ['admin'],
    run: (b) => b.nc.request(intakeSubject('other', intakeCommand.registerApp), JSON.stringify({ appId: 'a2', name: 'a2', spaceId: 's', orgId: 'o' }), { timeout: 10_000 }),
  },
  { action: 'publish a delta for cell-2', allowed: ['planner', 'admin'], run: (b) => publishToStream(b.nc, cellSubject.delta('cell-2'), '{}') },
  { action: "follow cell-1's deltas (ordered consumer)", allowed: ['writer', 'planner', 'agent_cell-1', 'operator', 'admin'], run: (b) => firstDelta(b, 'cell-1') },
  { action: "follow cell-2's deltas (ordered consumer)", allowed: ['writer', 'planner', 'operator', 'admin'], run: (b) => firstDelta(b, 'cell-2') },
  { action: "subscribe to cell-1's deltas (live)", allowed: ['agent_cell-1', 'admin'], run: (b) => subscribeOnce(b.nc, cellSubject.delta('cell-1')) },
  { action: "subscribe to cell-2's deltas (live)", allowed: ['admin'], run: (b) => subscribeOnce(b.nc, cellSubject.delta('cell-2')) },
  {
    action: "direct-get cell-1's snapshot",
    allowed: ['writer', 'planner', 'agent_cell-1', 'operator', 'admin'],
    run: (b) => b.jsm.direct.getMessage(CELL_SNAPSHOTS_STREAM, { last_by_subj: cellSubject.snapshot('cell-1') }),
  },
  {
    action: "direct-get cell-2's snapshot",
    allowed: ['writer', 'planner', 'operator', 'admin'],
    run: (b) => b.jsm.direct.getMessage(CELL_SNAPSHOTS_STREAM, { last_by_subj: cellSubject.snapshot('cell-2') }),
  },
  { action: 'put status key cell-1', allowed: ['agent_cell-1', 'admin'], run: (b) => publishToStream(b.nc, kvLayout.subject(CELL_STATUS_BUCKET, 'cell-1'), '{}') },
  { action: 'put discovery key cell-2', allowed: ['admin'], run: (b) => publishToStream(b.nc, kvLayout.subject(DISCOVERY_BUCKET, 'cell-2'), '{}') },
  {
    action: 'delete status key cell-2 (KV-Operation DEL)',
    allowed: ['admin'],
    run: (b) => {
      const h = headers();
      h.set('KV-Operation', 'DEL');
      return publishToStream(b.nc, kvLayout.subject(CELL_STATUS_BUCKET, 'cell-2'), '', h);
    },
  },
  { action: 'read discovery records', allowed: ['writer', 'discovery', 'operator', 'admin'], run: (b) => kvLatest(b, DISCOVERY_BUCKET) },
  { action: 'read cell statuses', allowed: ['writer', 'operator', 'admin'], run: (b) => kvLatest(b, CELL_STATUS_BUCKET) },
  { action: 'read planner members', allowed: ['writer', 'planner', 'operator', 'admin'], run: (b) => kvLatest(b, PLANNER_MEMBERS_BUCKET) },
  { action: 'answer nf.ready.cell-1', allowed: ['agent_cell-1', 'admin'], run: (b) => subscribeOnce(b.nc, readySubject('cell-1')) },
  { action: 'answer nf.ready.cell-2', allowed: ['admin'], run: (b) => subscribeOnce(b.nc, readySubject('cell-2')) },
  { action: 'answer nf.cell.state.*', allowed: ['planner', 'admin'], run: (b) => subscribeOnce(b.nc, cellSubject.allStates) },
  { action: 'request nf.cell.state.cell-1', allowed: ['agent_cell-1', 'admin'], run: (b) => b.nc.request(cellSubject.state('cell-1'), '', { timeout: 5000 }) },
  { action: 'request nf.ready.cell-1 (ready gate)', allowed: ['platform_cc', 'admin'], run: (b) => b.nc.request(readySubject('cell-1'), '{}', { timeout: 5000 }) },
  { action: "subscribe _INBOX.> (others' replies)", allowed: ['admin'], run: (b) => subscribeOnce(b.nc, '_INBOX.>') },
  // Replies go only into the inboxes of those a role answers (no allow_responses: see runtime/authz.ts).
  { action: "publish into an agent's inbox (a reply to its cell-state request)", allowed: ['planner', 'admin'], run: (b) => publishOnce(b.nc, '_INBOX.agent.cell-1.x') },
  { action: "publish into a platform's inbox (a reply to its request)", allowed: ['writer', 'agent_cell-1', 'admin'], run: (b) => publishOnce(b.nc, '_INBOX.platform.cc.x') },
  { action: 'create a stream', allowed: ['admin'], run: (b) => b.jsm.streams.add({ name: `X_${Math.random().toString(36).slice(2)}`, subjects: [`x.${Date.now()}`] }) },
  { action: 'purge the checkpoint store (old chunks)', allowed: ['planner', 'admin'], run: (b) => jsApi(b.nc, `$JS.API.STREAM.PURGE.${OBJ_STREAM}`, { filter: '$O.none.C.x' }) },
];

/** Destructive actions, run last (admin last of all): only admin passes the server's permissions. */
const DESTRUCTIVE: { action: string; run: (bus: Bus) => Promise<unknown> }[] = [
  { action: `STREAM.PURGE ${EVENTS_STREAM}`, run: (b) => jsApi(b.nc, `$JS.API.STREAM.PURGE.${EVENTS_STREAM}`) },
  { action: `STREAM.UPDATE ${EVENTS_STREAM} max_msgs=1`, run: async (b) => b.jsm.streams.update(EVENTS_STREAM, { max_msgs: 1 }) },
  { action: `STREAM.DELETE ${EVENTS_STREAM}`, run: (b) => b.jsm.streams.delete(EVENTS_STREAM) },
  { action: 'delete the checkpoint store', run: (b) => b.jsm.streams.delete(OBJ_STREAM) },
  { action: `delete KV bucket ${CELL_STATUS_BUCKET}`, run: (b) => b.jsm.streams.delete(kvLayout.stream(CELL_STATUS_BUCKET)) },
];

async function firstEvent(b: Bus): Promise<void> {
  for await (const r of new EventLog(b).read(1, undefined, 1)) if (!('event' in r)) throw new Error('not an event');
}

async function firstDelta(b: Bus, cellId: string): Promise<void> {
  const c = await b.js.consumers.get(CELL_DELTAS_STREAM, { filter_subjects: cellSubject.delta(cellId), deliver_policy: DeliverPolicy.All });
  const m = await c.next({ expires: 5000 });
  if (m?.subject !== cellSubject.delta(cellId)) throw new Error('no delta');
}

t.test('roles on a secured nats-server', async (t) => {
  const nats = await startNats(t, { secured: SECURED });
  const admin = await nats.connect('admin'); // the topology, and the buckets the services would create
  const kvm = new Kvm(admin.js);
  await kvm.create(CELL_STATUS_BUCKET, { history: 1 });
  await kvm.create(DISCOVERY_BUCKET, { history: 1 });
  await kvm.create(PLANNER_MEMBERS_BUCKET, { history: 1, ttl: 30_000 });
  await new Objm(admin.js).create(PLANNER_CHECKPOINT_BUCKET);
  const conns = new Map<string, Conn>();
  for (const name of [...nats.credentials.keys()]) conns.set(name, watchViolations(name === 'admin' ? admin : await nats.connectAs(name)));
  const as = (name: string) => conns.get(name)!.bus;
  // writer: the real policy-writer (log follower, writer, intake) on the writer's connection
  const writer = await startPolicyWriter({
    bus: as('writer'),
    log: nats.log,
    config: { httpHost: '127.0.0.1', httpPort: 0, httpBodyLimit: 1 << 20, policyQuota: 150, maxPoliciesPerRequest: 1000, tokenSecret: TEST_SECRET, overlayCidr: '10.255.0.0/16' },
  });
  t.teardown(() => writer.stop());
  // responders the matrix's requests need: a planner answering the cell state, the agent of cell-1 its ready gate
  const state = outputMessage({ kind: 'snapshot', cellId: 'cell-1', revision: 1, hash: EMPTY_CELL_HASH, state: emptyCellState() }).body;
  as('planner').nc.subscribe(cellSubject.allStates, { callback: (_e, m) => void m.respond(state) });
  as('agent_cell-1').nc.subscribe(readySubject('cell-1'), { callback: (_e, m) => void m.respond(JSON.stringify({ ready: false, code: 'timeout' })) });
  const eventCount = async (subject: string) => (await admin.jsm.streams.info(EVENTS_STREAM, { subjects_filter: subject })).state.subjects?.[subject] ?? 0;

  t.test('anonymous connections are refused', async (t) => {
    const err = await connect({ servers: nats.server.url, maxReconnectAttempts: 0 }).then(
      (nc) => nc.close().then(() => null),
      (e: unknown) => e,
    );
    t.type(err, natsErrors.AuthorizationError, 'the server refuses a connection without credentials');
  });

  let revision = 0;
  t.test('the product code paths work as their roles', async (t) => {
    // platform → intake → writer → EventLog.append (the writer is the one that appends)
    for (const cellId of ['cell-1', 'cell-2']) {
      const msg = await as('platform_cc').nc.request(intakeSubject('cc', intakeCommand.registerCell), JSON.stringify({ cellId, subnet: subnetOfCell(cellId) }), { timeout: 10_000 });
      const reply = msg.json<IntakeReply>();
      t.ok(reply.ok, `platform registers ${cellId} through intake, answered by the writer`);
      if (reply.ok) revision = Math.max(revision, reply.revision);
    }
    t.equal(await eventCount(eventSubject.cell('cell-1')), 1, 'the writer appended the event');
    const stored = await as('admin').jsm.direct.getMessage(EVENTS_STREAM, { last_by_subj: eventSubject.cell('cell-1') });
    t.equal(stored!.json<{ actor: string }>().actor, 'platform:cc', 'the actor is the caller the connection may publish as');

    // planner: snapshot and delta of each cell through StreamPublisher; membership; checkpoints (put twice)
    const planner = as('planner');
    const publishers = { snapshot: new StreamPublisher(planner.nc, CELL_SNAPSHOTS_STREAM), delta: new StreamPublisher(planner.nc, CELL_DELTAS_STREAM) };
    for (const cellId of ['cell-1', 'cell-2']) {
      for (const o of [
        { kind: 'snapshot' as const, cellId, revision: 1, hash: EMPTY_CELL_HASH, state: emptyCellState() },
        { kind: 'delta' as const, cellId, revision: revision, prevRevision: 1, ops: [], hash: EMPTY_CELL_HASH, at: new Date().toISOString() },
      ]) {
        const { subject, msgId, body } = outputMessage(o);
        await publishers[o.kind].publish(subject, body, { msgId });
      }
    }
    const membership = new Membership({ bus: planner, id: 'p1', log: nats.log, heartbeatMs: 60_000, ttlMs: 30_000, deadMs: 30_000, replicas: 1 });
    await membership.start();
    membership.reportProgress(revision, ['p1']); // published through it, owning every cell as the only member
    t.same(membership.members, ['p1'], 'the planner announces itself in the planners bucket');
    const checkpoints = await CheckpointStore.open(planner, 'p1', 1);
    await checkpoints.write(JSON.stringify({ v: 2, seq: 1, cells: {} }));
    await checkpoints.write(JSON.stringify({ v: 2, seq: 2, cells: {} }));
    t.equal((await checkpoints.load())?.seq, 2, 'the planner writes and reads its checkpoint');
    t.equal((await admin.jsm.streams.info(OBJ_STREAM)).state.messages, 2, "the rewrite purged the old checkpoint's chunks (1 chunk + 1 meta)");

    // agent of cell-1: the feed on its cell (snapshot, its delta subject read to catch up and subscribed to live), its status and discovery puts
    const agent = as('agent_cell-1');
    await new Kvm(agent.js).create(CELL_STATUS_BUCKET, { history: 1 }); // what the agent does at start: opens the existing bucket
    const feed = new CellFeed(agent, 'cell-1', nats.log);
    await feed.start();
    t.teardown(() => feed.stop());
    await feed.waitUntil((v) => v.revision === revision, 10_000, 'the delta');
    t.pass('the agent follows its own cell');
    const status = await new BucketWriter(agent.nc, CELL_STATUS_BUCKET).put('cell-1', JSON.stringify({ cellId: 'cell-1', revision }));
    t.ok(status > 0, 'the agent puts its status');
    await new BucketWriter(agent.nc, DISCOVERY_BUCKET).put('cell-1', JSON.stringify(discoveryRecordOf('cell-1', new Date(), {})));
    await new BucketWriter(as('agent_cell-2').nc, CELL_STATUS_BUCKET).put('cell-2', JSON.stringify({ cellId: 'cell-2', revision }));

    // discovery: the real records follower (a watch on the discovery bucket) sees the agent's record
    const index = new DiscoveryIndex(60_000);
    const follower = await followRecords({ bus: as('discovery'), index, replicas: 1, now: Date.now, log: nats.log });
    t.teardown(() => follower.stop());
    await eventually(() => index.heardAt('cell-1'), 10_000, 'the record of cell-1');
    t.pass('discovery reads the records');

    // writer: the enforcement answer reads planners, statuses, planned revisions and heartbeats
    const e = await enforcementOf(as('writer'), revision);
    t.equal(e.enforced, true, 'the writer answers "is it enforced?"');

    // operator: reads the log
    let events = 0;
    for await (const r of new EventLog(as('operator')).read()) if ('event' in r) events += 1;
    t.equal(events, 2, 'the operator reads the events');
    await membership.stop();
  });

  t.test("an agent cannot widen its consumer by naming its own cell in the subject and another's in the body", async (t) => {
    const create = `$JS.API.CONSUMER.CREATE.${CELL_DELTAS_STREAM}.sneaky.${cellSubject.delta('cell-1')}`;
    for (const filter of [cellSubject.delta('cell-2'), undefined]) {
      const config = { name: 'sneaky', ack_policy: 'none', deliver_policy: 'all', ...(filter && { filter_subject: filter }) };
      const outcome = await outcomeOf(conns.get('agent_cell-1')!, (b) => jsApi(b.nc, create, { stream_name: CELL_DELTAS_STREAM, config }));
      t.equal(outcome, 'error: 10131', `JetStream refuses a body filtering ${filter ?? 'nothing'} (filter does not match the subject)`);
    }
  });

  t.test('role × action matrix', async (t) => {
    const forgedBefore = await eventCount(eventSubject.policy('forged'));
    const observed: Record<string, Record<Column, Outcome>> = {};
    for (const { action, run } of ACTIONS) {
      observed[action] = {} as Record<Column, Outcome>;
      for (const col of COLUMNS) observed[action][col] = await outcomeOf(conns.get(col)!, run);
    }
    t.equal(await eventCount(eventSubject.policy('forged')), forgedBefore + 2, 'forged events stored: only the writer and admin ones');
    for (const { action, allowed } of ACTIONS) {
      for (const col of COLUMNS) {
        const got = observed[action]![col];
        t.equal(got, allowed.includes(col) ? 'allowed' : 'refused', `${col}: ${action}`);
      }
    }
    for (const { action, run } of DESTRUCTIVE) {
      observed[action] = {} as Record<Column, Outcome>;
      for (const col of COLUMNS) observed[action][col] = await outcomeOf(conns.get(col)!, run);
      for (const col of COLUMNS.filter((c) => c !== 'admin')) t.equal(observed[action][col], 'refused', `${col}: ${action}`);
      // admin passes the permissions; the stream may still refuse (NF_EVENTS has deny_purge: JetStream error 10110)
      t.not(observed[action].admin, 'refused', `admin: ${action}`);
    }
    t.equal(observed[`STREAM.PURGE ${EVENTS_STREAM}`]!.admin, 'error: 10110', "even admin's purge of the log is refused by deny_purge");
    t.comment(`\n${matrixTable(observed)}`);
    t.ok(conns.get('agent_cell-1')!.violations.length > 0, 'the violations were reported by the server');
  });
});

t.test('permissions are generated per role and per cell', async (t) => {
  t.same(ROLES, ['writer', 'planner', 'agent', 'platform', 'discovery', 'operator', 'admin']);
  const a = permissionsOf({ role: 'agent', cellId: 'cell-9' });
  t.ok(a.publish.allow.includes(`$JS.API.CONSUMER.CREATE.${CELL_DELTAS_STREAM}.*.${cellSubject.delta('cell-9')}`));
  t.notOk(a.publish.allow.some((s) => s.includes('cell-1')), 'nothing of another cell');
  t.same(a.subscribe.allow, ['_INBOX.agent.cell-9.>', readySubject('cell-9'), cellSubject.delta('cell-9')]);
  t.notOk(permissionsOf({ role: 'platform', id: 'cc' }).publish.allow.some((s) => s.startsWith('$JS.')), 'platform: nothing under $JS');
  t.ok(permissionsOf({ role: 'platform', id: 'cc' }).publish.allow.includes('nf.cmd.cc.>'), 'platform: intake under its own caller token only');
  t.throws(() => permissionsOf({ role: 'platform', id: 'a.>' }), { code: 'invalid-platform-id' });
  t.throws(() => permissionsOf({ role: 'agent', cellId: 'a.>' }), { code: 'invalid-cell-id' });
});

function matrixTable(observed: Record<string, Record<Column, Outcome>>): string {
  const mark = (o: Outcome) => (o === 'allowed' ? 'pass' : o === 'refused' ? 'REFUSED' : o);
  const lines = [`| action | ${COLUMNS.join(' | ')} |`, `|---|${COLUMNS.map(() => '---').join('|')}|`];
  for (const [action, row] of Object.entries(observed)) lines.push(`| ${action} | ${COLUMNS.map((c) => mark(row[c])).join(' | ')} |`);
  return lines.join('\n');
}
