// netfold-cni, the executable a container runtime calls (CNI 1.0.0): wiring only. Reads the network configuration
// from stdin and CNI_* from the environment, runs the invocation (plugin.ts), prints the result or error object on
// stdout and exits non-zero on an error. Logs (pino JSON) go to stderr, at NETFOLD_LOG_LEVEL (default warn).
import { createRootLogger } from '../runtime/logger.ts';
import { runCni } from './plugin.ts';
import { IpLinkOps } from './link.ts';
import { connectCniBus } from './bus.ts';

const chunks: Buffer[] = [];
if (!process.stdin.isTTY) for await (const c of process.stdin) chunks.push(c as Buffer);
const log = createRootLogger({ name: 'netfold-cni', level: process.env.NETFOLD_LOG_LEVEL ?? 'warn', toStderr: true });
const outcome = await runCni(process.env, Buffer.concat(chunks).toString('utf8'), { link: new IpLinkOps(), connect: (config) => connectCniBus(config, log) });
if (outcome.exitCode !== 0) log.warn({ command: process.env.CNI_COMMAND, error: outcome.stdout.trim() }, 'cni-failed');
process.stdout.write(outcome.stdout, () => process.exit(outcome.exitCode));
