// A service stops on SIGTERM even when its NATS server is gone for good: its client reconnects for ever and a stop
// that waits on it would keep the process; past --shutdown-timeout-ms it logs `shutdown-timed-out` and exits 1.
import t from 'tap';
import { startNats } from './harness/nats.ts';
import { spawnService } from './harness/processes.ts';

t.test('a planner whose NATS server died still exits on SIGTERM, within its shutdown timeout', async (t) => {
  const nats = await startNats(t, { open: true });
  const planner = await spawnService(
    'planner',
    'services/topology-planner/main.ts',
    { NATS_URL: nats.server.url, NETFOLD_METRICS_PORT: '0', NETFOLD_SHUTDOWN_TIMEOUT_MS: '500' },
    'planner-started',
  );
  t.teardown(() => planner.kill());
  await nats.server.kill();
  // the client has noticed: a stop now waits on a connection that will not come back
  await planner.waitLog((l) => l.msg === 'nats-status' && l.status === 'disconnect', 30_000, 'the disconnect');
  planner.child.kill('SIGTERM');
  // bounded only so that a hang fails the test instead of the whole run (the harness's stop() would SIGKILL at 10 s)
  const exited = await Promise.race([planner.exited.then(() => true), new Promise<false>((r) => setTimeout(() => r(false), 8_000).unref())]);
  t.ok(exited, 'the process exited by itself');
  t.equal(planner.child.signalCode, null, 'not killed by a signal');
  const msgs = planner.seen.map((s) => s.line.msg);
  t.ok(msgs.includes('shutdown-started'), 'the stop began');
  // its stop waits on NATS requests that time out only after seconds (measured: ~4.5 s), far past the 500 ms allowed
  t.ok(msgs.includes('shutdown-timed-out'), 'the stop was cut short at the deadline');
  t.notOk(msgs.includes('shutdown-complete'), 'not reported as complete');
  t.equal(planner.child.exitCode, 1, 'a timed-out stop exits 1');
});
