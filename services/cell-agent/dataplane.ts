// Dataplane drivers behind one small interface (the "modular topology" of the original proposal): the real
// nftables driver, an in-memory one for simulation and benchmarks, and a render-only one for dry runs.
import { spawn } from 'node:child_process';
import { NetfoldError } from '../../runtime/errors.ts';
import { type AppliedStamp, type Protocol, type RuleIndex, type RuleSet, TABLE, allows, indexRules, renderNft, renderNftChanges, stampOf } from './rules.ts';

/** What a (re)started agent finds in the dataplane: null when nothing is loaded; else the stamp it carries (null when none). */
export type FoundTable = { stamp: AppliedStamp | null } | null;

export interface Dataplane {
  readonly kind: 'nftables' | 'memory' | 'render';
  /** Loads the whole rule set atomically, stamped with the revision and hash of the state it was built from. */
  apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void>;
  /** What is loaded now, before this process applied anything (an agent's restart adopts it). */
  found(): Promise<FoundTable>;
  /** True when what is enforced differs from what was last applied (tampered with, flushed, missing). */
  drifted(): Promise<boolean>;
  /** What the last detected drift was, e.g. `table-missing` or `table-changed`. */
  readonly lastDrift?: string;
}

class DataplaneError extends NetfoldError {
  constructor(message: string, cause?: unknown) {
    super(message, 'dataplane-failed', 500, true, cause);
    this.name = 'DataplaneError';
  }
}

/** Runs a command, feeding `input` on stdin; resolves with stdout (streamed, no buffer limit). */
export function run(command: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout!.on('data', (d: Buffer) => out.push(d));
    child.stderr!.on('data', (d: Buffer) => err.push(d));
    child.once('error', (e) => reject(new DataplaneError(`could not run ${command}: ${e.message}`, e)));
    child.once('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out).toString());
      else reject(new DataplaneError(`${command} ${args.join(' ')} exited ${code}: ${Buffer.concat(err).toString().trim().slice(0, 2000)}`));
    });
    if (input !== undefined) {
      child.stdin!.on('error', () => undefined); // a command that exits early: its exit code tells
      child.stdin!.end(input);
    }
  });
}

export type NftOptions = { overlayCidr: string; /** Network namespace to program; the host's when absent. */ netns?: string };

/**
 * The real driver: one nftables table owned by netfold. The first load, and any load after drift, replaces the
 * table whole in one `nft -f -` transaction; later changes are set element additions and deletions in one
 * transaction. After each apply the kernel's listing is captured (in the background, awaited by the next drift
 * check) as the baseline that drift checks compare with.
 */
export class NftDataplane implements Dataplane {
  readonly kind = 'nftables' as const;
  readonly #o: NftOptions;
  /** What is loaded; its index is built on the first incremental change after a whole load (off the load's path). */
  #applied: { rules: RuleSet; stamp?: AppliedStamp; index?: RuleIndex } | undefined;
  #baseline: Promise<string | undefined> | undefined;
  /** Drift seen (incremented by drifted()) and drift repaired by a whole load: equal when in sync. */
  #driftSeen = 0;
  #driftLoaded = 0;
  /** Loads by kind, for status and benchmarks. */
  readonly loads = { full: 0, incremental: 0 };
  lastDrift?: string;
  /** apply() and drifted() never interleave: a load between reading the baseline and listing would look like drift. */
  #tail: Promise<unknown> = Promise.resolve();

  #exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(work, work);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  constructor(opts: NftOptions) {
    this.#o = opts;
  }

  #nft(args: string[], input?: string): Promise<string> {
    return this.#o.netns ? run('ip', ['netns', 'exec', this.#o.netns, 'nft', ...args], input) : run('nft', args, input);
  }

  apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void> {
    return this.#exclusive(() => this.#apply(rules, stamp));
  }

  /** The table as found (the stamp is the `applied` set's element comment); null when there is no table. */
  async found(): Promise<FoundTable> {
    const listing = await this.#exclusive(() => this.listing());
    return listing === undefined ? null : { stamp: stampOf(listing) };
  }

  async #apply(rules: RuleSet, stamp: AppliedStamp | undefined): Promise<void> {
    await this.#baseline; // never overlap a listing with a change
    const drift = this.#driftSeen;
    const whole = !this.#applied || drift !== this.#driftLoaded;
    let changes: ReturnType<typeof renderNftChanges> | undefined;
    if (!whole) {
      const applied = this.#applied!;
      applied.index ??= indexRules(applied.rules, applied.stamp);
      changes = renderNftChanges(applied.index, rules, this.#o.overlayCidr, stamp);
      if (changes.text === null) return;
    }
    let index: RuleIndex | undefined;
    try {
      if (changes !== undefined) {
        await this.#nft(['-f', '-'], changes.text!);
        this.loads.incremental += 1;
        index = changes.index;
      } else {
        await this.#nft(['-f', '-'], renderNft(rules, this.#o.overlayCidr, stamp));
        this.loads.full += 1;
      }
    } catch (err) {
      this.#applied = undefined; // unknown state: the next apply loads the table whole
      throw err;
    }
    // rule sets are never modified once built
    const loadedStamp = index ? index.stamp : stamp;
    this.#applied = { rules, ...(loadedStamp ? { stamp: loadedStamp } : {}), ...(index ? { index } : {}) };
    if (whole) this.#driftLoaded = drift; // drift seen during this load is repaired by the next one
    this.#baseline = this.listing();
  }

  /** The kernel's listing of the table, or undefined when it does not exist. */
  async listing(): Promise<string | undefined> {
    try {
      return await this.#nft(['list', 'table', 'inet', TABLE]);
    } catch {
      return undefined;
    }
  }

  drifted(): Promise<boolean> {
    return this.#exclusive(() => this.#drifted());
  }

  async #drifted(): Promise<boolean> {
    if (!this.#applied || !this.#baseline) return false;
    const baseline = await this.#baseline;
    const now = await this.listing();
    if (baseline !== undefined && now === baseline) return false;
    this.lastDrift = now === undefined ? 'table-missing' : 'table-changed';
    this.#driftSeen += 1; // the next apply loads the table whole
    return true;
  }
}

/** Same semantics in process: for simulations and benchmarks (and tests of what a rule set allows). */
export class MemoryDataplane implements Dataplane {
  readonly kind = 'memory' as const;
  rules: RuleSet = { local: [], subnets: [], allows: [] };
  /** The stamp of what is loaded; `loaded` is false until something was applied (like a kernel with no table). */
  stamp: AppliedStamp | null = null;
  loaded = false;
  applies = 0;
  #tampered = false;

  constructor(private readonly overlayCidr: string) {}

  async apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void> {
    this.rules = rules; // the agent never edits a rule set it handed over (a new one is built for every change)
    this.stamp = stamp ?? null;
    this.loaded = true;
    this.applies += 1;
    this.#tampered = false;
  }

  async found(): Promise<FoundTable> {
    return this.loaded ? { stamp: this.stamp } : null;
  }

  lastDrift?: string;

  async drifted(): Promise<boolean> {
    if (this.#tampered) this.lastDrift = 'rules-flushed';
    return this.#tampered;
  }

  /** Simulates someone flushing the rules. */
  tamper(): void {
    this.rules = { local: this.rules.local, subnets: this.rules.subnets, allows: [] };
    this.#tampered = true;
  }

  allows(src: string, dst: string, protocol: Protocol, port: number): boolean {
    return allows(this.rules, src, dst, protocol, port, this.overlayCidr);
  }
}

/** Dry run: renders what it would load and hands it to `print`; enforces nothing. */
export class RenderDataplane implements Dataplane {
  readonly kind = 'render' as const;
  constructor(
    private readonly overlayCidr: string,
    private readonly print: (text: string) => void,
  ) {}

  async apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void> {
    this.print(renderNft(rules, this.overlayCidr, stamp));
  }

  async found(): Promise<FoundTable> {
    return null;
  }

  async drifted(): Promise<boolean> {
    return false;
  }
}
