import t from 'tap';
import { startNats } from './harness/nats.ts';
import { startGateway, cfPolicy } from './harness/gateway.ts';

t.test('register apps, create, list and delete a policy', async (t) => {
  const nats = await startNats(t);
  const gw = await startGateway(t, nats);
  const a = await gw.intake('registerApp', { appId: 'app-a', name: 'frontend', spaceId: 's1', orgId: 'o1' });
  t.match(a, { ok: true, appended: 1 });
  const b = await gw.intake('registerApp', { appId: 'app-b', name: 'backend', spaceId: 's1', orgId: 'o1' });
  t.match(b, { ok: true });
  const created = await gw.http('POST', '/networking/v1/external/policies', { body: { policies: [cfPolicy('app-a', 'app-b')] } });
  t.equal(created.status, 200, JSON.stringify(created.body));
  t.ok(created.body.revision > 2);
  const listed = await gw.http('GET', '/networking/v1/external/policies');
  t.same(listed.body.policies, [cfPolicy('app-a', 'app-b')]);
});
