// The discovery index: cells' records (names -> IPs) with the local time each was last heard of, and which of them
// are live. Pure: the caller passes the clock, so expiry is easy to test.
//
// Expiry (as Cloud Foundry's service discovery): a cell not heard of for `thresholdMs` has its records dropped.
// Whether cells may expire at all (not while disconnected from NATS, nor during one threshold after reconnecting)
// is the expiry policy's to say (expiry.ts), not the index's.

import type { Dict } from '../../projections/dict.ts';

export type CellRecord = { cellId: string; names: Record<string, string[]>; heardAt: number };

export class DiscoveryIndex {
  readonly #cells = new Map<string, CellRecord>();
  /** name -> cell -> that cell's IPs for the name. Kept up to date per cell, so a put costs that cell's names. */
  readonly #byName = new Map<string, Map<string, string[]>>();
  /** Answers already assembled (sorted by IP), dropped per name when one of its cells changes. */
  readonly #answers = new Map<string, { ip: string; cellId: string }[]>();

  constructor(private readonly thresholdMs: number) {}

  /**
   * A record put by an agent (every apply and every heartbeat). A heartbeat that repeats the cell's names only
   * refreshes when it was heard of: with 1,000 cells that is 200 puts a second, and rebuilding the whole index for
   * each (as this did first) kept DNS answers hundreds of milliseconds behind.
   */
  put(cellId: string, names: Dict<string[]>, now: number): void {
    // `names` as parseDiscoveryRecord returns them: a dict of IPv4 lists
    const old = this.#cells.get(cellId);
    this.#cells.set(cellId, { cellId, names, heardAt: now });
    if (old && sameNames(old.names, names)) return;
    if (old) this.#unindex(cellId, old.names);
    for (const [name, ips] of Object.entries(names)) {
      const cells = this.#byName.get(name) ?? this.#byName.set(name, new Map()).get(name)!;
      cells.set(cellId, ips);
      this.#answers.delete(name);
    }
  }

  /** A record deleted from the bucket. */
  remove(cellId: string): void {
    const old = this.#cells.get(cellId);
    if (!old) return;
    this.#cells.delete(cellId);
    this.#unindex(cellId, old.names);
  }

  #unindex(cellId: string, names: Record<string, string[]>): void {
    for (const name of Object.keys(names)) {
      const cells = this.#byName.get(name);
      if (!cells) continue;
      cells.delete(cellId);
      if (cells.size === 0) this.#byName.delete(name);
      this.#answers.delete(name);
    }
  }

  /** Drops cells not heard of for the threshold; returns the cells dropped. */
  expire(now: number): string[] {
    const dropped: string[] = [];
    for (const [cellId, r] of this.#cells) if (now - r.heardAt > this.thresholdMs) dropped.push(cellId);
    for (const cellId of dropped) this.remove(cellId);
    return dropped.sort();
  }

  /** Instances of a fully qualified, lower-case name (sorted by IP). */
  lookup(fqdn: string): { ip: string; cellId: string }[] {
    const cached = this.#answers.get(fqdn);
    if (cached) return cached;
    const cells = this.#byName.get(fqdn);
    if (!cells) return [];
    const list: { ip: string; cellId: string }[] = [];
    for (const [cellId, ips] of cells) for (const ip of ips) list.push({ ip, cellId });
    list.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.cellId < b.cellId ? -1 : a.cellId > b.cellId ? 1 : 0));
    this.#answers.set(fqdn, list);
    return list;
  }

  /** When a cell was last heard of (the caller's clock), if it is known. */
  heardAt(cellId: string): number | undefined {
    return this.#cells.get(cellId)?.heardAt;
  }

  get cells(): number {
    return this.#cells.size;
  }
}

function sameNames(a: Record<string, string[]>, b: Record<string, string[]>): boolean {
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    const x = a[k]!;
    const y = b[k];
    if (!y || x.length !== y.length || x.some((ip, i) => ip !== y[i])) return false;
  }
  return true;
}
