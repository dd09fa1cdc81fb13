import t from 'tap';
import { foldEvents, foldEventsInPlace, initialModel, allPolicies, freeTagCount, MAX_TAG } from '../projections/model.ts';
import { ev, modelOf, record } from './harness/events.ts';

t.test('containers are indexed by app and cell while running', async (t) => {
  const m = modelOf([ev.registered('a'), ev.started('c1', 'a', 'cell-1'), ev.started('c2', 'a', 'cell-2', '10.255.2.2', 1), ev.stopped('c1', 'a', 'cell-1')]);
  t.same(m.containersByApp, { a: { c2: true } });
  t.same(m.containersByCell, { 'cell-2': { c2: true } });
  t.equal(m.containers.c1?.status, 'stopped');
});

t.test('a start after its stop is ignored; a repeated start changes nothing', async (t) => {
  const m = modelOf([ev.registered('a'), ev.stopped('c1'), ev.started('c1', 'a')]);
  t.equal(m.containers.c1?.status, 'stopped');
  t.same(m.containersByCell, {});
  const m2 = modelOf([ev.registered('a'), ev.started('c1', 'a'), ev.started('c1', 'a', 'cell-9', '10.0.0.9')]);
  t.equal(m2.containers.c1?.cellId, 'cell-1');
});

t.test('deleting an app removes every policy that names it and frees its tag', async (t) => {
  const m = modelOf([
    ev.registered('a'),
    ev.registered('b'),
    ev.registered('c'),
    ev.created('a', 'b'),
    ev.created('c', 'a'),
    ev.created('c', 'b'),
    ev.deleted('a'),
  ]);
  t.same(
    allPolicies(m).map((p) => `${p.sourceAppId}>${p.destAppId}`),
    ['c>b'],
  );
  t.same(m.policiesByDest, { b: { [`c|b|tcp|8080|8080`]: true } });
  t.equal(m.tags.byApp.a, undefined);
  t.same(m.tags.free, [1]);
  const m2 = foldEvents(m, record([ev.registered('d'), ev.created('d', 'b')], m.seq + 1));
  t.equal(m2.tags.byApp.d, 1, 'the freed tag is reused, lowest first');
});

t.test('a policy naming an unknown or deleted app has no effect', async (t) => {
  const m = modelOf([ev.registered('a'), ev.created('a', 'ghost'), ev.registered('b'), ev.deleted('b'), ev.created('a', 'b')]);
  t.same(allPolicies(m), []);
  t.same(m.tags.byApp, {});
});

t.test('the fold ignores events it has already seen and survives duplicates', async (t) => {
  const history = [ev.registered('a'), ev.registered('b'), ev.created('a', 'b'), ev.started('c1', 'a'), ev.removed('a', 'b'), ev.created('a', 'b', 9)];
  const recs = record(history);
  const once = foldEvents(initialModel(), recs);
  const twice = foldEvents(foldEvents(initialModel(), recs), recs);
  const interleaved = recs.reduce((m, r) => foldEvents(foldEvents(m, [r]), [r]), initialModel());
  t.same(twice, once);
  t.same(interleaved, once);
  // The same events appended twice (new sequences) change nothing either, beyond the sequences.
  const reappended = foldEvents(once, record(history, recs.length + 1));
  t.same({ ...reappended, seq: 0, subjectSeq: {} }, { ...once, seq: 0, subjectSeq: {} });
});

t.test('renames move the name index', async (t) => {
  const m = modelOf([ev.registered('a', 'web'), ev.renamed('a', 'site', 'web')]);
  t.same(m.appIdByName, { site: 'a' });
  t.equal(m.apps.a?.name, 'site');
});

t.test('tags: capacity', async (t) => {
  t.equal(freeTagCount(initialModel()), MAX_TAG);
  const m = modelOf([ev.registered('a'), ev.registered('b'), ev.created('a', 'b')]);
  t.equal(freeTagCount(m), MAX_TAG - 2);
});

t.test('the in-place fold of the live follower gives exactly the pure fold', async (t) => {
  const history = [
    ev.registered('a'),
    ev.registered('b'),
    ev.registered('c'),
    ev.created('a', 'b'),
    ev.created('c', 'a', 1, 9, 'udp'),
    ev.started('c1', 'a'),
    ev.stopped('c0'),
    ev.started('c0', 'a'),
    ev.renamed('b', 'bee', 'b'),
    ev.deleted('a'),
    ev.created('c', 'b'),
  ];
  const recs = record(history);
  const pure = foldEvents(initialModel(), recs);
  const inPlace = recs.reduce((m, r) => foldEventsInPlace(m, [r]), structuredClone(initialModel()));
  t.same(inPlace, pure);
  const start = initialModel();
  foldEvents(start, recs);
  t.same(start, initialModel(), 'the pure fold leaves its input alone');
});

t.test('indexes under churn: the in-place fold (sizes kept aside) and the pure fold agree, sets vanish when emptied', async (t) => {
  let x = 7;
  const rnd = (n: number) => ((x = (x * 1103515245 + 12345) % 2 ** 31), x % n);
  const history = [ev.registered('a'), ev.registered('b')];
  const running = new Set<string>();
  for (let i = 0; i < 400; i++) {
    const id = `c${rnd(40)}`;
    if (running.has(id)) {
      history.push(ev.stopped(id, rnd(2) ? 'a' : 'b', `cell-${rnd(3)}`));
      running.delete(id);
    } else {
      history.push(ev.started(id, rnd(2) ? 'a' : 'b', `cell-${rnd(3)}`, `10.255.${rnd(3) + 1}.${rnd(200) + 2}`, i));
      running.add(id);
    }
  }
  for (const id of running) history.push(ev.stopped(id));
  const recs = record(history);
  const pure = foldEvents(initialModel(), recs);
  const inPlace = structuredClone(initialModel());
  for (let i = 0; i < recs.length; i += 7) foldEventsInPlace(inPlace, recs.slice(i, i + 7));
  t.same(inPlace, pure);
  t.same(inPlace.containersByApp, {}, 'every set emptied is gone');
  t.same(inPlace.containersByCell, {});
});
