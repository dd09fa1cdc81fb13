// Standalone topology planner: wiring only. Needs a NATS server (NATS_URL); metrics on --metrics-port (9470).
import { runService } from '../../runtime/service-main.ts';
import { startPlanner, plannerConfigOf } from './service.ts';

await runService('topology-planner', ({ config, log, bus, metrics }) => startPlanner({ bus, log, metrics, config: plannerConfigOf(config) }), {
  metricsPort: 9470,
});
