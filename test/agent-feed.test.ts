// A cell agent's feed against a real nats-server never stops on a bad message: a delta that is not JSON, one that
// is JSON but malformed, and a snapshot whose hash does not match its state are logged, counted and answered with a
// resync; the agent keeps following and converges on the next valid delta. (The agents use the memory dataplane.)
import t from 'tap';
import { startNats, eventually } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { startStack } from './harness/stack.ts';
import { cellSubject } from '../projections/cell-stream.ts';
import type { CellFeed } from '../services/cell-agent/feed.ts';
import { kvLayout } from '../runtime/nats-adapter.ts';
import { CELL_STATUS_BUCKET } from '../runtime/subjects.ts';

const P = '/networking/v1/external/policies';

t.test('garbage on the delta subject and a forged snapshot: the agent keeps following', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  await gw.registerCells('cell-1', 'cell-2');
  const { agents, planes, planner } = await startStack(t, nats, ['cell-1'], { agent: { driftIntervalMs: 100 } });
  for (const appId of ['web', 'api', 'evil']) await gw.intake('registerApp', { appId, name: appId, spaceId: 's', orgId: 'o' });
  await gw.intake('startContainer', { containerId: 'web-0', appId: 'web', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.2' });
  await gw.intake('startContainer', { containerId: 'evil-0', appId: 'evil', cellId: 'cell-2', instanceIndex: 0, ip: '10.255.2.66' });
  await gw.intake('startContainer', { containerId: 'api-0', appId: 'api', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
  const first = await gw.http('POST', P, { body: { policies: [cfPolicy('web', 'api', 'tcp', 8080)] } });
  await agents['cell-1']!.waitApplied(first.body.revision);
  const plane = planes['cell-1']!;
  t.equal(plane.allows('10.255.2.2', '10.255.1.2', 'tcp', 8080), true);
  const feed = agents['cell-1']!.feed as CellFeed;
  const held = feed.view;

  // A snapshot far ahead whose hash is wrong and whose state would let the evil app in; then garbage and JSON of
  // the wrong shape on the cell's delta subject (each makes the feed resync, which reads that snapshot).
  const forgedState = JSON.parse(JSON.stringify(held.state));
  forgedState.ingress.api = { ...forgedState.ingress.api, 'evil|tcp|22|22': { sourceAppId: 'evil', protocol: 'tcp', startPort: 22, endPort: 22 } };
  forgedState.sources.evil = { '10.255.2.66': true };
  await gw.bus.js.publish(cellSubject.snapshot('cell-1'), JSON.stringify({ cellId: 'cell-1', revision: held.revision + 10_000, hash: held.hash, state: forgedState }));
  await gw.bus.js.publish(cellSubject.delta('cell-1'), 'this is not JSON {');
  await gw.bus.js.publish(cellSubject.delta('cell-1'), JSON.stringify({ cellId: 'cell-1', revision: 'soon', ops: 'all' }));
  await eventually(() => (feed.rejected >= 3 ? true : undefined), 10_000, 'the bad messages rejected');
  t.ok(feed.resyncs >= 1, 'a bad message makes the feed resync');

  // The planner's next valid delta is followed.
  const next = await gw.http('POST', P, { body: { policies: [cfPolicy('web', 'api', 'tcp', 9000)] } });
  await planner.waitPublished(next.body.revision);
  await agents['cell-1']!.waitApplied(next.body.revision);
  t.equal(plane.allows('10.255.2.2', '10.255.1.2', 'tcp', 9000), true, 'the next valid delta is applied');
  t.equal(plane.allows('10.255.2.66', '10.255.1.2', 'tcp', 22), false, 'nothing of the forged snapshot was adopted');
  t.equal(feed.view.revision, next.body.revision, 'the feed holds the planned revision, not the forged one');
  t.ok(feed.rejected >= 3, 'every bad message was counted');
  // ... and the agent says so in its status record (what `netfold cells` shows), not only in its log.
  const record = await eventually(async () => {
    const m = await gw.bus.jsm.streams.getMessage(kvLayout.stream(CELL_STATUS_BUCKET), { last_by_subj: kvLayout.subject(CELL_STATUS_BUCKET, 'cell-1') });
    const r = m?.json<{ refusals?: { count: number; last: { kind: string } | null } }>();
    return r && r.refusals && r.refusals.count >= 3 ? r : undefined;
  }, 10_000, 'the refusals in the status record');
  t.ok(record.refusals!.count >= 3, `the status record counts the refusals: ${JSON.stringify(record.refusals)}`);
  t.match(record.refusals!.last, { kind: /delta|snapshot/ });
});
