// Dataplane drivers behind one small interface (the "modular topology" of the original proposal): the real
// nftables driver, an in-memory one for simulation and benchmarks, and a render-only one for dry runs.
import { type SpawnOptions, spawn } from 'node:child_process';
import { NetfoldError } from '../../runtime/errors.ts';
import {
  type AppliedStamp,
  type Allow,
  type Protocol,
  type RuleDiff,
  type RuleSet,
  type TableElements,
  TABLE,
  allows,
  applyDiffTo,
  normalizeAllows,
  readTable,
  renderNft,
  renderNftDiff,
  stampElementsOf,
  stampOf,
  tableElementsOf,
} from './rules.ts';

/** What a (re)started agent finds in the dataplane: null when nothing is loaded; else the stamp it carries (null when none). */
export type FoundTable = { stamp: AppliedStamp | null } | null;

export interface Dataplane {
  readonly kind: 'nftables' | 'memory' | 'render';
  /** Loads the whole rule set atomically, stamped with the revision and hash of the state it was built from. */
  apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void>;
  /**
   * Applies a difference to what this process loaded last, when that is the difference's `from` (the `version` of
   * the RuleSet loaded whole, or the `to` of the difference applied since) and nothing drifted meanwhile: true.
   * False when it cannot (nothing loaded by this process, a failed load, another base, drift seen): load whole.
   */
  change(diff: RuleDiff, stamp?: AppliedStamp): Promise<boolean>;
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

/** Runs a command, feeding `input` on stdin; resolves with stdout (streamed, no buffer limit). `signal` kills it. */
export function run(command: string, args: string[], input?: string, signal?: AbortSignal): Promise<string> {
  return new Promise((resolve, reject) => {
    const options: SpawnOptions = { stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] };
    if (signal) Object.assign(options, { signal, killSignal: 'SIGKILL' });
    const child = spawn(command, args, options);
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

export type NftOptions = {
  overlayCidr: string;
  /** Network namespace to program; the host's when absent. */
  netns?: string;
  /**
   * A drift check that changes keep abandoning (a table that changes all the time, listed slowly) is made to complete
   * — holding changes up while it lists — once none completed for this long (default DRIFT_CHECK_DUE_MS).
   */
  checkDueMs?: number;
};

/**
 * The real driver: one nftables table owned by netfold. A whole load replaces the table in one `nft -f -`
 * transaction; a difference is one transaction of set element deletions and additions, its size whatever the
 * table's. Drift checks read the kernel's listing back against what was loaded: the table's skeleton (chains, set
 * declarations, as listed by the first check after the last whole load) and every element with its comment. What
 * was loaded is kept set by set (TableElements), built by the first check after a whole load from its rule set and
 * the differences applied since, so neither a load nor a change pays for it. A check runs beside changes, never
 * holding them up: the elements a change touches while a check lists and reads are left out of that check (the
 * listing may show them before or after).
 */
export class NftDataplane implements Dataplane {
  readonly kind = 'nftables' as const;
  readonly #o: NftOptions;
  /**
   * What is loaded: the RuleExpander version it is (undefined: a RuleSet built otherwise, no difference applies),
   * the stamp elements, and its elements — until a check builds them, the rule set loaded whole and the differences
   * applied since. Undefined while unknown (nothing loaded by this process, or a load failed); a new object with every
   * whole load.
   */
  #loaded: Loaded | undefined;
  /** The elements touched, as `set element`, during each drift check under way. */
  readonly #checks = new Set<Set<string>>();
  /** The elements of the change being loaded (changes are loaded one at a time). */
  #inflight: Array<[string, string]> = [];
  /** A drift check's listing under way: `abort` abandons it (absent: it must complete). */
  #listingNow: { done: Promise<unknown>; abort?: AbortController } | undefined;
  /** Drift seen (incremented by drifted()) and drift repaired by a whole load: equal when in sync. */
  #driftSeen = 0;
  #driftLoaded = 0;
  /** Loads by kind, for status and benchmarks. */
  readonly loads = { full: 0, incremental: 0 };
  lastDrift?: string;
  /** Loads and reads of the stamp one at a time. */
  #tail: Promise<unknown> = Promise.resolve();

  #exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(work, work);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  constructor(opts: NftOptions) {
    this.#o = opts;
  }

  #nft(args: string[], input?: string, signal?: AbortSignal): Promise<string> {
    return this.#o.netns ? run('ip', ['netns', 'exec', this.#o.netns, 'nft', ...args], input, signal) : run('nft', args, input, signal);
  }

  apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void> {
    return this.#exclusive(async () => {
      const drift = this.#driftSeen;
      const text = renderNft(rules, this.#o.overlayCidr, stamp);
      this.#loaded = undefined; // unknown until nft took it
      await this.#nft(['-f', '-'], text);
      this.loads.full += 1;
      this.#loaded = { version: rules.version, stamps: stampElementsOf(stamp), rules, applied: [], at: Date.now() };
      this.#driftLoaded = drift; // drift seen during this load is repaired by the next one
    });
  }

  change(diff: RuleDiff, stamp?: AppliedStamp): Promise<boolean> {
    return this.#exclusive(async () => {
      const loaded = this.#loaded;
      if (!loaded || loaded.version === undefined || loaded.version !== diff.from || this.#driftSeen !== this.#driftLoaded) return false;
      const { text, keys, commit } = renderNftDiff(diff, loaded.stamps, this.#o.overlayCidr, stamp);
      if (text !== null) {
        await this.#overtake();
        // the checks under way leave these elements out, and so do those that begin before this is committed (nft
        // may still be exiting when the kernel already holds the change, and a check may list it meanwhile)
        for (const touched of this.#checks) for (const [set, element] of keys) touched.add(`${set} ${element}`);
        this.#inflight = keys;
        try {
          await this.#nft(['-f', '-'], text);
        } catch (err) {
          this.#loaded = undefined; // unknown state: the next change is refused, the next load is whole
          throw err;
        } finally {
          this.#inflight = [];
        }
        commit();
        if (loaded.elements) applyDiffTo(loaded.elements, diff);
        else loaded.applied.push(diff);
        this.loads.incremental += 1;
      }
      loaded.version = diff.to;
      return true;
    });
  }

  /**
   * A drift check listing the table when a change comes: abandoned (a listing under way makes element deletions
   * several times slower, and restarts whenever the table changes under it), unless it is one that must complete —
   * then the change waits for its listing.
   */
  async #overtake(): Promise<void> {
    const listing = this.#listingNow;
    if (!listing) return;
    if (listing.abort) listing.abort.abort();
    else await listing.done;
  }

  /** What `loaded` holds element by element: built once (from its rule set, then the differences applied since). */
  async #elementsOf(loaded: Loaded): Promise<TableElements> {
    if (loaded.elements) return loaded.elements;
    const elements = await (loaded.building ??= tableElementsOf(loaded.rules!, loaded.stamps, pause));
    if (!loaded.elements) {
      // (no await from here on: a change applies to the map or to the list, never in between)
      for (const diff of loaded.applied) applyDiffTo(elements, diff);
      loaded.elements = elements;
      loaded.applied = [];
      delete loaded.rules;
    }
    return loaded.elements;
  }

  /** The table as found (the stamp is the `applied` set's element comment); null when there is no table. */
  async found(): Promise<FoundTable> {
    const listing = await this.#exclusive(() => this.listing());
    return listing === undefined ? null : { stamp: stampOf(listing) };
  }

  /** The kernel's listing of the table, or undefined when it does not exist. */
  async listing(): Promise<string | undefined> {
    try {
      return await this.#nft(['list', 'table', 'inet', TABLE]);
    } catch {
      return undefined;
    }
  }

  /**
   * Lists the table and reads it back against what was loaded. A whole load while it runs makes the check moot
   * (false: the next one compares with the new table).
   */
  async drifted(): Promise<boolean> {
    const loaded = this.#loaded;
    if (!loaded || this.#listingNow) return false;
    const touched = new Set(this.#inflight.map(([set, element]) => `${set} ${element}`));
    this.#checks.add(touched);
    try {
      // a change abandons the listing, unless no check completed for DRIFT_CHECK_DUE_MS: then it waits for it
      const abort = Date.now() - (loaded.checked ?? loaded.at) < (this.#o.checkDueMs ?? DRIFT_CHECK_DUE_MS) ? new AbortController() : undefined;
      const done = this.#nft(['list', 'table', 'inet', TABLE], undefined, abort?.signal).then(
        (text) => text,
        () => undefined,
      );
      this.#listingNow = { done, ...(abort && { abort }) };
      const listing = await done.finally(() => (this.#listingNow = undefined));
      if (this.#loaded !== loaded || abort?.signal.aborted) return false;
      if (listing === undefined) return this.#drift('table-missing');
      const elements = await this.#elementsOf(loaded);
      const matched = new Map<string, number>();
      let stray = false;
      const skeleton = await readTable(
        listing,
        (set, element, comment) => {
          if (touched.size > 0 && touched.has(`${set} ${element}`)) return;
          if (elements.get(set)?.get(element) === comment) matched.set(set, (matched.get(set) ?? 0) + 1);
          else stray = true;
        },
        pause,
      );
      if (this.#loaded !== loaded) return false;
      if (stray) return this.#drift('elements-changed');
      for (const [set, held] of elements) {
        let expected = held.size;
        for (const key of touched) if (key.startsWith(`${set} `) && held.has(key.slice(set.length + 1))) expected -= 1;
        if ((matched.get(set) ?? 0) !== expected) return this.#drift('elements-changed');
      }
      loaded.skeleton ??= skeleton; // the first check after a whole load reads the table's skeleton
      loaded.checked = Date.now();
      return skeleton === loaded.skeleton ? false : this.#drift('table-changed');
    } finally {
      this.#checks.delete(touched);
    }
  }

  #drift(kind: string): true {
    this.lastDrift = kind;
    this.#driftSeen += 1; // the next load is whole
    return true;
  }
}

type Loaded = {
  /** When it was loaded whole, and when a drift check last completed on it. */
  at: number;
  checked?: number;
  version: number | undefined;
  stamps: Map<string, string>;
  rules?: RuleSet;
  applied: RuleDiff[];
  elements?: TableElements;
  building?: Promise<TableElements>;
  skeleton?: string;
};

/** NftOptions.checkDueMs by default: a drift check completes at least once a minute, however busy the table. */
const DRIFT_CHECK_DUE_MS = 60_000;

/** Lets the event loop run (between slices of a large table's elements). */
const pause = () => new Promise<void>((resolve) => setImmediate(resolve));

/** An element of the table: the flow without its comment. */
const flowKey = (a: Allow) => `${a.src} ${a.dst} ${a.protocol} ${a.startPort} ${a.endPort}`;

/** Same semantics in process: for simulations and benchmarks (and tests of what a rule set allows). */
export class MemoryDataplane implements Dataplane {
  readonly kind = 'memory' as const;
  /** The stamp of what is loaded; `loaded` is false until something was applied (like a kernel with no table). */
  stamp: AppliedStamp | null = null;
  loaded = false;
  /** Loads, whole or by difference, and of them by difference. */
  applies = 0;
  changes = 0;
  #rules: RuleSet = { local: [], subnets: [], allows: [] };
  /** Once a difference was applied: what is loaded by element, until `rules` is read again. */
  #held: { flows: Map<string, Allow>; local: Set<string>; subnets: Set<string> } | undefined;
  #stale = false;
  #version: number | undefined;
  #tampered = false;

  constructor(private readonly overlayCidr: string) {}

  /** What is loaded (the agent never edits a rule set it handed over). */
  get rules(): RuleSet {
    if (this.#held && this.#stale) {
      const { flows, local, subnets } = this.#held;
      this.#rules = { local: [...local].sort(), subnets: [...subnets].sort(), allows: normalizeAllows([...flows.values()]) };
      this.#stale = false;
    }
    return this.#rules;
  }

  async apply(rules: RuleSet, stamp?: AppliedStamp): Promise<void> {
    this.#rules = rules;
    this.#held = undefined;
    this.#version = rules.version;
    this.#loaded(stamp);
  }

  async change(diff: RuleDiff, stamp?: AppliedStamp): Promise<boolean> {
    if (this.#version === undefined || this.#version !== diff.from || this.#tampered) return false;
    const r = this.#rules;
    const held = (this.#held ??= { flows: new Map(r.allows.map((a) => [flowKey(a), a])), local: new Set(r.local), subnets: new Set(r.subnets) });
    for (const a of diff.removed) held.flows.delete(flowKey(a));
    for (const a of diff.added) held.flows.set(flowKey(a), a);
    for (const ip of diff.local.removed) held.local.delete(ip);
    for (const ip of diff.local.added) held.local.add(ip);
    for (const c of diff.subnets.removed) held.subnets.delete(c);
    for (const c of diff.subnets.added) held.subnets.add(c);
    this.#stale = true;
    this.#version = diff.to;
    this.changes += 1;
    this.#loaded(stamp);
    return true;
  }

  #loaded(stamp: AppliedStamp | undefined): void {
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
    const { local, subnets } = this.rules;
    this.#rules = { local, subnets, allows: [] };
    this.#held = undefined;
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

  /** Prints the whole table for every change (false: the converger loads whole). */
  async change(): Promise<boolean> {
    return false;
  }

  async found(): Promise<FoundTable> {
    return null;
  }

  async drifted(): Promise<boolean> {
    return false;
  }
}
