// The cell agent's network part: feeds the network driver (network-drivers.ts) the topology of the cell's desired
// state — every active cell's range and underlay address, the `topology` section the planner keeps in each cell's
// state — whenever it changes, and checks for drift every `driftIntervalMs`: the driver's reconcile reads back what
// it owns and puts back what is missing (a deleted route, neighbour or forwarding entry), counted as a repair.
//
// Only a verified state (snapshot or delta whose hash was checked) is programmed: a restarted agent keeps the routes
// it finds until its feed holds the planner's state, never empties them from its initial empty view. An invalid
// topology entry is left out and reported (`network-topology-invalid`); with `--underlay-address` set, a registration
// naming another address is refused whole (`underlay-mismatch`: nothing is changed) — the agent would otherwise
// build tunnels from an address that is not its own.
import type { Logger } from '../../runtime/logger.ts';
import type { NetworkStatus } from './status.ts';
import type { CellView } from './feed.ts';
import { type NetworkDriver, type Topology, topologyOf } from './network-drivers.ts';

export type NetworkOptions = {
  cellId: string;
  overlayCidr: string;
  driver: NetworkDriver;
  /** The address this host is reached at, when configured: the cell's registration must name the same. */
  underlay: string | undefined;
  driftIntervalMs: number;
  view: () => CellView;
  log: Logger;
  /** After every reconcile (and on a refusal): the status the agent reports. */
  report: (status: NetworkStatus) => void;
};

export class CellNetwork {
  readonly #o: NetworkOptions;
  readonly #log: Logger;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** The topology last programmed (its canonical text): a reconcile of the same one that changes something repaired drift. */
  #applied: string | undefined;
  #running: Promise<void> = Promise.resolve();
  #queued = false;
  #status: NetworkStatus;
  #invalidWarned = '';

  constructor(o: NetworkOptions) {
    this.#o = o;
    this.#log = o.log.child({ component: 'network', driver: o.driver.kind });
    this.#status = { driver: o.driver.kind, peers: 0, repairs: 0, error: null };
  }

  get status(): NetworkStatus {
    return this.#status;
  }

  start(): void {
    if (this.#o.driver.kind === 'none') return;
    this.schedule();
    this.#timer = setInterval(() => this.schedule(), this.#o.driftIntervalMs);
  }

  /** Reconciles soon (after the one running, if any; requests in between collapse into one). */
  readonly schedule = (): void => {
    if (this.#stopped || this.#o.driver.kind === 'none' || this.#queued) return;
    this.#queued = true;
    this.#running = this.#running.then(async () => {
      this.#queued = false;
      if (!this.#stopped) await this.reconcile();
    });
  };

  /** One reconcile now; resolves with how many kernel objects changed (0 when nothing needed to). Never throws. */
  async reconcile(): Promise<number> {
    const view = this.#o.view();
    if (!view.verified) return 0;
    const { topology, invalid } = topologyOf(view.state.topology, this.#o.cellId, this.#o.overlayCidr);
    if (invalid.length > 0 && invalid.join() !== this.#invalidWarned) {
      this.#invalidWarned = invalid.join();
      this.#log.warn({ cells: invalid.slice(0, 10), count: invalid.length }, 'network-topology-invalid');
    }
    const mismatch = this.#underlayMismatch(topology);
    if (mismatch) return this.#fail(mismatch, 'underlay-mismatch');
    const key = topologyKey(topology);
    try {
      const changes = await this.#o.driver.reconcile(topology);
      const drift = changes > 0 && key === this.#applied;
      if (drift) this.#log.warn({ changes }, 'network-drift-repaired');
      else if (changes > 0) this.#log.info({ changes, peers: topology.peers.size, revision: view.revision }, 'network-applied');
      this.#applied = key;
      const error = invalid.length > 0 ? `topology entries left out (invalid): ${invalid.slice(0, 5).join(', ')}` : null;
      this.#set({ driver: this.#o.driver.kind, peers: topology.peers.size, repairs: this.#status.repairs + (drift ? 1 : 0), error });
      return changes;
    } catch (err) {
      this.#log.error({ err }, 'network-apply-failed');
      return this.#fail((err as Error).message, 'failed');
    }
  }

  #underlayMismatch(topology: Topology): string | undefined {
    const want = this.#o.underlay;
    const self = topology.self;
    if (want === undefined || !self || self.underlay === want) return undefined;
    return `cell ${this.#o.cellId} is registered with underlay address ${self.underlay}, this host is configured with ${want}: nothing programmed`;
  }

  #fail(error: string, kind: string): number {
    if (this.#status.error !== error) this.#log.error({ kind, error }, 'network-refused');
    this.#set({ ...this.#status, error });
    return 0;
  }

  #set(status: NetworkStatus): void {
    const changed = JSON.stringify(status) !== JSON.stringify(this.#status);
    this.#status = status;
    if (changed) this.#o.report(status);
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#running;
  }
}

/** A topology as canonical text (peers sorted). */
function topologyKey(t: Topology): string {
  return JSON.stringify([t.self ?? null, [...t.peers.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))]);
}
