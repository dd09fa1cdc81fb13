// Field validators for everything that arrives from outside (HTTP bodies, NATS requests, events read back).
// Each pushes a readable issue and returns a placeholder on failure; callers check `issues.length` once at the end,
// so one bad input reports every problem at once. No dependencies, no I/O.

import { CIDR_PATTERN, IPV4_PATTERN, isCanonicalCidr } from '../projections/ipv4.ts';

export type Issue = { path: string; message: string };
export type Issues = Issue[];

export type Result<T> = { ok: true; value: T } | { ok: false; issues: Issue[] };

export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$/;
/** A DNS label (RFC 1123): the app's discovery name is `<name>.<domain>`. */
const APP_NAME_PATTERN = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;
const ULID_PATTERN = /^[0-9A-HJKMNP-TV-Z]{26}$/;

const describe = (v: unknown): string => (v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v);

export function objectOf(v: unknown, path: string, issues: Issues, allowedKeys?: readonly string[]): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) {
    issues.push({ path, message: `must be an object, got ${describe(v)}` });
    return {};
  }
  const o = v as Record<string, unknown>;
  if (allowedKeys) {
    for (const k of Object.keys(o)) {
      if (!allowedKeys.includes(k)) issues.push({ path: join(path, k), message: 'is not a known field' });
    }
  }
  return o;
}

export function arrayOf(v: unknown, path: string, issues: Issues, opts: { min?: number; max?: number } = {}): unknown[] {
  if (!Array.isArray(v)) {
    issues.push({ path, message: `must be an array, got ${describe(v)}` });
    return [];
  }
  if (opts.min !== undefined && v.length < opts.min) issues.push({ path, message: `must have at least ${opts.min} item(s)` });
  if (opts.max !== undefined && v.length > opts.max) issues.push({ path, message: `must have at most ${opts.max} items` });
  return v;
}

export function stringOf(v: unknown, path: string, issues: Issues, opts: { max?: number; min?: number } = {}): string {
  if (typeof v !== 'string') {
    issues.push({ path, message: v === undefined ? 'is required' : `must be a string, got ${describe(v)}` });
    return '';
  }
  if (v.length < (opts.min ?? 1)) issues.push({ path, message: 'must not be empty' });
  if (v.length > (opts.max ?? 256)) issues.push({ path, message: `must be at most ${opts.max ?? 256} characters` });
  return v;
}

export function idOf(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: 128 });
  if (s && !ID_PATTERN.test(s)) {
    issues.push({ path, message: 'must be 1-128 characters of letters, digits, "-" or "_", starting with a letter or digit' });
  }
  return s;
}

export function appNameOf(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: 63 });
  if (s && !APP_NAME_PATTERN.test(s)) {
    issues.push({ path, message: 'must be a DNS label: 1-63 letters, digits or "-", not starting or ending with "-"' });
  }
  return s;
}

export function ipv4Of(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: 15 });
  if (s && !IPV4_PATTERN.test(s)) issues.push({ path, message: 'must be an IPv4 address in dotted-quad form' });
  return s;
}

/** An IPv4 network in CIDR form with no host bits set, /8 to /30. */
export function cidrOf(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: 18 });
  if (!s) return s;
  if (!CIDR_PATTERN.test(s)) issues.push({ path, message: 'must be an IPv4 network in CIDR form, e.g. 10.255.1.0/24' });
  else if (!isCanonicalCidr(s)) issues.push({ path, message: 'must have no host bits set (the network address, e.g. 10.255.1.0/24)' });
  else {
    const bits = Number(s.split('/')[1]);
    if (bits < 8 || bits > 30) issues.push({ path, message: 'prefix length must be between /8 and /30' });
  }
  return s;
}

export function boolOf(v: unknown, path: string, issues: Issues): boolean {
  if (typeof v !== 'boolean') issues.push({ path, message: v === undefined ? 'is required' : `must be true or false, got ${describe(v)}` });
  return v === true;
}

/** A prefix length between `min` and 30 (a container range needs a gateway and at least one container address). */
export function prefixOf(v: unknown, path: string, issues: Issues, min = 8): number {
  return intOf(v, path, issues, min, 30);
}

export function intOf(v: unknown, path: string, issues: Issues, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v)) {
    issues.push({ path, message: v === undefined ? 'is required' : `must be an integer, got ${describe(v)}` });
    return 0;
  }
  if (v < min || v > max) issues.push({ path, message: `must be between ${min} and ${max}` });
  return v;
}

export function oneOf<T extends string>(v: unknown, path: string, issues: Issues, values: readonly T[]): T {
  if (typeof v !== 'string' || !(values as readonly string[]).includes(v)) {
    issues.push({ path, message: `must be one of ${values.join(', ')}` });
    return values[0]!;
  }
  return v as T;
}

export function isoTimeOf(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: 40 });
  if (s && Number.isNaN(Date.parse(s))) issues.push({ path, message: 'must be an ISO-8601 time' });
  return s;
}

export function ulidOf(v: unknown, path: string, issues: Issues): string {
  const s = stringOf(v, path, issues, { max: 26 });
  if (s && !ULID_PATTERN.test(s)) issues.push({ path, message: 'must be a ULID' });
  return s;
}

export function optional<T>(v: unknown, path: string, issues: Issues, read: (v: unknown, path: string, issues: Issues) => T): T | undefined {
  return v === undefined || v === null ? undefined : read(v, path, issues);
}

export function join(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path ? `${path}.${key}` : key;
}

export function result<T>(issues: Issues, value: T): Result<T> {
  return issues.length > 0 ? { ok: false, issues } : { ok: true, value };
}
