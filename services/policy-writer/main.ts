// Standalone policy-writer: wiring only. Needs a NATS server (NATS_URL); `netfold up` runs it with an embedded one.
// Its metrics are at the gateway's /metrics.
import { runService } from '../../runtime/service-main.ts';
import { resolveTokenSecret } from '../../runtime/config.ts';
import { startPolicyWriter, policyWriterConfigOf } from './service.ts';

await runService(
  'policy-writer',
  ({ config, log, bus, metrics }) => startPolicyWriter({ bus, log, metrics, config: policyWriterConfigOf(config, resolveTokenSecret(config, false)) }),
  {
    validate: (config) => void resolveTokenSecret(config, false), // a missing or weak secret: refused before connecting
    coalesceWrites: true, // it mostly sends: an append and a reply per command
  },
);
