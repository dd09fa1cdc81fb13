// Token hardening, without NATS: what verifyToken refuses (no exp, iat in the future, a lifetime above the maximum),
// the secret's minimum length, and files holding secrets being mode 0600 whatever they were before.
import t from 'tap';
import { SignJWT } from 'jose';
import { chmodSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLOCK_SKEW_SECONDS, DEFAULT_TOKEN_MAX_TTL_SECONDS, checkTokenSecret, mintToken, verifyToken } from '../runtime/tokens.ts';
import { NetfoldError } from '../runtime/errors.ts';
import { loadConfig, resolveTokenSecret } from '../runtime/config.ts';
import { writePrivateFile } from '../runtime/private-file.ts';
import { execFile } from 'node:child_process';

const SECRET = 'test-secret-0123456789abcdef0123456789abcdef';
const alice = { user: 'alice', scopes: ['network.admin'], spaces: [] };
const now = new Date('2030-01-01T00:00:00Z');
const nowS = now.getTime() / 1000;

/** A token with exactly the time claims given (mintToken always sets both). */
function raw(claims: { iat?: number; exp?: number }): Promise<string> {
  let jwt = new SignJWT({ scope: ['network.admin'], spaces: [] }).setProtectedHeader({ alg: 'HS256' }).setSubject('alice').setIssuer('netfold').setAudience('netfold-policy');
  if (claims.iat !== undefined) jwt = jwt.setIssuedAt(claims.iat);
  if (claims.exp !== undefined) jwt = jwt.setExpirationTime(claims.exp);
  return jwt.sign(new TextEncoder().encode(SECRET));
}

async function refusal(token: Promise<string>, opts = {}): Promise<{ code: string; status: number; message: string } | 'accepted'> {
  try {
    await verifyToken(SECRET, await token, { now, ...opts });
    return 'accepted';
  } catch (err) {
    const e = err as NetfoldError;
    return { code: e.code, status: e.status, message: e.message };
  }
}

t.test('verifyToken: exp and iat are required, iat not in the future, lifetime bounded', async (t) => {
  t.equal(await refusal(raw({ iat: nowS, exp: nowS + 3600 })), 'accepted', 'a well-formed token');
  t.match(await refusal(raw({ iat: nowS })), { code: 'unauthenticated', status: 401, message: /no expiry/ }, 'no exp');
  t.match(await refusal(raw({ exp: nowS + 3600 })), { code: 'unauthenticated', status: 401, message: /no issue time/ }, 'no iat');
  t.equal(await refusal(raw({ iat: nowS + CLOCK_SKEW_SECONDS, exp: nowS + 3600 })), 'accepted', 'iat ahead within the clock skew');
  t.match(await refusal(raw({ iat: nowS + CLOCK_SKEW_SECONDS + 1, exp: nowS + 3600 })), { code: 'unauthenticated', message: /in the future/ }, 'iat beyond the skew');
  t.equal(await refusal(raw({ iat: nowS, exp: nowS + DEFAULT_TOKEN_MAX_TTL_SECONDS })), 'accepted', 'lifetime = the default maximum (7 d)');
  t.match(await refusal(raw({ iat: nowS, exp: nowS + DEFAULT_TOKEN_MAX_TTL_SECONDS + 1 })), { code: 'unauthenticated', message: /lifetime .* exceeds the maximum/ }, 'one second longer');
  t.match(await refusal(mintToken(SECRET, alice, 7200, now), { maxTtlSeconds: 3600 }), { code: 'unauthenticated', message: /exceeds the maximum of 3600 s/ }, 'a configured maximum');
  t.equal(await refusal(mintToken(SECRET, alice, 3600, now), { maxTtlSeconds: 3600 }), 'accepted');
  t.match(await refusal(mintToken(SECRET, alice, 60, new Date(now.getTime() - 3600_000))), { code: 'unauthenticated', message: /expired/ }, 'still: expired');
});

t.test('the token secret must be at least 32 bytes', async (t) => {
  t.throws(() => checkTokenSecret('x'.repeat(31)), { code: 'weak-token-secret', name: 'ConfigError' });
  t.doesNotThrow(() => checkTokenSecret('x'.repeat(32)));
  t.throws(() => checkTokenSecret('é'.repeat(15)), { code: 'weak-token-secret' }, 'counted in bytes (30)');
  const dataDir = mkdtempSync(join(tmpdir(), 'netfold-tokens-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  t.throws(() => resolveTokenSecret({ tokenSecret: 'short-secret', dataDir }, true), { code: 'weak-token-secret', message: /at least 32 bytes, got 12/ });
  writeFileSync(join(dataDir, 'token-secret'), 'short\n');
  t.throws(() => resolveTokenSecret({ tokenSecret: undefined, dataDir }, false), { code: 'weak-token-secret' }, 'a short secret file too');
});

t.test('the standalone policy-writer refuses a weak secret at start-up, with its code, before connecting', async (t) => {
  const r = await new Promise<{ code: number | null; stderr: string }>((resolve) =>
    execFile(process.execPath, ['--import', 'tsx', 'services/policy-writer/main.ts'], { env: { ...process.env, NETFOLD_TOKEN_SECRET: 'only-20-bytes-secret', NATS_URL: 'nats://127.0.0.1:1' }, timeout: 60_000 }, (err, _out, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stderr }),
    ),
  );
  t.equal(r.code, 1, r.stderr);
  t.match(r.stderr, /^netfold-policy-writer: the token secret .* at least 32 bytes, got 20 \(weak-token-secret\)$/m);
});

t.test('--token-max-ttl: a duration, 7d by default, bounded', async (t) => {
  t.equal(loadConfig({}, {}).tokenMaxTtl, 7 * 86400);
  t.equal(loadConfig({ 'token-max-ttl': '24h' }, {}).tokenMaxTtl, 86400);
  t.equal(loadConfig({}, { NETFOLD_TOKEN_MAX_TTL: '90m' }).tokenMaxTtl, 5400);
  t.throws(() => loadConfig({ 'token-max-ttl': 'forever' }, {}), { code: 'invalid-config' });
  t.throws(() => loadConfig({ 'token-max-ttl': '10s' }, {}), { code: 'invalid-config' });
});

t.test('secret files are 0600 even when they existed 0644', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'netfold-tokens-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const mode = (f: string) => statSync(f).mode & 0o777;

  const file = join(dataDir, 'admin.token');
  writeFileSync(file, 'old\n', { mode: 0o644 });
  chmodSync(file, 0o644);
  t.equal(mode(file), 0o644, 'given: an existing world-readable file');
  writePrivateFile(file, 'new\n');
  t.equal(mode(file), 0o600, 'rewritten 0600');
  t.equal(readFileSync(file, 'utf8'), 'new\n');
  writePrivateFile(join(dataDir, 'sub', 'fresh'), 'x');
  t.equal(mode(join(dataDir, 'sub', 'fresh')), 0o600, 'a new file (and its directory) too');

  const secretFile = join(dataDir, 'token-secret');
  const generated = resolveTokenSecret({ tokenSecret: undefined, dataDir }, true);
  t.equal(mode(secretFile), 0o600, 'a generated secret is 0600');
  chmodSync(secretFile, 0o644);
  t.equal(resolveTokenSecret({ tokenSecret: undefined, dataDir }, true), generated, 'the existing secret is kept');
  t.equal(mode(secretFile), 0o600, 'and made 0600 again');
});
