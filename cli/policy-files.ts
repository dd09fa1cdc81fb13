// `netfold apply` and `netfold export`: policy files through the gateway (the difference is computed there). The
// apply streams its progress as server-sent events, drawn as a progress bar on a terminal.
import { NetfoldError } from '../runtime/errors.ts';
import type { ApplyResult, ApplyProgress } from '../services/policy-writer/policy-api.ts';
import type { ProgressBar } from './progress-bar.ts';

export type GatewayClient = { base: string; token: string };

const unreachable = (base: string) => (err: unknown) => {
  throw new NetfoldError(`could not reach the gateway at ${base}`, 'unreachable', 503, true, err);
};

async function failure(res: Response): Promise<never> {
  const data = (await res.json().catch(() => ({}))) as { code?: string; error?: string };
  throw new NetfoldError(data.error ?? `HTTP ${res.status}`, data.code ?? 'http-error', res.status, false);
}

/** Reads a server-sent event stream: each `event:` / `data:` block, in order. */
export async function* serverSentEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<{ event: string; data: string }> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const chunk of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(chunk, { stream: true });
    let end: number;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = 'message';
      const data: string[] = [];
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) event = line.slice(6).trim();
        else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
      }
      if (data.length > 0) yield { event, data: data.join('\n') };
    }
  }
}

export async function applyPolicyFile(c: GatewayClient, text: string, o: { prune: boolean; dryRun: boolean; bar: ProgressBar }): Promise<ApplyResult> {
  const q = new URLSearchParams();
  if (o.dryRun) q.set('dry_run', 'true');
  if (o.prune) q.set('prune', 'true');
  const res = await fetch(`${c.base}/netfold/v1/apply${q.size ? `?${q}` : ''}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${c.token}`, 'content-type': 'application/json', accept: 'text/event-stream' },
    body: JSON.stringify({ document: text }),
  }).catch(unreachable(c.base));
  if (!res.ok || !res.body) return failure(res);
  try {
    for await (const e of serverSentEvents(res.body)) {
      if (e.event === 'progress') {
        const p = JSON.parse(e.data) as ApplyProgress;
        if (p.total > 0) o.bar.update(p.done, p.total);
      } else if (e.event === 'result') return JSON.parse(e.data) as ApplyResult;
      else if (e.event === 'error') {
        const b = JSON.parse(e.data) as { code: string; error: string };
        throw new NetfoldError(b.error, b.code, 400, false);
      }
    }
  } finally {
    o.bar.finish();
  }
  throw new NetfoldError('the gateway closed the stream before answering', 'no-answer', 502, true);
}

export async function exportPolicyFile(c: GatewayClient, format: 'yaml' | 'json'): Promise<string> {
  const res = await fetch(`${c.base}/netfold/v1/export?format=${format}`, { headers: { authorization: `Bearer ${c.token}` } }).catch(unreachable(c.base));
  if (!res.ok) return failure(res);
  return res.text();
}

const ports = (p: { start: number; end: number }) => (p.start === p.end ? `${p.start}` : `${p.start}-${p.end}`);

/** What `netfold apply` prints: the result, each change, and (dry run) each cell's flows. */
export function applyText(r: ApplyResult): string {
  const counts = `${r.created} to create, ${r.deleted} to delete, ${r.unchanged} unchanged`;
  const head = r.dry_run
    ? `dry run at revision ${r.revision}: ${counts}; nothing was appended`
    : r.created + r.deleted === 0
      ? `no change: the log already holds the file (${r.unchanged} policies) at revision ${r.revision}`
      : `applied at revision ${r.revision}: ${r.created} created, ${r.deleted} deleted, ${r.unchanged} unchanged ` +
        `(change set ${r.change_set}: netfold audit --change-set ${r.change_set})`;
  const lines = [head];
  const SHOWN = 100;
  for (const c of r.changes.slice(0, SHOWN)) {
    const name = (a: { id: string; name: string }) => (a.id === a.name ? a.id : `${a.name} (${a.id})`);
    lines.push(
      `  ${c.op === 'create' ? '+' : '-'} ${name(c.source)} -> ${name(c.destination)} ${c.destination.protocol}/${ports(c.destination.ports)}` +
        (c.line ? `   line ${c.line}` : ''),
    );
  }
  if (r.changes.length > SHOWN) lines.push(`  … and ${r.changes.length - SHOWN} more (--json lists every one)`);
  if (r.cells) {
    for (const [cell, f] of Object.entries(r.cells)) lines.push(`cell ${cell}:`, ...f.added.map((x) => `  + ${x}`), ...f.removed.map((x) => `  - ${x}`));
    if (Object.keys(r.cells).length === 0) lines.push('no cell would change');
  }
  return lines.join('\n');
}
