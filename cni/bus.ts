// netfold-cni's bus: one NATS connection per invocation, signed in with a platform credential (the caller token of
// its intake subjects is the credential's id, as the CLI does), sending intake commands and ready-gate requests.
import { connectBus } from '../runtime/nats.ts';
import { readCredentialFile } from '../runtime/authz.ts';
import type { Logger } from '../runtime/logger.ts';
import { intakeSubject, readySubject } from '../runtime/subjects.ts';
import type { IntakeReply } from '../services/policy-writer/intake.ts';
import type { ReadyReply } from '../services/cell-agent/ready-gate.ts';
import type { CniBus } from './plugin.ts';
import type { NetfoldCniConfig } from './spec.ts';
import { newId } from '../runtime/ids.ts';

export async function connectCniBus(config: NetfoldCniConfig, log: Logger): Promise<CniBus> {
  const credential = config.natsCreds === undefined ? undefined : readCredentialFile(config.natsCreds);
  const caller = credential?.name.startsWith('platform_') ? credential.name.slice('platform_'.length) : config.platformId;
  const bus = await connectBus({
    servers: config.natsUrl.split(',').map((s) => s.trim()),
    name: `netfold-cni-${config.cellId}`,
    log,
    connectTimeoutMs: 5000,
    ...(credential && { credential }),
  });
  return {
    async intake(command, body) {
      const msg = await bus.nc.request(intakeSubject(caller, command), JSON.stringify({ ...body, requestId: newId() }), { timeout: 30_000 });
      return msg.json<IntakeReply>();
    },
    async ready(cellId, containerId, timeoutMs) {
      const msg = await bus.nc.request(readySubject(cellId), JSON.stringify({ containerId, timeoutMs }), { timeout: timeoutMs + 2000 });
      return msg.json<ReadyReply>();
    },
    close: () => bus.close(),
  };
}
