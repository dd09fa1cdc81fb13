// netfold console: plain browser JavaScript, no framework, no build step. Everything it shows comes from the
// gateway with the signed-in token, so it sees exactly what that token may see.
const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const state = { token: sessionStorage.getItem('netfold-token') ?? '', apps: [], policies: [], fresh: new Map(), lastRevision: 0, abort: null };
/** Is any edge still highlighted as new (added in the last 10 s)? */
const fresh = () => [...state.fresh.values()].some((t) => t > Date.now() - 10_000);

async function api(path, init = {}) {
  const res = await fetch(path, { ...init, headers: { authorization: `Bearer ${state.token}`, ...(init.body ? { 'content-type': 'application/json' } : {}), ...init.headers } });
  const body = res.headers.get('content-type')?.includes('json') ? await res.json() : await res.text();
  if (res.status === 401) signOut(body.error ?? 'the token was refused');
  if (!res.ok) throw Object.assign(new Error(body.error ?? `HTTP ${res.status}`), { body, status: res.status });
  return body;
}

// ---- sign-in ----------------------------------------------------------------------------------------------------
$('sign-in-form').addEventListener('submit', (e) => {
  e.preventDefault();
  state.token = $('token').value.trim();
  void signIn();
});
$('sign-out').addEventListener('click', () => signOut(''));

async function signIn() {
  $('sign-in-error').textContent = '';
  try {
    const who = await api('/networking/v1/external/whoami');
    sessionStorage.setItem('netfold-token', state.token);
    $('who').textContent = `signed in as ${who.user_name}`;
    $('sign-in').hidden = true;
    $('console').hidden = false;
    $('sign-out').hidden = false;
    await Promise.all([loadGraph(), loadCells()]);
    followAudit();
    state.cellTimer = setInterval(() => void loadCells().catch(() => {}), 2000);
  } catch (err) {
    $('sign-in-error').textContent = err.message;
  }
}

function signOut(message) {
  sessionStorage.removeItem('netfold-token');
  state.token = '';
  state.abort?.abort();
  clearInterval(state.cellTimer);
  $('console').hidden = true;
  $('sign-in').hidden = false;
  $('sign-out').hidden = true;
  $('who').textContent = '';
  $('sign-in-error').textContent = message;
}

// ---- graph ------------------------------------------------------------------------------------------------------
async function loadGraph() {
  const [apps, list] = await Promise.all([api('/netfold/v1/apps'), api('/networking/v1/external/policies')]);
  state.apps = apps.apps;
  state.policies = list.policies;
  setRevision(Math.max(apps.revision, list.revision));
  const spaces = [...new Set(state.apps.map((a) => a.space))].sort();
  const select = $('filter-space');
  const chosen = select.value;
  select.replaceChildren(new Option('all', ''), ...spaces.map((s) => new Option(s, s)));
  select.value = spaces.includes(chosen) ? chosen : '';
  renderGraph();
}
$('filter-space').addEventListener('change', () => renderGraph());
$('filter-app').addEventListener('input', () => renderGraph());

function el(name, attrs = {}, text) {
  const e = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

function renderGraph() {
  const space = $('filter-space').value;
  const needle = $('filter-app').value.trim().toLowerCase();
  const byId = new Map(state.apps.map((a) => [a.id, a]));
  const matchApp = (id) => {
    const a = byId.get(id);
    return !needle || id.toLowerCase().includes(needle) || (a && a.name.toLowerCase().includes(needle));
  };
  const inSpace = (id) => !space || byId.get(id)?.space === space;
  const edges = state.policies.filter((p) => (inSpace(p.source.id) || inSpace(p.destination.id)) && (matchApp(p.source.id) || matchApp(p.destination.id)));
  const shown = new Set(edges.flatMap((p) => [p.source.id, p.destination.id]));
  for (const a of state.apps) if (inSpace(a.id) && matchApp(a.id)) shown.add(a.id);
  const apps = [...shown].map((id) => byId.get(id) ?? { id, name: id, space: '?', instances: 0, visible: false });
  // Layout: one box per space, side by side; its apps on a circle inside it (two or fewer: side by side).
  const spaces = [...new Set(apps.map((a) => a.space))].sort();
  const W = 150, H = 40, PAD = 16, TOP = 30;
  const pos = new Map();
  const boxes = [];
  let x = PAD, height = 0;
  for (const sp of spaces) {
    const members = apps.filter((a) => a.space === sp).sort((a, b) => (a.name < b.name ? -1 : 1));
    const n = members.length;
    const r = n <= 1 ? 0 : Math.max(W * 0.8, (n * (H + 34)) / (2 * Math.PI) + 40);
    const bw = 2 * r + W + 2 * PAD + (n > 1 ? 60 : 0), bh = 2 * r * (n <= 2 ? 0 : 0.75) + H + 2 * PAD + 14;
    const cx = x + bw / 2, cy = TOP + 14 + bh / 2 - 7;
    members.forEach((a, i) => {
      const angle = n <= 2 ? Math.PI * i : -Math.PI / 2 + (2 * Math.PI * i) / n;
      pos.set(a.id, { cx: cx + r * Math.cos(angle), cy: cy + r * (n <= 2 ? 0 : 0.75) * Math.sin(angle) });
    });
    boxes.push({ sp, x, w: bw, h: bh });
    x += bw + 40;
    height = Math.max(height, TOP + bh + 10);
  }
  const svg = $('graph');
  svg.replaceChildren();
  const width = Math.max(600, x);
  svg.setAttribute('viewBox', `0 0 ${width} ${Math.max(200, height + 10)}`);
  svg.style.height = `${Math.max(200, Math.min(700, height + 10))}px`;
  const defs = el('defs');
  for (const [id, colour] of [['arrow', '#1f8a4c'], ['arrow-fresh', '#2f6fdf']]) {
    const marker = el('marker', { id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
    marker.append(el('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: colour }));
    defs.append(marker);
  }
  svg.append(defs);
  for (const b of boxes) {
    svg.append(el('rect', { class: 'space-box', x: b.x, y: 8, width: b.w, height: b.h + TOP - 14, rx: 8 }));
    svg.append(el('text', { class: 'space-label', x: b.x + 10, y: 24 }, `space ${b.sp}`));
  }
  // Where the line from a node's centre towards (tx, ty) leaves its box.
  const exit = (p, tx, ty) => {
    const dx = tx - p.cx, dy = ty - p.cy;
    const k = 1 / Math.max(Math.abs(dx) / (W / 2 + 3), Math.abs(dy) / (H / 2 + 3), 1e-9);
    return [p.cx + dx * k, p.cy + dy * k];
  };
  const pairCount = new Map();
  const now = Date.now();
  for (const p of edges) {
    const a = pos.get(p.source.id), b = pos.get(p.destination.id);
    if (!a || !b) continue;
    const pair = `${p.source.id}>${p.destination.id}`;
    const n = pairCount.get(pair) ?? 0;
    pairCount.set(pair, n + 1);
    const ports = p.destination.ports.start === p.destination.ports.end ? p.destination.ports.start : `${p.destination.ports.start}-${p.destination.ports.end}`;
    const key = `${p.source.id}|${p.destination.id}|${p.destination.protocol}|${p.destination.ports.start}|${p.destination.ports.end}`;
    const fresh = (state.fresh.get(key) ?? 0) > now - 10_000;
    const g = el('g', { class: `edge${fresh ? ' fresh' : ''}`, 'data-edge': key });
    let d, lx, ly;
    if (a === b) {
      const x0 = a.cx + W / 2, y0 = a.cy - 8, y1 = a.cy + 8, bend = 40 + 16 * n;
      d = `M ${x0} ${y0} C ${x0 + bend} ${y0 - bend / 2}, ${x0 + bend} ${y1 + bend / 2}, ${x0 + 2} ${y1}`;
      lx = x0 + bend * 0.8; ly = a.cy + 4;
    } else {
      // A curve bowed to its left: the two directions between a pair never overlap; more policies bow further.
      const mx = (a.cx + b.cx) / 2, my = (a.cy + b.cy) / 2, len = Math.hypot(b.cx - a.cx, b.cy - a.cy);
      const bow = 18 + 16 * n, qx = mx + (-(b.cy - a.cy) / len) * bow * 2, qy = my + ((b.cx - a.cx) / len) * bow * 2;
      const [x0, y0] = exit(a, qx, qy), [x1, y1] = exit(b, qx, qy);
      d = `M ${x0} ${y0} Q ${qx} ${qy} ${x1} ${y1}`;
      lx = (x0 + 2 * qx + x1) / 4 + 4; ly = (y0 + 2 * qy + y1) / 4;
    }
    g.append(el('path', { d, 'marker-end': `url(#${fresh ? 'arrow-fresh' : 'arrow'})` }), el('text', { x: lx, y: ly }, `${p.destination.protocol}/${ports}`));
    g.append(el('title', {}, `${byId.get(p.source.id)?.name ?? p.source.id} -> ${byId.get(p.destination.id)?.name ?? p.destination.id} ${p.destination.protocol}/${ports}`));
    svg.append(g);
  }
  for (const a of apps) {
    const p = pos.get(a.id);
    const g = el('g', { class: `app${a.visible ? '' : ' foreign'}`, 'data-app': a.id, transform: `translate(${p.cx - W / 2},${p.cy - H / 2})` });
    g.append(el('rect', { width: W, height: H, rx: 6 }));
    g.append(el('text', { x: 10, y: 17 }, a.name));
    g.append(el('text', { class: 'sub', x: 10, y: 31 }, `${a.id} · ${a.instances} running`));
    svg.append(g);
  }
  clearTimeout(state.unfresh);
  if (fresh()) state.unfresh = setTimeout(() => renderGraph(), 10_500); // drawn again once the highlight is over
  $('graph-count').textContent = `${apps.length} apps, ${edges.length} policies`;
}

// ---- cells ------------------------------------------------------------------------------------------------------
async function loadCells() {
  const r = await api('/netfold/v1/cells');
  setRevision(r.revision);
  $('cells').tBodies[0].replaceChildren(
    ...r.cells.map((c) => {
      const tr = document.createElement('tr');
      tr.dataset.cell = c.cellId;
      const lagClass = c.lag === null ? 'lag-none' : c.lag === 0 ? 'lag-0' : 'lag-n';
      const cells = [c.cellId, c.subnet ?? '-', c.planned ?? '-', c.applied ?? '-', c.lag === null ? 'no agent' : c.lag === 0 ? 'in sync' : `${c.lag} behind`, c.allows ?? '-', c.appliedAt ? c.appliedAt.slice(11, 19) : '-'];
      cells.forEach((v, i) => {
        const td = document.createElement('td');
        td.textContent = String(v);
        if (i === 4) td.className = lagClass;
        tr.append(td);
      });
      return tr;
    }),
  );
}

function setRevision(r) {
  state.lastRevision = Math.max(state.lastRevision, r);
  $('revision').textContent = `revision ${state.lastRevision}`;
}

// ---- live audit (server-sent events over fetch, so the token stays in a header) ---------------------------------
function followAudit(from) {
  const abort = new AbortController();
  state.abort = abort;
  let refresh;
  void (async () => {
    try {
      const res = await fetch(`/netfold/v1/audit/stream${from ? `?from=${from}` : ''}`, { headers: { authorization: `Bearer ${state.token}`, accept: 'text/event-stream' }, signal: abort.signal });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const event = /^event: (.*)$/m.exec(block)?.[1];
          const data = /^data: (.*)$/m.exec(block)?.[1];
          if (event === 'ready') document.body.dataset.auditReady = 'true';
          if (event !== 'audit' || !data) continue;
          const a = JSON.parse(data);
          addAudit(a);
          if (a.type === 'PoliciesCreated' && document.body.dataset.auditReady) for (const key of policyKeys(a)) state.fresh.set(key, Date.now());
          clearTimeout(refresh);
          refresh = setTimeout(() => void Promise.all([loadGraph(), loadCells()]).catch(() => {}), 150);
        }
      }
    } catch (err) {
      if (abort.signal.aborted) return;
    }
    if (!abort.signal.aborted && state.token) setTimeout(() => followAudit(state.lastAudit ? state.lastAudit + 1 : undefined), 2000);
  })();
}

/** The policies an audit line names (`allowed: a -> b tcp/8080, …`), as graph edge keys, to highlight them. */
function policyKeys(a) {
  return [...a.effect.matchAll(/([\w-]+) -> ([\w-]+) (tcp|udp)\/(\d+)(?:-(\d+))?/g)].map((m) => `${m[1]}|${m[2]}|${m[3]}|${m[4]}|${m[5] ?? m[4]}`);
}

function addAudit(a) {
  state.lastAudit = Math.max(state.lastAudit ?? 0, a.revision);
  const li = document.createElement('li');
  li.value = a.revision;
  li.dataset.revision = a.revision;
  li.dataset.type = a.type;
  li.className = document.body.dataset.auditReady ? 'fresh' : '';
  const type = document.createElement('span');
  type.className = 'type';
  type.textContent = a.type;
  li.append(`${a.at.slice(11, 19)} `, type, ` ${a.effect} `);
  const by = document.createElement('span');
  by.className = 'muted';
  by.textContent = `(${a.actor})`;
  li.append(by);
  $('audit').prepend(li);
  while ($('audit').children.length > 200) $('audit').lastChild.remove();
  setRevision(a.revision);
}

// ---- explain ----------------------------------------------------------------------------------------------------
$('explain-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const q = new URLSearchParams({ source: $('explain-source').value.trim(), destination: $('explain-destination').value.trim(), port: $('explain-port').value, protocol: $('explain-protocol').value });
  const out = $('explain-result');
  try {
    const r = await api(`/netfold/v1/explain?${q}`);
    out.replaceChildren();
    const verdict = document.createElement('p');
    verdict.innerHTML = `<span class="verdict ${r.allowed ? 'allowed' : 'denied'}"></span> <span class="reason"></span>`;
    verdict.querySelector('.verdict').textContent = r.allowed ? 'ALLOWED' : 'DENIED';
    verdict.querySelector('.reason').textContent = `${r.source} -> ${r.destination} ${r.protocol}/${r.port}: ${r.reason} (revision ${r.revision})`;
    out.append(verdict);
    const list = document.createElement('ul');
    for (const p of r.policies) addItem(list, `by policy ${p.sourceAppId} -> ${p.destAppId} ${p.protocol}/${p.startPort}-${p.endPort}, created ${p.createdAt} by ${p.createdBy} (revision ${p.createdSeq})`);
    for (const p of r.nearMisses) addItem(list, `not covered by ${p.protocol}/${p.startPort}-${p.endPort} (created by ${p.createdBy})`);
    for (const c of r.enforcement) addItem(list, `cell ${c.cellId}: planned ${c.planned ?? '-'}, applied ${c.applied ?? '-'}${c.applied !== null && c.planned !== null && c.applied >= c.planned ? ' (in force)' : ''}`);
    out.append(list);
  } catch (err) {
    out.textContent = `${err.message}`;
  }
});

function addItem(list, text) {
  const li = document.createElement('li');
  li.textContent = text;
  list.append(li);
}

// ---- dry run of a pasted policy file ------------------------------------------------------------------------------
$('dry-run-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const out = $('dry-run-result');
  out.textContent = '…';
  try {
    const r = await api(`/netfold/v1/apply?dry_run=true${$('dry-run-prune').checked ? '&prune=true' : ''}`, { method: 'POST', body: JSON.stringify({ document: $('dry-run-file').value }) });
    const name = (a) => (a.id === a.name ? a.id : `${a.name} (${a.id})`);
    const ports = (p) => (p.start === p.end ? p.start : `${p.start}-${p.end}`);
    const lines = [`dry run at revision ${r.revision}: ${r.created} to create, ${r.deleted} to delete, ${r.unchanged} unchanged; nothing was appended`];
    for (const c of r.changes) lines.push(`  ${c.op === 'create' ? '+' : '-'} ${name(c.source)} -> ${name(c.destination)} ${c.destination.protocol}/${ports(c.destination.ports)}${c.line ? `   line ${c.line}` : ''}`);
    for (const [cell, f] of Object.entries(r.cells ?? {})) lines.push(`cell ${cell}:`, ...f.added.map((x) => `  + ${x}`), ...f.removed.map((x) => `  - ${x}`));
    if (Object.keys(r.cells ?? {}).length === 0) lines.push('no cell would change');
    out.textContent = lines.join('\n');
  } catch (err) {
    out.textContent = err.body?.issues ? err.body.issues.map((i) => `${i.line ? `line ${i.line}: ` : ''}${i.path ? `${i.path}: ` : ''}${i.message}`).join('\n') : err.message;
  }
});

if (state.token) {
  $('token').value = state.token;
  void signIn();
}
