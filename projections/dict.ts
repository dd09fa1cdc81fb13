// Records keyed by outside ids (app, container, cell ids, names) are null-prototype objects: an id such as
// `constructor`, `__proto__` or `toString` is then an ordinary key — reading a missing one gives undefined, writing
// one never touches a prototype. They stay plain JSON (hashable, snapshot-able, immer drafts them like `{}`).
// Every record of the model and of a cell's state keyed by such ids is made here; JSON read back from the bus is
// turned into them by `dictsFromJson` before it is used as state.

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

/** Own value of a key, also on an object that may not be a dict (JSON from outside). */
export function own<V>(record: Record<string, V> | undefined, key: string): V | undefined {
  return record !== undefined && Object.prototype.hasOwnProperty.call(record, key) ? record[key] : undefined;
}

/** Deep copy of JSON data in which every object is a dict (structuredClone would give them Object.prototype). */
export function cloneDicts<T>(value: T): T {
  if (value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map(cloneDicts) as T;
  const out = dict<unknown>();
  for (const k of Object.keys(value)) out[k] = cloneDicts((value as Record<string, unknown>)[k]);
  return out as T;
}

/** JSON.parse, with every object made a dict (a `"__proto__"` key stays an ordinary key). */
export function dictsFromJson(text: string): unknown {
  return cloneDicts(JSON.parse(text) as unknown);
}

/** True when every object in a JSON value is a dict; for tests of the folds. */
export function allDicts(value: unknown, skip: (path: string) => boolean = () => false, path = ''): string | undefined {
  if (value === null || typeof value !== 'object') return undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const bad = allDicts(value[i], skip, `${path}[${i}]`);
      if (bad !== undefined) return bad;
    }
    return undefined;
  }
  if (!skip(path) && Object.getPrototypeOf(value) !== null) return path || '(root)';
  for (const k of Object.keys(value)) {
    const bad = allDicts((value as Record<string, unknown>)[k], skip, `${path}.${k}`);
    if (bad !== undefined) return bad;
  }
  return undefined;
}
