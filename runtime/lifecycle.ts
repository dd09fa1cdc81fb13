// Clean shutdown on SIGINT/SIGTERM for every long-running process: stop once, in order; a second signal exits.
import type { Logger } from './logger.ts';

export function stopOnSignals(log: Logger, stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: NodeJS.Signals) => {
    if (stopping) {
      log.warn({ signal }, 'shutdown-forced');
      process.exit(130);
    }
    stopping = true;
    log.info({ signal }, 'shutdown-started');
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
  process.once('SIGINT', handler);
  process.once('SIGTERM', handler);
}
