// Standalone policy-writer: wiring only. Needs a NATS server (NATS_URL); `netfold up` runs it with an embedded one.
import { parseArgs } from 'node:util';
import { SETTINGS, loadConfig, resolveTokenSecret } from '../../runtime/config.ts';
import { createRootLogger } from '../../runtime/logger.ts';
import { connectBus } from '../../runtime/nats.ts';
import { ensureTopology, defaultTopologyOptions } from '../../runtime/topology.ts';
import { stopOnSignals } from '../../runtime/lifecycle.ts';
import { startPolicyWriter } from './service.ts';

const { values } = parseArgs({ options: Object.fromEntries(SETTINGS.map((s) => [s.flag, { type: 'string' as const }])) });
const config = loadConfig(values);
const log = createRootLogger({ level: config.logLevel, name: 'policy-writer' });
const bus = await connectBus({ servers: config.natsUrl ?? 'nats://127.0.0.1:4222', name: 'netfold-policy-writer', log });
await ensureTopology(bus.jsm, { ...defaultTopologyOptions, replicas: config.replicas }, log);
const service = await startPolicyWriter({ bus, log, config: { ...config, tokenSecret: resolveTokenSecret(config, false) } });
stopOnSignals(log, async () => {
  await service.stop();
  await bus.close();
});
