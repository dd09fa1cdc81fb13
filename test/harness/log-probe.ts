// Writes one log line through the root logger (format: argv[2], `-` for the default), for test/logs.test.ts.
import { createRootLogger } from '../../runtime/logger.ts';

const format = process.argv[2];
createRootLogger(format && format !== '-' ? { format } : {})
  .child({ component: 'probe' })
  .info({ n: 1 }, 'probe-line');
