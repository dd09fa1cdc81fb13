// Clean shutdown on SIGINT/SIGTERM for every long-running process: stop once, in order; a second signal exits. A
// stop that hangs (e.g. NATS gone for good, its client reconnecting for ever while the service waits on it) does not
// keep the process: after `deadlineMs` (`--shutdown-timeout-ms`) it logs `shutdown-timed-out` and exits 1.
import type { Logger } from './logger.ts';

export function stopOnSignals(log: Logger, stop: () => Promise<void>, deadlineMs = 15_000): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'shutdown-forced');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'shutdown-started');
    setTimeout(() => {
      log.error({ deadlineMs }, 'shutdown-timed-out');
      process.exit(1);
    }, deadlineMs).unref();
    stop().then(
      () => {
        log.info('shutdown-complete');
        process.exit(0);
      },
      (err: unknown) => {
        log.error({ err }, 'shutdown-failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
}
