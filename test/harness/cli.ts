// Test harness: the netfold CLI as a user runs it, a child process against a test's nats-server and gateway. The
// environment signs in as `netfold up`'s files in the data dir would (intake as platform `cli`, reads as operator).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { NatsFixture } from './nats.ts';
import { TEST_SECRET } from './gateway.ts';

const run = promisify(execFile);

export type CliResult = { code: number; stdout: string; stderr: string };

/** The environment a CLI of the test's server and gateway runs with; `extra` adds or overrides variables. */
export async function cliEnv(nats: NatsFixture, gatewayUrl: string, extra: NodeJS.ProcessEnv = {}): Promise<NodeJS.ProcessEnv> {
  for (const name of ['platform_cli', 'operator']) await nats.credsFile(name);
  return {
    ...process.env,
    NATS_URL: nats.server.url,
    NETFOLD_TOKEN_SECRET: TEST_SECRET,
    NETFOLD_API_URL: gatewayUrl,
    NETFOLD_DATA_DIR: nats.storeDir,
    ...extra,
  };
}

/** Runs `netfold ARGS` with `env` (read at each call, so a test may change it between calls); never rejects. */
export function cliRunner(env: NodeJS.ProcessEnv): (...args: string[]) => Promise<CliResult> {
  return async (...args) => {
    try {
      const r = await run(process.execPath, ['bin/netfold.mjs', ...args], { env, timeout: 60_000 });
      return { code: 0, stdout: r.stdout, stderr: r.stderr };
    } catch (err) {
      const e = err as { code: number; stdout: string; stderr: string };
      return { code: e.code, stdout: e.stdout, stderr: e.stderr };
    }
  };
}
