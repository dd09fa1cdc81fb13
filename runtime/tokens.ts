// Bearer tokens: HS256-signed JWTs carrying the user, their scopes and the spaces where they are a developer.
// Shared by the gateway (verify) and the CLI (mint).
import { SignJWT, jwtVerify, errors as joseErrors } from 'jose';
import { UnauthenticatedError } from './errors.ts';

export const SCOPES = ['network.admin', 'network.write'] as const;
export type Scope = (typeof SCOPES)[number];

export type Principal = { user: string; scopes: string[]; spaces: string[] };

const ISSUER = 'netfold';
const AUDIENCE = 'netfold-policy';

const keyOf = (secret: string) => new TextEncoder().encode(secret);

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

export async function verifyToken(secret: string, token: string, now = new Date()): Promise<Principal> {
  try {
    const { payload } = await jwtVerify(token, keyOf(secret), {
      algorithms: ['HS256'],
      issuer: ISSUER,
      audience: AUDIENCE,
      currentDate: now,
    });
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
