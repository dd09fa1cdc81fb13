// Standalone discovery service: wiring only. Needs NATS_URL.
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig } from '../../runtime/config.ts';
import { createRootLogger } from '../../runtime/logger.ts';
import { connectBus } from '../../runtime/nats.ts';
import { stopOnSignals } from '../../runtime/lifecycle.ts';
import { startDiscovery, discoveryConfigOf } from './service.ts';

const { values } = parseArgs({ options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }])) });
const config = loadConfig(values);
const log = createRootLogger({ level: config.logLevel, name: 'discovery' });
const bus = await connectBus({ servers: (config.natsUrl ?? 'nats://127.0.0.1:4222').split(','), name: 'netfold-discovery', log });
const discovery = await startDiscovery({ bus, log, config: discoveryConfigOf(config) });
stopOnSignals(log, async () => {
  await discovery.stop();
  await bus.close();
});
