// Trust on the bus: each role's NATS permissions, generated from the subject scheme (runtime/subjects.ts, the cell
// stream in projections/cell-stream.ts, the KV and object-store layouts in runtime/nats-adapter.ts), nkey
// credentials per principal, the credential files processes sign in with (`{ name, seed, inboxPrefix }`, mode 0600),
// and the server's `authorization { users: [...] }` block. Nothing here talks to NATS.
//
// Each principal subscribes only under its own inbox prefix (`_INBOX.<role>[.<id>]`, set as the connection's
// inboxPrefix): with `_INBOX.>` an agent could read the replies to every other agent's snapshot reads and consumer
// deliveries. A principal that serves requests may publish replies only into its requesters' inboxes: the writer
// into platforms' (intake), the planner into agents' (cell state), an agent into platforms' (ready gate), each also
// into the admin's. Not `allow_responses`: nats-server 2.9 then records the reply subject of every message delivered
// to the user — the `$JS.ACK` subjects of its consumers' deliveries included, never answered — and past 4,096 scans
// the whole record on every delivery: with it the writer's intake fell to 0.05-0.18x (docs/benchmarks.md).
import { nkeys } from '@nats-io/nats-core';
import { CELL_STATUS_BUCKET, DISCOVERY_BUCKET, EVENTS_STREAM, EVENT_SUBJECTS, INTAKE_QUEUE, PLANNER_CHECKPOINT_BUCKET } from './subjects.ts';
import { INTAKE_SUBJECTS, PLANNER_MEMBERS_BUCKET, intakeSubjectsOf, readySubject } from './subjects.ts';
import { CELL_DELTAS_STREAM, CELL_SNAPSHOTS_STREAM, cellSubject } from '../projections/cell-stream.ts';
import { kvLayout, objLayout } from './nats-adapter.ts';
import { ConfigError } from './errors.ts';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { writePrivateFile } from './private-file.ts';

export const ROLES = ['writer', 'planner', 'agent', 'platform', 'discovery', 'operator', 'admin'] as const;
export type Role = (typeof ROLES)[number];

/**
 * Who connects: a role; for an agent the one cell it serves; for a platform component its caller id (the token of
 * `nf.cmd.<caller>.…` it may send intake commands under: the actor its events record).
 */
export type Principal = { role: Exclude<Role, 'agent' | 'platform'> } | { role: 'agent'; cellId: string } | { role: 'platform'; id: string };

/** A user's permissions in nats-server's syntax (a queue subscription is allowed as `"<subject> <queue>"`). */
export type NatsPermissions = { publish: { allow: string[] }; subscribe: { allow: string[] } };

export type Credential = {
  principal: Principal;
  /** `writer`, `agent_<cell>`, …: names the principal in logs and in its inbox prefix. */
  name: string;
  /** The nkey's public key (`U…`): what the server's config holds. */
  publicKey: string;
  /** The nkey seed (`SU…`): the secret the client signs the server's nonce with. */
  seed: string;
  /** The connection's inbox prefix: the only subjects, besides what it serves, it may subscribe to. */
  inboxPrefix: string;
  permissions: NatsPermissions;
};

const ID = /^[A-Za-z0-9_-]+$/;

export const principalName = (p: Principal): string => (p.role === 'agent' ? `agent_${p.cellId}` : p.role === 'platform' ? `platform_${p.id}` : p.role);

// ---- the JetStream API, as far as each role uses it -------------------------------------------------------------

const API = '$JS.API';

/** Everything a reader of a whole stream needs: info, ordered consumers (any filter), direct and stream gets. */
function readStream(stream: string): string[] {
  return [
    `${API}.STREAM.INFO.${stream}`,
    `${API}.CONSUMER.CREATE.${stream}.>`, // `<name>` or `<name>.<filter>` (nats.js v3 puts the filter in the subject)
    `${API}.CONSUMER.MSG.NEXT.${stream}.*`,
    `${API}.CONSUMER.INFO.${stream}.*`,
    `${API}.CONSUMER.DELETE.${stream}.*`,
    `${API}.DIRECT.GET.${stream}`,
    `${API}.DIRECT.GET.${stream}.>`,
    `${API}.STREAM.MSG.GET.${stream}`,
    `$JS.FC.${stream}.>`, // flow control of push consumers (KV watch, object-store reads)
  ];
}

/** One subject of a stream only: ordered consumers filtered on it, and last-by-subject direct gets of it. */
function readSubject(stream: string, subject: string): string[] {
  return [
    `${API}.STREAM.INFO.${stream}`,
    `${API}.CONSUMER.CREATE.${stream}.*.${subject}`,
    `${API}.CONSUMER.MSG.NEXT.${stream}.*`,
    `${API}.CONSUMER.INFO.${stream}.*`,
    `${API}.CONSUMER.DELETE.${stream}.*`,
    `${API}.DIRECT.GET.${stream}.${subject}`,
  ];
}

const kv = (bucket: string) => kvLayout.stream(bucket);
const kvKey = (bucket: string, key: string) => kvLayout.subject(bucket, key);

/** Publish and subscribe lists of one role, before the inbox and `$JS.API.INFO` every role but platform gets. */
function grantsOf(p: Principal): { pub: string[]; sub: string[]; repliesTo: Role[]; jetstream: boolean } {
  switch (p.role) {
    case 'writer':
      return {
        pub: [
          EVENT_SUBJECTS,
          ...readStream(EVENTS_STREAM),
          // the enforcement answer: planned revisions, planners' progress, cells' statuses and heartbeats
          ...[CELL_SNAPSHOTS_STREAM, CELL_DELTAS_STREAM].flatMap(readStream),
          ...[PLANNER_MEMBERS_BUCKET, CELL_STATUS_BUCKET, DISCOVERY_BUCKET].map(kv).flatMap(readStream),
        ],
        sub: [`${INTAKE_SUBJECTS} ${INTAKE_QUEUE}`],
        repliesTo: ['platform'],
        jetstream: true,
      };
    case 'planner':
      return {
        pub: [
          cellSubject.allSnapshots,
          cellSubject.allDeltas,
          ...[EVENTS_STREAM, CELL_SNAPSHOTS_STREAM, CELL_DELTAS_STREAM, kv(PLANNER_MEMBERS_BUCKET)].flatMap(readStream),
          kvKey(PLANNER_MEMBERS_BUCKET, '>'),
          // the checkpoint store; a put purges the object's old chunks (a purge filtered by subject)
          ...readStream(objLayout.stream(PLANNER_CHECKPOINT_BUCKET)),
          objLayout.subjects(PLANNER_CHECKPOINT_BUCKET),
          `${API}.STREAM.PURGE.${objLayout.stream(PLANNER_CHECKPOINT_BUCKET)}`,
        ],
        sub: [cellSubject.allStates],
        repliesTo: ['agent'],
        jetstream: true,
      };
    case 'agent': {
      const cell = p.cellId;
      return {
        pub: [
          ...readSubject(CELL_DELTAS_STREAM, cellSubject.delta(cell)),
          ...readSubject(CELL_SNAPSHOTS_STREAM, cellSubject.snapshot(cell)),
          `${API}.STREAM.INFO.${kv(CELL_STATUS_BUCKET)}`,
          `${API}.STREAM.INFO.${kv(DISCOVERY_BUCKET)}`,
          kvKey(CELL_STATUS_BUCKET, cell),
          kvKey(DISCOVERY_BUCKET, cell),
          cellSubject.state(cell),
        ],
        // its deltas live, as the planner stores them (services/cell-agent/feed.ts); the stream only to catch up
        sub: [readySubject(cell), cellSubject.delta(cell)],
        repliesTo: ['platform'],
        jetstream: true,
      };
    }
    case 'platform':
      // intake under its own caller token only (so its events record it as their actor), and the ready gate of any
      // cell ("is the policy for container C in place there?")
      return { pub: [intakeSubjectsOf(p.id), readySubject('*')], sub: [], repliesTo: [], jetstream: false };
    case 'discovery':
      return { pub: readStream(kv(DISCOVERY_BUCKET)), sub: [], repliesTo: [], jetstream: true };
    case 'operator':
      return {
        // (the discovery records: when each cell's agent was last heard, for the enforcement answer's silent cells)
        pub: [EVENTS_STREAM, CELL_SNAPSHOTS_STREAM, CELL_DELTAS_STREAM, kv(CELL_STATUS_BUCKET), kv(PLANNER_MEMBERS_BUCKET), kv(DISCOVERY_BUCKET)].flatMap(
          readStream,
        ),
        sub: [],
        repliesTo: [],
        jetstream: true,
      };
    case 'admin':
      return { pub: ['>'], sub: ['>'], repliesTo: [], jetstream: true };
    default:
      return p satisfies never;
  }
}

/** The permissions of a principal; its inbox prefix is `inboxPrefixOf(p)`. */
export function permissionsOf(p: Principal): NatsPermissions {
  if (p.role === 'agent' && !ID.test(p.cellId)) throw new ConfigError(`cell id ${JSON.stringify(p.cellId)} is not [A-Za-z0-9_-]`, 'invalid-cell-id');
  if (p.role === 'platform' && !ID.test(p.id)) throw new ConfigError(`platform id ${JSON.stringify(p.id)} is not [A-Za-z0-9_-]`, 'invalid-platform-id');
  const g = grantsOf(p);
  const replies = g.repliesTo.length > 0 ? [...g.repliesTo.map((role) => `${INBOXES}.${role}.>`), `${INBOXES}.admin.>`] : [];
  const pub = [...(g.jetstream && p.role !== 'admin' ? [`${API}.INFO`] : []), ...g.pub, ...replies];
  const sub = p.role === 'admin' ? g.sub : [`${inboxPrefixOf(p)}.>`, ...g.sub];
  return { publish: { allow: [...new Set(pub)] }, subscribe: { allow: sub } };
}

const INBOXES = '_INBOX';

/** `_INBOX.agent.<cell>`, `_INBOX.platform.<id>`, `_INBOX.<role>` for the others (admin included). */
const inboxPrefixOf = (p: Principal) =>
  p.role === 'agent' ? `${INBOXES}.agent.${p.cellId}` : p.role === 'platform' ? `${INBOXES}.platform.${p.id}` : `${INBOXES}.${p.role}`;

/** The credential of a principal signing in with the nkey `seed` (`SU…`). */
function credentialOf(principal: Principal, seed: string): Credential {
  const permissions = permissionsOf(principal);
  let publicKey: string;
  try {
    publicKey = nkeys.fromSeed(new TextEncoder().encode(seed)).getPublicKey();
  } catch {
    throw new ConfigError(`the nkey seed of ${principalName(principal)} is not a user seed`, 'invalid-credential');
  }
  if (!publicKey.startsWith('U')) throw new ConfigError(`the nkey seed of ${principalName(principal)} is not a user seed`, 'invalid-credential');
  return { principal, name: principalName(principal), publicKey, seed, inboxPrefix: inboxPrefixOf(principal), permissions };
}

function checkUnique(principals: readonly Principal[]): void {
  const names = principals.map(principalName);
  const dup = names.find((n, i) => names.indexOf(n) !== i);
  if (dup) throw new ConfigError(`principal ${dup} is listed twice`, 'duplicate-principal');
}

/** A new nkey user for each principal (names must be unique: one credential per agent cell). */
export function createCredentials(principals: readonly Principal[]): Credential[] {
  checkUnique(principals);
  return principals.map((principal) => credentialOf(principal, new TextDecoder().decode(nkeys.createUser().getSeed())));
}

// ---- credential files -------------------------------------------------------------------------------------------

/** What a process needs to sign in (`--nats-creds` / NATS_CREDS): a JSON file, mode 0600. */
export type CredentialFile = { name: string; seed: string; inboxPrefix: string };

/** The file of a principal in a credentials directory (`netfold up`: `<data-dir>/nats/`). */
export const credentialFileOf = (dir: string, name: string): string => join(dir, `${name}.creds.json`);

/** Reads a credential file; ConfigError `invalid-credential-file` when it is missing or not one. */
export function readCredentialFile(file: string): CredentialFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(file, 'utf8'));
  } catch (err) {
    const why = (err as { code?: string }).code === 'ENOENT' ? 'does not exist' : 'is not JSON';
    throw new ConfigError(`NATS credential file ${file} ${why}`, 'invalid-credential-file');
  }
  const c = parsed as Partial<CredentialFile> | null;
  if (!c || typeof c.name !== 'string' || typeof c.seed !== 'string' || !c.seed.startsWith('SU') || typeof c.inboxPrefix !== 'string' || !c.inboxPrefix) {
    throw new ConfigError(`NATS credential file ${file} is not { name, seed, inboxPrefix } with a user seed`, 'invalid-credential-file');
  }
  return { name: c.name, seed: c.seed, inboxPrefix: c.inboxPrefix };
}

function writeCredentialFile(file: string, c: Credential): void {
  const content: CredentialFile = { name: c.name, seed: c.seed, inboxPrefix: c.inboxPrefix };
  writePrivateFile(file, JSON.stringify(content, null, 2) + '\n');
}

/**
 * The credentials of `principals` kept in `dir`, one 0600 file each: existing files are read (their seeds kept), the
 * missing ones generated and written. `created` names the new ones.
 */
export function ensureCredentialFiles(dir: string, principals: readonly Principal[]): { credentials: Credential[]; created: string[] } {
  checkUnique(principals);
  const created: string[] = [];
  const credentials = principals.map((principal) => {
    const file = credentialFileOf(dir, principalName(principal));
    if (existsSync(file)) {
      const stored = readCredentialFile(file);
      const cred = credentialOf(principal, stored.seed);
      if (stored.inboxPrefix !== cred.inboxPrefix) writeCredentialFile(file, cred); // same key, the current inbox scheme
      return cred;
    }
    const [fresh] = createCredentials([principal]);
    writeCredentialFile(file, fresh!);
    created.push(fresh!.name);
    return fresh!;
  });
  return { credentials, created };
}

/**
 * The server's `authorization` block (nats-server config; JSON is valid config syntax, and quoted strings keep
 * their `$`). Users in the global account: with no `accounts` block, nats-server 2.9 enables JetStream for it.
 * No `no_auth_user`: a connection without a known nkey is refused.
 */
export function authorizationBlock(creds: readonly Credential[]): string {
  const users = creds.map((c) => ({ nkey: c.publicKey, permissions: c.permissions }));
  return `authorization ${JSON.stringify({ users }, null, 2)}\n`;
}
