// Reporting the folds' quarantine (projections/model.ts): every entry is logged once, at error when a valid event's
// fold failed (a bug) and at warn when the log held something that is not an event; a gauge counts them per service.
import type { Model } from '../projections/model.ts';
import type { Logger } from './logger.ts';
import type { Registry } from './metrics.ts';

/** Returns a function to call after each fold: it logs the entries quarantined since the previous call. */
export function quarantineReporter(log: Logger): (m: Model) => void {
  let reported = 0;
  return (m) => {
    for (; reported < m.quarantine.length; reported++) {
      const { seq, subject, reason, type, eventId, error } = m.quarantine[reported]!;
      const fields = { seq, subject, reason, type, eventId, error };
      if (reason === 'fold-failed') log.error(fields, 'event-quarantined');
      else log.warn(fields, 'event-quarantined');
    }
  };
}

export function quarantineGauge(metrics: Registry, service: string, m: Model): void {
  metrics.gauge('netfold_events_quarantined', 'log entries the folds skipped (see netfold quarantine), by reason').set({ service, reason: 'fold-failed' }, m.quarantine.filter((q) => q.reason === 'fold-failed').length);
  metrics.gauge('netfold_events_quarantined', 'log entries the folds skipped (see netfold quarantine), by reason').set({ service, reason: 'invalid' }, m.quarantine.filter((q) => q.reason === 'invalid').length);
}
