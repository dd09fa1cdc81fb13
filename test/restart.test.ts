// Restarts lose nothing: a new gateway rebuilds the same model from the log, and a gateway rides out a
// nats-server kill -9 and restart (same port, same store).
import t from 'tap';
import { spawn } from 'node:child_process';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';
import { InboxRequester, RequestInterrupted, RequestTimeout } from '../runtime/inbox-requester.ts';

const P = '/networking/v1/external/policies';

t.test('a restarted gateway loses nothing', async (t) => {
  const nats = await startNats(t);
  const first = await startGateway(t, nats);
  await first.registerCells('cell-1');
  for (const appId of ['a', 'b', 'c']) await first.intake('registerApp', { appId, name: appId, spaceId: 's1', orgId: 'o1' });
  await first.intake('startContainer', { containerId: 'c1', appId: 'a', cellId: 'cell-1', instanceIndex: 0, ip: '10.255.1.2' });
  await first.intake('stopContainer', { containerId: 'ghost' });
  const created = await first.http('POST', P, { body: { policies: [cfPolicy('a', 'b'), cfPolicy('b', 'c', 'udp', 53, 54), cfPolicy('c', 'a')] } });
  t.equal(created.status, 200);
  await first.http('POST', `${P}/delete`, { body: { policies: [cfPolicy('c', 'a')] } });
  const before = (await first.http('GET', P)).body;
  const modelBefore = first.writer.follower.state;
  await first.stop();

  const second = await startGateway(t, nats);
  t.same((await second.http('GET', P)).body, before, 'the same policies at the same revision');
  t.same(second.writer.follower.state, modelBefore, 'the rebuilt model is identical');
  t.match(await second.intake('startContainer', { containerId: 'ghost', appId: 'a', cellId: 'cell-1', instanceIndex: 1, ip: '10.255.1.3' }), {
    ok: true,
    appended: 0,
    note: 'already-stopped',
  });
});

t.test('a gateway rides out a nats-server kill -9 and restart', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  for (const appId of ['a', 'b']) await gw.intake('registerApp', { appId, name: appId, spaceId: 's1', orgId: 'o1' });
  const r1 = await gw.http('POST', P, { body: { policies: [cfPolicy('a', 'b')] } });
  t.equal(r1.status, 200);
  await nats.server.kill();
  await nats.restart();
  // The first request after the restart may race the reconnect: a 503 is a retryable answer, so retry it.
  let r2 = await gw.http('POST', P, { body: { policies: [cfPolicy('b', 'a')] } });
  for (let i = 0; i < 20 && r2.status === 503; i++) r2 = await gw.http('POST', P, { body: { policies: [cfPolicy('b', 'a')] } });
  t.equal(r2.status, 200, JSON.stringify(r2.body));
  t.ok(r2.body.revision > r1.body.revision);
  t.same((await gw.http('GET', P)).body.policies, [cfPolicy('a', 'b'), cfPolicy('b', 'a')], 'the acknowledged policy survived');
});

t.test('a request waiting when the connection is re-established fails at once, not after its timeout', async (t) => {
  const nats = await startNats(t, { open: true });
  const bus = await nats.connect('requester');
  const requests = new InboxRequester(bus.nc);
  // A subscriber that never answers: the request waits (as an append whose leader died waits for its PubAck).
  bus.nc.subscribe('silent.x', { callback: () => undefined });
  await bus.nc.flush();
  const waiting = requests.request('silent.x', 'hello', { timeoutMs: 10 * 60_000 });
  const outcome = waiting.then(
    () => 'answered',
    (err: unknown) => err,
  );
  t.equal(requests.inFlight, 1, 'the request waits');
  await nats.server.kill();
  await nats.restart();
  const err = await outcome;
  t.type(err, RequestInterrupted, `interrupted by the reconnect: ${String(err)}`);
  t.type(err, RequestTimeout, 'a kind of timeout: a caller that re-sends on timeouts re-sends it');
  t.equal(requests.inFlight, 0, 'nothing left waiting');
});

t.test('a request past its timeout keeps waiting while keepWaiting says the other side is working through a backlog', async (t) => {
  const nats = await startNats(t, { open: true });
  const bus = await nats.connect('requester');
  const requests = new InboxRequester(bus.nc);
  // answers each request 300 ms after it came, in order (a busy server)
  bus.nc.subscribe('slow.x', { callback: (_err, msg) => void setTimeout(() => msg.respond('done'), 300) });
  await bus.nc.flush();
  let asked = 0;
  const answered = await requests.request('slow.x', 'a', { timeoutMs: 100, keepWaiting: () => ++asked > 0 });
  t.equal(answered.string(), 'done', 'answered after three timeouts');
  t.ok(asked >= 2, `asked whether to keep waiting each time (${asked})`);
  await t.rejects(requests.request('slow.x', 'b', { timeoutMs: 100, keepWaiting: () => false }), RequestTimeout, 'without it: a timeout');
  t.equal(requests.inFlight, 0, 'nothing left waiting');
});

t.test('an answer that arrived while the process was busy past the timeout is taken, not timed out', async (t) => {
  const nats = await startNats(t, { open: true });
  const bus = await nats.connect('requester');
  // Another process answers 100 ms after each request (this one will be busy then).
  const code = `import { connect } from '@nats-io/transport-node';
    const nc = await connect({ servers: ${JSON.stringify(nats.server.url)} });
    nc.subscribe('late.x', { callback: (_e, m) => setTimeout(() => m.respond('late'), 100) });
    await nc.flush(); console.log('ready');`;
  const responder = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => void responder.kill());
  await new Promise<void>((resolve) => responder.stdout!.once('data', () => resolve()));
  const requests = new InboxRequester(bus.nc);
  const answered = requests.request('late.x', 'hello', { timeoutMs: 50 });
  await new Promise((r) => setTimeout(r, 5)); // the request is on its way
  // Busy in the loop's check phase (as a planner folding a big batch in an I/O callback): the answer comes at ~100 ms
  // and waits in the socket; the next loop turn runs the due timer before reading it.
  await new Promise<void>((resolve) =>
    setImmediate(() => {
      const until = Date.now() + 400;
      while (Date.now() < until);
      resolve();
    }),
  );
  t.equal((await answered).string(), 'late', 'the answer, not a RequestTimeout');
});
