// The status reporter: the cell's status record (KV `netfold-cell-status`, key = cell) — what the agent has
// applied, how long it took, its drift repairs and its last error — rebuilt after every pass of the converger and
// after every repair, and put as a plain publish through a BucketWriter. The record is built by pure functions;
// the reporter only remembers the last one and puts it.
import type { Logger } from '../../runtime/logger.ts';
import type { Dataplane } from './dataplane.ts';
import type { ConvergePass, Repairs } from './converger.ts';
import type { Refusals } from './feed.ts';

/** The network driver's side of a cell (services/cell-agent/network.ts): the driver, remote cells routed, drift repairs, last error. */
export type NetworkStatus = { driver: string; peers: number; repairs: number; error: string | null };

export type CellStatus = {
  cellId: string;
  dataplane: Dataplane['kind'];
  /** Revision and hash of the desired state now enforced. */
  revision: number;
  hash: string;
  appliedAt: string;
  applyMs: number;
  rules: { local: number; allows: number };
  driftRepairs: number;
  /** The last repair: when, and what was found (`table-missing`, `table-changed`, …). */
  lastRepair: { at: string; drift: string } | null;
  error: string | null;
  /** Input the feed refused (forged or corrupted snapshots and deltas): how many, and the last one. */
  refusals: Refusals;
  /** Absent with the `none` driver (or an older agent). */
  network?: NetworkStatus;
  /** Egress (security groups) loaded: containers bound to a group chain, groups, rules, entries refused as invalid. */
  egress?: EgressStatus;
};

export type EgressStatus = { bound: number; groups: number; rules: number; refused: number };

/** The status after a pass: what it applied, or (when its load failed) the revision and hash still enforced. */
export function statusAfterPass(
  prev: CellStatus | undefined,
  pass: ConvergePass,
  ids: { cellId: string; dataplane: Dataplane['kind'] },
  refusals: Refusals = prev?.refusals ?? { count: 0, last: null },
): CellStatus {
  const { error, view, rules } = pass;
  return {
    cellId: ids.cellId,
    dataplane: ids.dataplane,
    revision: error ? (prev?.revision ?? 0) : view.revision,
    hash: error ? (prev?.hash ?? '') : view.hash,
    appliedAt: pass.at,
    applyMs: pass.applyMs,
    rules: { local: rules.local, allows: rules.allows },
    driftRepairs: pass.repairs.count,
    lastRepair: pass.repairs.last,
    error,
    refusals,
    ...(pass.egress && { egress: pass.egress }),
  };
}

/** The status after a repair; nothing before the first pass (there is no record to correct yet). */
export function statusAfterRepair(prev: CellStatus | undefined, repairs: Repairs): CellStatus | undefined {
  return prev ? { ...prev, driftRepairs: repairs.count, lastRepair: repairs.last } : undefined;
}

/** Where the record goes: a `BucketWriter` on the status bucket. */
export type StatusWriter = { put(key: string, value: string): Promise<unknown> };

export class StatusReporter {
  readonly #cellId: string;
  readonly #dataplane: Dataplane['kind'];
  readonly #writer: StatusWriter;
  readonly #log: Logger;
  #status: CellStatus | undefined;
  #refusals: Refusals = { count: 0, last: null };
  #network: NetworkStatus | undefined;

  constructor(opts: { cellId: string; dataplane: Dataplane['kind']; writer: StatusWriter; log: Logger }) {
    this.#cellId = opts.cellId;
    this.#dataplane = opts.dataplane;
    this.#writer = opts.writer;
    this.#log = opts.log.child({ component: 'status-reporter' });
  }

  /** The last status built (undefined before the first pass). */
  get status(): CellStatus | undefined {
    return this.#status;
  }

  /** After every pass of the converger, failed or not; a put that fails is logged, never thrown. */
  async passed(pass: ConvergePass): Promise<void> {
    this.#status = statusAfterPass(this.#status, pass, { cellId: this.#cellId, dataplane: this.#dataplane }, this.#refusals);
    if (this.#network) this.#status.network = this.#network;
    await this.#put(this.#status);
  }

  /** After the network driver's state changed (peers, a repair, an error). */
  async network(network: NetworkStatus): Promise<void> {
    this.#network = network;
    if (!this.#status) return;
    this.#status = { ...this.#status, network };
    await this.#put(this.#status);
  }

  /** After the feed refused input: the record says so at once (no pass follows a refusal that changed nothing). */
  async refused(refusals: Refusals): Promise<void> {
    this.#refusals = refusals;
    if (!this.#status) return;
    this.#status = { ...this.#status, refusals };
    await this.#put(this.#status);
  }

  /** After a drift repair (the rules are back). */
  async repaired(repairs: Repairs): Promise<void> {
    this.#status = statusAfterRepair(this.#status, repairs);
    if (this.#status) await this.#put(this.#status);
  }

  #put(status: CellStatus): Promise<unknown> {
    return this.#writer.put(this.#cellId, JSON.stringify(status)).catch((err: unknown) => this.#log.warn({ err }, 'status-put-failed'));
  }
}
