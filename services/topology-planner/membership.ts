// Planner instances share the cells by rendezvous hashing over the live members. Members announce themselves in a
// KV bucket (`m.<id>`; their progress under `p.<id>`) with a heartbeat; the member list is re-read every heartbeat
// and a member whose heartbeat stopped is dropped after `deadMs` (HeartbeatWatch), well before its entry expires
// with the bucket's TTL. A clean stop deletes its own entry at once.
import { createHash } from 'node:crypto';
import { Kvm, type KV } from '@nats-io/kv';
import type { Bus } from '../../runtime/nats.ts';
import type { Logger } from '../../runtime/logger.ts';
import { PLANNER_MEMBERS_BUCKET } from '../../runtime/subjects.ts';
import { bucketOptions, createOrOpenBucket } from '../../runtime/topology.ts';
import { kvLatest } from '../../runtime/buckets.ts';

/** The keys of the planners' bucket: `m.<id>` a live member (heartbeat), `p.<id>` how far it has published. */
const plannerKey = {
  member: (id: string) => `m.${id}`,
  progress: (id: string) => `p.${id}`,
  allMembers: 'm.*',
} as const;

/**
 * The live members (sorted), each one's published-through revision and the members under which it published
 * (`covers`: null when it did not say), from the bucket's entries.
 */
export function plannersOf(entries: ReadonlyMap<string, unknown>): {
  members: string[];
  publishedThrough: (id: string) => number;
  covers: (id: string) => readonly string[] | null;
} {
  const members = [...entries.keys()]
    .filter((k) => k.startsWith('m.'))
    .map((k) => k.slice(2))
    .sort();
  const progress = (id: string) => entries.get(plannerKey.progress(id)) as { publishedThrough?: unknown; members?: unknown } | undefined;
  return {
    members,
    publishedThrough: (id) => {
      const p = progress(id);
      return typeof p?.publishedThrough === 'number' ? p.publishedThrough : 0;
    },
    covers: (id) => {
      const m = progress(id)?.members;
      return Array.isArray(m) && m.every((x) => typeof x === 'string') ? (m as string[]) : null;
    },
  };
}

/** How long a member's heartbeat may stand still while others beat before it counts as dead (the planner's default). */
export const DEFAULT_MEMBER_DEAD_MS = 1200;

/**
 * The members whose heartbeat, as stored (`beats`: member → the stored time of its last `m.<id>` put, on the stream
 * leader's clock), is more than `deadMs` older than the newest member's: they stopped while another kept beating.
 * When every member stands still (an election: nothing is stored) none is. For readers that only look once (the
 * enforcement answer, which also requires that the live members have taken such a member's cells over); a planner
 * decides with HeartbeatWatch, on its own clock.
 */
export function stoppedMembers(beats: ReadonlyMap<string, number>, deadMs: number): string[] {
  const newest = Math.max(...beats.values());
  return [...beats]
    .filter(([, at]) => newest - at > deadMs)
    .map(([id]) => id)
    .sort();
}

/** The member that owns a cell: the highest hash of (member, cell). Stable: a change of members moves only the
 * cells of the member that came or went. */
function ownerOf(cellId: string, members: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestScore = '';
  for (const m of members) {
    const score = createHash('sha256').update(`${m}\u0000${cellId}`).digest('hex');
    if (score > bestScore) {
      bestScore = score;
      best = m;
    }
  }
  return best;
}

/**
 * Which members are alive, told by their heartbeats changing rather than by their entries expiring (the bucket's TTL
 * only clears entries away): a member whose entry has not changed for `deadMs` while this member's own heartbeats
 * were being stored the whole time is dead. Only local clocks are compared (no skew between hosts), and while the
 * bus itself stalls (a JetStream election: nobody's heartbeat is stored) nobody is declared dead, so an election
 * does not make every planner take every cell.
 */
export class HeartbeatWatch {
  readonly #self: string;
  readonly #deadMs: number;
  readonly #seen = new Map<string, { beat: string; changedAt: number }>();

  constructor(self: string, deadMs: number) {
    this.#self = self;
    this.#deadMs = deadMs;
  }

  /**
   * The live members (sorted) among the bucket's entries seen at `now`; `healthySince`: own heartbeats stored since.
   * A member seen before whose entry is gone is judged like one whose entry stands still (dead `deadMs` after its last
   * beat, or after this member's own beats were stored again, whichever is later): an outage of the bucket
   * longer than its TTL (an election) expires every entry, and the others' come back only with their next beats —
   * dropping them at once made the first planner to get a beat stored take every other planner's cells, and hand
   * them back 300 ms later (bench:chaos, deltas-leader: 10–17 s to re-converge). `deleted`: keys deleted (a clean
   * stop): those members are gone at once.
   */
  live(entries: ReadonlyMap<string, unknown>, now: number, healthySince: number, deleted: ReadonlySet<string> = new Set()): string[] {
    const present = new Set(plannersOf(entries).members);
    for (const id of this.#seen.keys()) if (deleted.has(plannerKey.member(id))) this.#seen.delete(id);
    const alive = (id: string, beat: string | undefined): boolean => {
      const seen = this.#seen.get(id);
      if (beat !== undefined && seen?.beat !== beat) {
        this.#seen.set(id, { beat, changedAt: now });
        return true;
      }
      if (!seen) return false;
      if (now - Math.max(seen.changedAt, healthySince) < this.#deadMs) return true;
      if (!present.has(id)) this.#seen.delete(id);
      return false;
    };
    const out: string[] = [];
    for (const id of new Set([...present, ...this.#seen.keys()])) {
      // (a gone entry is no change: the member stands still from its last beat)
      if (id === this.#self ? present.has(id) : alive(id, present.has(id) ? JSON.stringify(entries.get(plannerKey.member(id)) ?? null) : undefined))
        out.push(id);
    }
    return out.sort();
  }
}

export type MembershipOptions = { bus: Bus; id: string; log: Logger; heartbeatMs: number; ttlMs: number; deadMs: number; replicas: number };

export class Membership {
  readonly #o: MembershipOptions;
  readonly #log: Logger;
  #kv: KV | undefined;
  #members: string[] = [];
  #timer: NodeJS.Timeout | undefined;
  #listeners = new Set<(members: string[]) => void>();
  readonly #watch: HeartbeatWatch;
  /** Since when this member's heartbeats have been stored without a failure (undefined: the last one failed). */
  #healthySince: number | undefined;
  #beating = false;

  constructor(opts: MembershipOptions) {
    this.#o = opts;
    this.#log = opts.log.child({ component: 'membership' });
    this.#watch = new HeartbeatWatch(opts.id, opts.deadMs);
  }

  get members(): readonly string[] {
    return this.#members;
  }

  owns = (cellId: string): boolean => ownerOf(cellId, this.#members) === this.#o.id;

  /**
   * Announces how far this planner's outputs are published (`p.<id>`): with it, "is revision N enforced?" can
   * tell a cell untouched by N from a planner that has not got there yet. `members`: the members under which
   * everything owned is published (given when a mark after a change of members passes, the take-over outputs
   * before it acknowledged): the enforcement answer stops waiting for a dead member once every live one's progress
   * no longer lists it. Throttled; fire and forget.
   */
  reportProgress(publishedThrough: number, members?: readonly string[]): void {
    if (publishedThrough > this.#latest) this.#latest = publishedThrough;
    if (members && members.join(',') !== this.#covered.join(',')) {
      this.#covered = [...members];
      this.#sent = 0; // say so now, even if the revision did not move
    }
    void this.#flushProgress();
  }

  #latest = 0;
  #sent = 0;
  #covered: readonly string[] = [];
  #reporting = false;

  #progressValue(): string {
    return JSON.stringify({ publishedThrough: this.#latest, members: this.#covered });
  }

  async #flushProgress(): Promise<void> {
    if (this.#reporting || !this.#kv || this.#timer === undefined) return; // not joined: nothing to say yet
    this.#reporting = true;
    try {
      while (this.#sent < this.#latest) {
        const value = this.#latest;
        await this.#kv.put(plannerKey.progress(this.#o.id), this.#progressValue());
        this.#sent = value;
      }
    } catch (err) {
      this.#log.warn({ err }, 'planner-progress-put-failed');
    } finally {
      this.#reporting = false;
    }
  }

  onChange(listener: (members: string[]) => void): void {
    this.#listeners.add(listener);
  }

  async #open(): Promise<KV> {
    const options = bucketOptions.plannerMembers(this.#o.replicas, this.#o.ttlMs);
    this.#kv ??= await createOrOpenBucket(PLANNER_MEMBERS_BUCKET, () => new Kvm(this.#o.bus.js).create(PLANNER_MEMBERS_BUCKET, options));
    return this.#kv;
  }

  /** The other members present now (entries not expired), read without joining. */
  async peers(): Promise<string[]> {
    await this.#open();
    const entries = await kvLatest(this.#o.bus, PLANNER_MEMBERS_BUCKET, plannerKey.allMembers);
    return plannersOf(entries).members.filter((id) => id !== this.#o.id);
  }

  /** Joins: heartbeats from now on, and the member list (this one included) re-read with each. */
  async start(): Promise<void> {
    await this.#open();
    await this.#beat();
    this.#timer = setInterval(() => {
      if (this.#beating) return; // a beat still waiting on the bus (an election): do not pile more up
      this.#beating = true;
      this.#beat()
        .catch((err: unknown) => this.#log.warn({ err }, 'planner-heartbeat-failed'))
        .finally(() => (this.#beating = false));
    }, this.#o.heartbeatMs);
  }

  async #beat(): Promise<void> {
    const kv = this.#kv!;
    try {
      await kv.put(plannerKey.member(this.#o.id), JSON.stringify({ at: Date.now() }));
    } catch (err) {
      this.#healthySince = undefined;
      throw err;
    }
    this.#healthySince ??= Date.now();
    // The progress entry expires with the bucket's TTL like the member entry: an idle planner must keep saying how
    // far it has published, or after one TTL it would look behind (and nothing would ever be "enforced" again).
    if (this.#latest > 0) {
      await kv.put(plannerKey.progress(this.#o.id), this.#progressValue());
      this.#sent = Math.max(this.#sent, this.#latest);
    }
    const deleted = new Set<string>();
    const entries = await kvLatest(this.#o.bus, PLANNER_MEMBERS_BUCKET, plannerKey.allMembers, deleted);
    const keys = this.#watch.live(entries, Date.now(), this.#healthySince, deleted);
    if (keys.join(',') !== this.#members.join(',')) {
      this.#members = keys;
      this.#log.info({ members: keys }, 'planner-members-changed');
      for (const l of this.#listeners) l(keys);
    }
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    await this.#kv?.delete(plannerKey.member(this.#o.id)).catch(() => undefined);
  }
}
