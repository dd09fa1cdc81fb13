// Reporting the folds' quarantine (projections/model.ts): every entry is logged once, at error when a valid event's
// fold failed (a bug) and at warn when the log held something that is not an event; a gauge counts them per service.
import type { Model } from '../projections/model.ts';
import type { Logger } from './logger.ts';
import type { Registry } from './metrics.ts';

/** Returns a function to call after each fold: it logs the entries quarantined since the previous call. */
export function quarantineReporter(log: Logger): (m: Model) => void {
  let reported = 0;
  return (m) => {
    const entries = m.quarantine.entries;
    const total = m.quarantine.invalid + m.quarantine.foldFailed;
    if (total > entries.length && reported === entries.length) {
      log.warn({ total, listed: entries.length }, 'event-quarantine-full'); // entries past the bound are only counted
      reported += 1;
    }
    for (; reported < entries.length; reported++) {
      const { seq, subject, reason, type, eventId, error } = entries[reported]!;
      const fields = { seq, subject, reason, type, eventId, error };
      if (reason === 'fold-failed') log.error(fields, 'event-quarantined');
      else log.warn(fields, 'event-quarantined');
    }
  };
}

export function quarantineGauge(metrics: Registry, service: string, m: Model): void {
  const help = 'log entries the folds skipped (see netfold quarantine), by reason';
  metrics.gauge('netfold_events_quarantined', help).set({ service, reason: 'fold-failed' }, m.quarantine.foldFailed);
  metrics.gauge('netfold_events_quarantined', help).set({ service, reason: 'invalid' }, m.quarantine.invalid);
}
