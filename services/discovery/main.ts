// Standalone discovery service: wiring only. Needs NATS_URL. Its metrics are at its HTTP port's /metrics.
import { runService } from '../../runtime/service-main.ts';
import { startDiscovery, discoveryConfigOf } from './service.ts';

await runService('discovery', ({ config, log, bus, metrics }) => startDiscovery({ bus, log, metrics, config: discoveryConfigOf(config) }));
