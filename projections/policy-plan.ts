// What applying a policy file changes, computed on a model (pure): the file's apps resolved by id or name among the
// apps the caller may use, the policies to create (in the file, not in the log) and, with prune, to delete (in the
// file's scope — its spaces and source apps — and in the log, not in the file). Applying the plan's changes and
// planning again gives an empty plan (idempotent).
import { type PolicyRule, policyKey } from '../events/catalogue.ts';
import type { FileIssue, PolicyFile } from '../events/policy-file.ts';
import type { Model } from './model.ts';

export type PolicyChange = {
  op: 'create' | 'delete';
  sourceAppId: string;
  rule: PolicyRule;
  /** Where the file has it (creates). */
  line?: number;
};

export type PolicyPlan = {
  /** Per source app, sorted: the rules to create and to delete. */
  creates: Map<string, PolicyRule[]>;
  deletes: Map<string, PolicyRule[]>;
  changes: PolicyChange[];
  /** Policies of the file already in the log. */
  unchanged: number;
  /** The file's scope, resolved: spaces and source app ids. */
  scope: { spaces: string[]; apps: string[] };
};

export type PlanOptions = {
  /** May the caller use this app (both ends of a policy must be usable)? */
  usable: (appId: string) => boolean;
  prune: boolean;
};

/** Resolves an id or a name to a live app the caller may use. */
function resolver(m: Model, usable: (appId: string) => boolean): (ref: string) => string | undefined {
  return (ref) => {
    const byId = m.apps[ref];
    if (byId && !byId.deleted && usable(ref)) return ref;
    const id = m.appIdByName[ref.toLowerCase()];
    const app = id === undefined ? undefined : m.apps[id];
    return app && !app.deleted && usable(app.id) ? app.id : undefined;
  };
}

export function planPolicyFile(m: Model, file: PolicyFile, o: PlanOptions): { ok: true; value: PolicyPlan } | { ok: false; issues: FileIssue[] } {
  const issues: FileIssue[] = [];
  const resolve = resolver(m, o.usable);
  const unknown = (ref: string, line: number, path: string) => issues.push({ line, path, message: `no app "${ref}" (by id or name) that this token may use` });
  const scopeApps = new Set<string>();
  for (const a of file.apps) {
    const id = resolve(a.name);
    if (id === undefined) unknown(a.name, a.line, `apps.${a.name}`);
    else scopeApps.add(id);
  }
  const scopeSpaces = new Set(file.spaces.map((s) => s.name));
  const desired = new Map<string, { sourceAppId: string; rule: PolicyRule; line: number }>();
  const reported = new Set<string>();
  for (const e of file.entries) {
    const src = resolve(e.source);
    const dst = resolve(e.to);
    const srcPath = e.path.replace(/\[\d+\]$/, '');
    if (src === undefined) {
      if (!reported.has(srcPath)) unknown(e.source, e.line, srcPath);
      reported.add(srcPath);
    }
    if (dst === undefined) unknown(e.to, e.line, `${e.path}.to`);
    if (src !== undefined && e.space !== undefined && m.apps[src]!.spaceId !== e.space && !reported.has(srcPath)) {
      reported.add(srcPath);
      issues.push({ line: e.line, path: srcPath, message: `app "${e.source}" is in space ${m.apps[src]!.spaceId}, not ${e.space}` });
    }
    if (src === undefined || dst === undefined) continue;
    const rule: PolicyRule = { destAppId: dst, protocol: e.protocol, startPort: e.startPort, endPort: e.endPort };
    const key = `${src}|${policyKey(rule)}`;
    if (!desired.has(key)) desired.set(key, { sourceAppId: src, rule, line: e.line });
  }
  if (issues.length > 0) return { ok: false, issues };

  const changes: PolicyChange[] = [];
  let unchanged = 0;
  for (const d of desired.values()) {
    if (m.policies[d.sourceAppId]?.[policyKey(d.rule)]) unchanged += 1;
    else changes.push({ op: 'create', sourceAppId: d.sourceAppId, rule: d.rule, line: d.line });
  }
  if (o.prune) {
    for (const [sourceAppId, bySource] of Object.entries(m.policies)) {
      const app = m.apps[sourceAppId];
      if (!app || !(scopeApps.has(sourceAppId) || scopeSpaces.has(app.spaceId))) continue;
      for (const p of Object.values(bySource)) {
        const rule: PolicyRule = { destAppId: p.destAppId, protocol: p.protocol, startPort: p.startPort, endPort: p.endPort };
        // Only what the caller may touch: a policy into an app it may not use is not its to remove.
        if (!desired.has(`${sourceAppId}|${policyKey(rule)}`) && o.usable(sourceAppId) && o.usable(p.destAppId))
          changes.push({ op: 'delete', sourceAppId, rule });
      }
    }
  }
  changes.sort(
    (a, b) =>
      cmp(a.op, b.op) ||
      cmp(a.sourceAppId, b.sourceAppId) ||
      cmp(a.rule.destAppId, b.rule.destAppId) ||
      cmp(a.rule.protocol, b.rule.protocol) ||
      a.rule.startPort - b.rule.startPort,
  );
  const group = (op: PolicyChange['op']) => {
    const out = new Map<string, PolicyRule[]>();
    for (const c of changes.filter((x) => x.op === op)) (out.get(c.sourceAppId) ?? out.set(c.sourceAppId, []).get(c.sourceAppId)!).push(c.rule);
    return out;
  };
  return {
    ok: true,
    value: { creates: group('create'), deletes: group('delete'), changes, unchanged, scope: { spaces: [...scopeSpaces].sort(), apps: [...scopeApps].sort() } },
  };
}

const cmp = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);
