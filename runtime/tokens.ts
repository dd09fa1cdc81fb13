// Bearer tokens: HS256-signed JWTs carrying the user, their scopes and the spaces where they are a developer.
// Shared by the gateway (verify) and the CLI (mint).
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose';
import { ConfigError, UnauthenticatedError } from './errors.ts';

export const SCOPES = ['network.admin', 'network.write'] as const;
export type Scope = (typeof SCOPES)[number];

export type Principal = { user: string; scopes: string[]; spaces: string[] };

const ISSUER = 'netfold';
const AUDIENCE = 'netfold-policy';

const keyOf = (secret: string) => new TextEncoder().encode(secret);

/** HS256 wants a key at least as long as its output: 32 bytes. A shorter secret is refused at start-up. */
const MIN_SECRET_BYTES = 32;
/** How far in the future a token's `iat` may be (the minting machine's clock may run ahead of ours). */
export const CLOCK_SKEW_SECONDS = 60;
/** The default of `--token-max-ttl`: the longest lifetime (exp − iat) a token may have. */
export const DEFAULT_TOKEN_MAX_TTL_SECONDS = 7 * 86400;

/** Throws a ConfigError (code `weak-token-secret`) when the secret is shorter than MIN_SECRET_BYTES. */
export function checkTokenSecret(secret: string): void {
  const bytes = Buffer.byteLength(secret, 'utf8');
  if (bytes < MIN_SECRET_BYTES) {
    throw new ConfigError(
      `the token secret (--token-secret / NETFOLD_TOKEN_SECRET) must be at least ${MIN_SECRET_BYTES} bytes, got ${bytes}`,
      'weak-token-secret',
    );
  }
}

export async function mintToken(secret: string, p: Principal, ttlSeconds: number, now = new Date()): Promise<string> {
  const iat = Math.floor(now.getTime() / 1000);
  return new SignJWT({ scope: p.scopes, spaces: p.spaces })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(p.user)
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttlSeconds)
    .sign(keyOf(secret));
}

export type VerifyOptions = { now?: Date; maxTtlSeconds?: number };

/**
 * Checks signature, issuer, audience and time: the token must carry `exp` and `iat`, not be expired, not be issued
 * more than CLOCK_SKEW_SECONDS in the future, and live (exp − iat) at most `maxTtlSeconds`.
 */
export async function verifyToken(secret: string, token: string, opts: VerifyOptions = {}): Promise<Principal> {
  const now = opts.now ?? new Date();
  const maxTtl = opts.maxTtlSeconds ?? DEFAULT_TOKEN_MAX_TTL_SECONDS;
  try {
    const { payload } = await jwtVerify(token, keyOf(secret), {
      algorithms: ['HS256'],
      issuer: ISSUER,
      audience: AUDIENCE,
      currentDate: now,
    });
    if (typeof payload.exp !== 'number') throw new UnauthenticatedError('token has no expiry (exp claim); mint one with a --ttl');
    if (typeof payload.iat !== 'number') throw new UnauthenticatedError('token has no issue time (iat claim)');
    const nowSeconds = Math.floor(now.getTime() / 1000);
    if (payload.iat > nowSeconds + CLOCK_SKEW_SECONDS)
      throw new UnauthenticatedError(`token is issued in the future (iat more than ${CLOCK_SKEW_SECONDS} s ahead)`);
    if (payload.exp - payload.iat > maxTtl) throw new UnauthenticatedError(`token lifetime (exp - iat) exceeds the maximum of ${maxTtl} s (--token-max-ttl)`);
    const scopes = typeof payload.scope === 'string' ? payload.scope.split(' ') : Array.isArray(payload.scope) ? payload.scope : [];
    const spaces = Array.isArray(payload.spaces) ? payload.spaces : [];
    if (typeof payload.sub !== 'string' || payload.sub === '') throw new UnauthenticatedError('token has no subject');
    return {
      user: payload.sub,
      scopes: scopes.filter((s): s is string => typeof s === 'string'),
      spaces: spaces.filter((s): s is string => typeof s === 'string'),
    };
  } catch (err) {
    if (err instanceof UnauthenticatedError) throw err;
    if (err instanceof joseErrors.JWTExpired) throw new UnauthenticatedError('token expired', err);
    throw new UnauthenticatedError('invalid token', err);
  }
}

/** Parses "30s", "15m", "24h", "7d" or a number of seconds. */
export function parseDuration(text: string): number {
  const m = /^(\d+)([smhd]?)$/.exec(text.trim());
  if (!m) throw new Error(`invalid duration "${text}" (use e.g. 90s, 15m, 24h, 7d)`);
  const n = Number(m[1]);
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[m[2] as '' | 's' | 'm' | 'h' | 'd'];
  return n * unit;
}
