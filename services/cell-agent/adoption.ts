// The fail-closed adoption rule, pure: may a (re)started agent replace the table it found with the state its feed
// holds now? Every load is stamped with the revision and hash of the state it enforces, and the stamp moves only
// when the rules change, so any verified state at least as new as the stamp enforces nothing weaker than the
// table. Anything else — the initial empty state, an unverified one, an older plan — could weaken it: keep it.
import type { AppliedStamp } from './rules.ts';

/** `keep`: leave the table found as it is, load nothing; `load`: this state may replace it (the first load). */
export type Adoption = 'keep' | 'load';

/** What the decision needs of a feed's view (`CellView`). */
export type HeldState = { revision: number; hash: string; verified: boolean };

/**
 * Whether `view` may replace a table found with `stamp` (null: a table without a stamp, from an older agent):
 * exactly the stamped state, or a verified state whose revision is at least the stamp's (any verified state when
 * there is no stamp).
 */
export function adoptionOf(stamp: AppliedStamp | null, view: HeldState): Adoption {
  const same = stamp !== null && view.revision === stamp.revision && view.hash === stamp.hash;
  if (same) return 'load';
  return view.verified && view.revision >= (stamp?.revision ?? 0) ? 'load' : 'keep';
}
