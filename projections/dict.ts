// Records keyed by outside ids (app, container, cell ids, names) are null-prototype objects: an id such as
// `constructor`, `__proto__` or `toString` is then an ordinary key — reading a missing one gives undefined, writing
// one never touches a prototype. They stay plain JSON (hashable, snapshot-able, immer drafts them like `{}`).
// Every record of the model and of a cell's state keyed by such ids is made here; JSON read back from the bus is
// copied into them before it is used as state (parseCellSnapshot, parseDiscoveryRecord), and a model is copied with `cloneDicts`
// (structuredClone would give every object Object.prototype back).

/** A record keyed by outside ids. Always make one with `dict()` / `dictOf()`, never with `{}`. */
export type Dict<V> = Record<string, V>;

export function dict<V>(): Dict<V> {
  return Object.create(null) as Dict<V>;
}

export function dictOf<V>(entries: Iterable<readonly [string, V]>): Dict<V> {
  const d = dict<V>();
  for (const [k, v] of entries) d[k] = v;
  return d;
}

/** Deep copy of JSON data in which every object is a dict (structuredClone would give them Object.prototype). */
export function cloneDicts<T>(value: T): T {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(cloneDicts) as T;
  const out = dict<unknown>();
  for (const k of Object.keys(value)) out[k] = cloneDicts((value as Record<string, unknown>)[k]);
  return out as T;
}
