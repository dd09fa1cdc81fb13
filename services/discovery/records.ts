// The discovery index: cells' records (names -> IPs) with the local time each was last heard of, and which of them
// are live. Pure: the caller passes the clock and the connection state, so expiry is easy to test.
//
// Expiry (as Cloud Foundry's service discovery): a cell not heard of for `thresholdMs` has its records dropped —
// but never while this service is disconnected from NATS, nor during one threshold after it reconnects, so a bus
// outage does not empty DNS.

export type CellRecord = { cellId: string; names: Record<string, string[]>; heardAt: number };

export type ExpiryState = { connected: boolean; /** No expiry before this time (set to reconnect + threshold). */ pausedUntil: number };

export class DiscoveryIndex {
  readonly #cells = new Map<string, CellRecord>();
  #names = new Map<string, { ip: string; cellId: string }[]>();
  #dirty = true;

  constructor(private readonly thresholdMs: number) {}

  /** A record put by an agent (every apply and every heartbeat). */
  put(cellId: string, names: Record<string, string[]>, now: number): void {
    this.#cells.set(cellId, { cellId, names, heardAt: now });
    this.#dirty = true;
  }

  /** A record deleted from the bucket. */
  remove(cellId: string): void {
    if (this.#cells.delete(cellId)) this.#dirty = true;
  }

  /** Drops cells not heard of for the threshold, unless expiry is paused; returns the cells dropped. */
  expire(now: number, state: ExpiryState): string[] {
    if (!state.connected || now < state.pausedUntil) return [];
    const dropped: string[] = [];
    for (const [cellId, r] of this.#cells) {
      if (now - r.heardAt > this.thresholdMs) {
        this.#cells.delete(cellId);
        dropped.push(cellId);
      }
    }
    if (dropped.length > 0) this.#dirty = true;
    return dropped.sort();
  }

  /** Instances of a fully qualified, lower-case name (sorted by IP). */
  lookup(fqdn: string): { ip: string; cellId: string }[] {
    if (this.#dirty) {
      const names = new Map<string, { ip: string; cellId: string }[]>();
      for (const r of this.#cells.values()) {
        for (const [name, ips] of Object.entries(r.names)) {
          const list = names.get(name) ?? names.set(name, []).get(name)!;
          for (const ip of ips) list.push({ ip, cellId: r.cellId });
        }
      }
      for (const list of names.values()) list.sort((a, b) => (a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : 0));
      this.#names = names;
      this.#dirty = false;
    }
    return this.#names.get(fqdn) ?? [];
  }

  /** When a cell was last heard of (the caller's clock), if it is known. */
  heardAt(cellId: string): number | undefined {
    return this.#cells.get(cellId)?.heardAt;
  }

  get cells(): number {
    return this.#cells.size;
  }
}
