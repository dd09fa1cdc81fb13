// Policy files ("policy as code"): the desired policies of one or more spaces or source apps, as YAML (or JSON,
// which is YAML too). This module owns the format: it parses a file into entries that keep their line, so every
// problem is reported at the line it is on, and it writes the same format back (`netfold export`).
//
//   version: 1
//   spaces:                      # every policy whose source app is in the space (the space is the scope)
//     space-1:
//       web:                     # source app, by name or id (it must be in that space)
//         - to: api              # destination app, by name or id
//           ports: 8080          # N, "N-M"
//           protocol: tcp        # tcp (default) or udp
//   apps:                        # every policy of these source apps, wherever they live
//     app-batch:
//       - { to: api, ports: 9000-9010, protocol: udp }
//
// A space or app listed with nothing under it (`space-2: {}`, `app-x: []`) says it has no policies: with --prune,
// the scope of a file is exactly the spaces and source apps it lists.
import { LineCounter, isMap, isScalar, isSeq, parseDocument, stringify, type Node } from 'yaml';
import { PROTOCOLS, type Protocol } from './catalogue.ts';
import { ID_PATTERN } from './fields.ts';

/** A problem in a policy file, at its line (1-based; 0 when the file as a whole is wrong). */
export type FileIssue = { line: number; path: string; message: string };

export type PolicyFileEntry = {
  /** The source app and destination app as written (an id or a name). */
  source: string;
  to: string;
  protocol: Protocol;
  startPort: number;
  endPort: number;
  /** The space it is listed under, when listed by space. */
  space?: string;
  line: number;
  path: string;
};

export type PolicyFile = {
  /** The scope: the spaces and the source apps (as written) the file speaks for. */
  spaces: { name: string; line: number }[];
  apps: { name: string; line: number }[];
  entries: PolicyFileEntry[];
};

const ENTRY_KEYS = ['to', 'ports', 'protocol'];
const TOP_KEYS = ['version', 'spaces', 'apps'];

/** Parses a policy file; every problem is reported at once, each with its line. */
export function parsePolicyFile(text: string): { ok: true; value: PolicyFile } | { ok: false; issues: FileIssue[] } {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines, prettyErrors: true, uniqueKeys: true });
  const lineOf = (n: Node | null | undefined) => (n?.range ? lines.linePos(n.range[0]).line : 0);
  const issues: FileIssue[] = [];
  for (const e of doc.errors) issues.push({ line: e.linePos?.[0]?.line ?? 0, path: '', message: `not valid YAML: ${e.message.split('\n')[0]}` });
  if (issues.length > 0) return { ok: false, issues };
  const file: PolicyFile = { spaces: [], apps: [], entries: [] };
  const root = doc.contents;
  if (!isMap(root)) return { ok: false, issues: [{ line: lineOf(root), path: '', message: 'must be a mapping with `version`, `spaces` and/or `apps`' }] };

  const keyOf = (k: unknown) => (isScalar(k) ? String(k.value) : String(k));
  const idAt = (v: unknown, line: number, path: string): string | undefined => {
    const s = isScalar(v) ? v.value : v;
    if (typeof s !== 'string' && typeof s !== 'number') {
      issues.push({ line, path, message: 'must be an app id or name' });
      return undefined;
    }
    const text = String(s);
    if (!ID_PATTERN.test(text)) issues.push({ line, path, message: 'must be an id or name: letters, digits, "-" or "_", 1-128 characters' });
    return text;
  };
  const entriesOf = (list: unknown, source: string, space: string | undefined, path: string, line: number) => {
    if (list === null || (isScalar(list) && list.value === null)) return; // `app:` with nothing: no policies
    if (!isSeq(list)) {
      issues.push({ line, path, message: 'must be a list of policies (`- to: APP`, `ports: N`)' });
      return;
    }
    list.items.forEach((item, i) => {
      const p = `${path}[${i}]`;
      const at = lineOf(item as Node);
      if (!isMap(item)) {
        issues.push({ line: at, path: p, message: 'must be a mapping with `to`, `ports` and optionally `protocol`' });
        return;
      }
      const get = (k: string) => item.items.find((pair) => keyOf(pair.key) === k);
      for (const pair of item.items)
        if (!ENTRY_KEYS.includes(keyOf(pair.key)))
          issues.push({ line: lineOf(pair.key as Node), path: `${p}.${keyOf(pair.key)}`, message: 'is not a known field (to, ports, protocol)' });
      const toPair = get('to');
      const to = toPair ? idAt(toPair.value, lineOf(toPair.value as Node) || at, `${p}.to`) : undefined;
      if (!toPair) issues.push({ line: at, path: `${p}.to`, message: 'is required' });
      const protoPair = get('protocol');
      const protoValue = protoPair ? (isScalar(protoPair.value) ? protoPair.value.value : undefined) : 'tcp';
      if (!(PROTOCOLS as readonly unknown[]).includes(protoValue))
        issues.push({ line: lineOf(protoPair?.value as Node) || at, path: `${p}.protocol`, message: `must be one of ${PROTOCOLS.join(', ')}` });
      const portsPair = get('ports');
      const ports = portsPair ? portsOf(isScalar(portsPair.value) ? portsPair.value.value : undefined) : undefined;
      if (!portsPair) issues.push({ line: at, path: `${p}.ports`, message: 'is required' });
      else if (!ports)
        issues.push({ line: lineOf(portsPair.value as Node) || at, path: `${p}.ports`, message: 'must be a port N or a range "N-M", 1 <= N <= M <= 65535' });
      if (to !== undefined && ports && (PROTOCOLS as readonly unknown[]).includes(protoValue)) {
        const entry: PolicyFileEntry = { source, to, protocol: protoValue as Protocol, startPort: ports[0], endPort: ports[1], line: at, path: p };
        if (space !== undefined) entry.space = space;
        file.entries.push(entry);
      }
    });
  };
  const sourcesOf = (node: unknown, space: string | undefined, path: string, line: number) => {
    if (node === null || (isScalar(node) && node.value === null)) return;
    if (!isMap(node)) {
      issues.push({ line, path, message: 'must be a mapping of source apps to their policies' });
      return;
    }
    for (const pair of node.items) {
      const at = lineOf(pair.key as Node);
      const source = idAt(pair.key, at, `${path}.${keyOf(pair.key)}`);
      if (source === undefined) continue;
      if (space === undefined) file.apps.push({ name: source, line: at });
      entriesOf(pair.value, source, space, `${path}.${source}`, at);
    }
  };

  for (const pair of root.items) {
    const key = keyOf(pair.key);
    const at = lineOf(pair.key as Node);
    if (!TOP_KEYS.includes(key)) {
      issues.push({ line: at, path: key, message: 'is not a known field (version, spaces, apps)' });
      continue;
    }
    if (key === 'version') {
      if (!isScalar(pair.value) || pair.value.value !== 1) issues.push({ line: lineOf(pair.value as Node) || at, path: 'version', message: 'must be 1' });
    } else if (key === 'apps') {
      sourcesOf(pair.value, undefined, 'apps', at);
    } else {
      const spaces = pair.value;
      if (spaces === null || (isScalar(spaces) && spaces.value === null)) continue;
      if (!isMap(spaces)) {
        issues.push({ line: at, path: 'spaces', message: 'must be a mapping of space ids to their source apps' });
        continue;
      }
      for (const sp of spaces.items) {
        const spAt = lineOf(sp.key as Node);
        const space = idAt(sp.key, spAt, `spaces.${keyOf(sp.key)}`);
        if (space === undefined) continue;
        file.spaces.push({ name: space, line: spAt });
        sourcesOf(sp.value, space, `spaces.${space}`, spAt);
      }
    }
  }
  if (issues.length > 0) return { ok: false, issues };
  return { ok: true, value: file };
}

function portsOf(v: unknown): [number, number] | undefined {
  const m = typeof v === 'number' ? /^(\d+)$/.exec(String(v)) : typeof v === 'string' ? /^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$/.exec(v) : null;
  if (!m) return undefined;
  const start = Number(m[1]);
  const end = m[2] === undefined ? start : Number(m[2]);
  return start >= 1 && start <= end && end <= 65535 ? [start, end] : undefined;
}

/** A policy to write: source and destination as they should read (names), grouped under the source's space. */
export type ExportedPolicy = { space: string; source: string; to: string; protocol: Protocol; startPort: number; endPort: number };

/**
 * Writes policies in the file format, grouped by space then source app, sorted; every space in `spaces` is listed
 * (empty ones too: the file speaks for them). YAML starts with `header` as a comment; JSON has none.
 */
export function writePolicyFile(policies: readonly ExportedPolicy[], spaces: readonly string[], header: string, format: 'yaml' | 'json'): string {
  const bySpace = new Map<string, Map<string, Record<string, unknown>[]>>();
  for (const s of [...new Set([...spaces, ...policies.map((p) => p.space)])].sort()) bySpace.set(s, new Map());
  const sorted = [...policies].sort((a, b) =>
    a.space !== b.space ? cmp(a.space, b.space) : a.source !== b.source ? cmp(a.source, b.source) : a.to !== b.to ? cmp(a.to, b.to) : a.startPort - b.startPort,
  );
  for (const p of sorted) {
    const sources = bySpace.get(p.space)!;
    const list = sources.get(p.source) ?? sources.set(p.source, []).get(p.source)!;
    list.push({ to: p.to, ports: p.startPort === p.endPort ? p.startPort : `${p.startPort}-${p.endPort}`, protocol: p.protocol });
  }
  const doc = { version: 1, spaces: Object.fromEntries([...bySpace].map(([space, sources]) => [space, Object.fromEntries(sources)])) };
  if (format === 'json') return JSON.stringify(doc, null, 2) + '\n';
  const comment = header
    .split('\n')
    .map((l) => `# ${l}`.trimEnd())
    .join('\n');
  return `${comment}\n${stringify(doc, { collectionStyle: 'block', lineWidth: 0 })}`;
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
