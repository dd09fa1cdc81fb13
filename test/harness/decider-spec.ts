// given(events).when(decide).then(events) / .thenRejects(code) / .thenNothing(note) for decider tests.
import type { Test } from 'tap';
import type { DomainEvent } from '../../events/catalogue.ts';
import type { Model } from '../../projections/model.ts';
import type { Decision } from '../../services/policy-writer/decide.ts';
import { modelOf } from './events.ts';

export function given(t: Test, history: DomainEvent[]) {
  const model = modelOf(history);
  return {
    when(decide: (m: Model) => Decision) {
      const d = decide(model);
      return {
        then(expected: DomainEvent[], msg = 'decides the expected events') {
          t.same(d, { ok: true, events: expected, ...(d.ok && d.note ? { note: d.note } : {}) }, msg);
        },
        thenNothing(note: string) {
          t.same(d, { ok: true, events: [], note }, `decides nothing (${note})`);
        },
        thenRejects(code: string, status?: number) {
          t.equal(d.ok, false, `rejected with ${code}`);
          if (!d.ok) {
            t.equal(d.rejection.code, code);
            if (status) t.equal(d.rejection.status, status);
          }
        },
      };
    },
  };
}
