// The plan of a policy file, pure (projections/policy-plan.ts): given a model and a file, what is created and —
// with prune — deleted; names and ids; the scope; what the caller may use; applying the plan then planning again
// gives nothing.
import t from 'tap';
import { parsePolicyFile } from '../events/policy-file.ts';
import { foldEvents } from '../projections/model.ts';
import { planPolicyFile } from '../projections/policy-plan.ts';
import { ev, modelOf, record } from './harness/events.ts';

const given = () =>
  modelOf([
    ev.registered('app-web', 'web', 's1'),
    ev.registered('app-api', 'api', 's1'),
    ev.registered('app-db', 'db', 's1'),
    // an app whose *name* is another app's id: ids win
    ev.registered('web', 'confusing', 's1'),
    ev.registered('app-x', 'x', 's2'),
    ev.created('app-web', 'app-api', 8080),
    ev.created('app-web', 'app-db', 5432),
    ev.created('app-x', 'app-x', 53, 53, 'udp'),
  ]);
const fileOf = (text: string) => {
  const f = parsePolicyFile(text);
  if (!f.ok) throw new Error(JSON.stringify(f.issues));
  return f.value;
};
const all = () => true;
const summary = (p: ReturnType<typeof planPolicyFile>) =>
  p.ok ? p.value.changes.map((c) => `${c.op} ${c.sourceAppId}>${c.rule.destAppId} ${c.rule.protocol}/${c.rule.startPort}-${c.rule.endPort}`) : p.issues;

t.test('creates what is missing; prune deletes within the scope only; duplicates count once', async (t) => {
  const m = given();
  const file = fileOf(
    'version: 1\nspaces:\n  s1:\n    app-web:\n      - { to: api, ports: 8080 }\n      - { to: app-api, ports: 8080 }\n      - { to: api, ports: 9000-9001, protocol: udp }\n',
  );
  const plain = planPolicyFile(m, file, { usable: all, prune: false });
  t.same(summary(plain), ['create app-web>app-api udp/9000-9001']);
  t.equal(plain.ok && plain.value.unchanged, 1, 'the same policy twice (by name and id) is one');
  const pruned = planPolicyFile(m, file, { usable: all, prune: true });
  t.same(summary(pruned), ['create app-web>app-api udp/9000-9001', 'delete app-web>app-db tcp/5432-5432'], "s2's policy is outside the scope");
  t.same(pruned.ok && pruned.value.scope, { spaces: ['s1'], apps: [] });
});

t.test('an empty space or app in the file prunes all of it; an id wins over a name', async (t) => {
  const m = given();
  t.same(summary(planPolicyFile(m, fileOf('version: 1\nspaces:\n  s2: {}\n'), { usable: all, prune: true })), ['delete app-x>app-x udp/53-53']);
  t.same(
    summary(planPolicyFile(m, fileOf('version: 1\napps:\n  web: []\n'), { usable: all, prune: true })),
    [],
    '"web" is the app with id web (no policies), not app-web',
  );
  t.same(summary(planPolicyFile(m, fileOf('version: 1\napps:\n  app-web: []\n'), { usable: all, prune: true })), [
    'delete app-web>app-api tcp/8080-8080',
    'delete app-web>app-db tcp/5432-5432',
  ]);
});

t.test('apps the caller may not use are unknown to it, and never pruned', async (t) => {
  const m = given();
  const s1Only = (id: string) => m.apps[id]?.spaceId === 's1';
  const p = planPolicyFile(m, fileOf('version: 1\napps:\n  web:\n    - { to: x, ports: 1 }\n'), { usable: s1Only, prune: false });
  t.match(p, { ok: false, issues: [{ line: 4, path: 'apps.web[0].to', message: /no app "x"/ }] });
  const wrongSpace = planPolicyFile(m, fileOf('version: 1\nspaces:\n  s2:\n    web:\n      - { to: x, ports: 1 }\n'), { usable: all, prune: false });
  t.match(wrongSpace, { ok: false, issues: [{ line: 5, message: /app "web" is in space s1, not s2/ }] });
  const m2 = foldEvents(m, record([ev.created('app-web', 'app-x', 1)], m.seq + 1));
  const keep = planPolicyFile(m2, fileOf('version: 1\nspaces:\n  s1: {}\n'), { usable: s1Only, prune: true });
  t.notOk(
    summary(keep).some((c) => String(c).includes('app-x')),
    'a policy into an app the caller may not use is not its to prune',
  );
});

t.test('applying the plan and planning again: nothing (idempotent)', async (t) => {
  const m = given();
  const file = fileOf('version: 1\nspaces:\n  s1:\n    web:\n      - { to: db, ports: 1-2 }\n    api:\n      - { to: web, ports: 3 }\n');
  const p = planPolicyFile(m, file, { usable: all, prune: true });
  t.ok(p.ok);
  if (!p.ok) return;
  const events = [
    ...[...p.value.creates].map(([sourceAppId, policies]) => ({ type: 'PoliciesCreated' as const, v: 1 as const, data: { sourceAppId, policies } })),
    ...[...p.value.deletes].map(([sourceAppId, policies]) => ({
      type: 'PoliciesDeleted' as const,
      v: 1 as const,
      data: { sourceAppId, policies, reason: 'requested' as const },
    })),
  ];
  const after = foldEvents(m, record(events, m.seq + 1));
  const again = planPolicyFile(after, file, { usable: all, prune: true });
  t.same(summary(again), []);
  t.equal(again.ok && again.value.unchanged, 2);
});
